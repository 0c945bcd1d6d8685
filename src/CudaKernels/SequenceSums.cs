using WeakTeacher.CudaKernels.Cuda;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// Per-sequence sums of per-row values, deterministic on every device: the same inputs give the same bits on every
/// run, which bit-exact resume needs. index_add on CUDA adds with atomics (the order, and so the rounding, changes
/// from run to run); here CUDA tensors go through the segmented-reduction kernel (<c>sequence_sums_f32</c>), or where
/// the kernels are not in use through a one-hot matrix product; CPU tensors through index_add (sequential there).
/// Differentiable: the gradient of row r is the gradient of its sequence (a gather).
/// </summary>
public static class SequenceSums
{
    /// <param name="values">[N] float32 per-row values.</param>
    /// <param name="seqIndex">[N] int64 sequence of each row, in [0, numSequences) (not checked here: the callers'
    /// indices come from their own masks or were checked with the labels).</param>
    /// <param name="numSequences">S, the length of the result.</param>
    /// <returns>[S] float32.</returns>
    public static Tensor Compute(Tensor values, Tensor seqIndex, int numSequences)
    {
        ArgumentNullException.ThrowIfNull(values);
        ArgumentNullException.ThrowIfNull(seqIndex);
        if (values.dim() != 1 || seqIndex.dim() != 1 || values.shape[0] != seqIndex.shape[0])
            throw new ArgumentException($"SequenceSums.Compute: values [{string.Join(", ", values.shape)}] and seqIndex [{string.Join(", ", seqIndex.shape)}] must be 1-D of one length.");
        if (values.dtype != ScalarType.Float32)
            throw new ArgumentException($"SequenceSums.Compute: values must be float32, got {values.dtype}.", nameof(values));
        if (seqIndex.dtype != ScalarType.Int64)
            throw new ArgumentException($"SequenceSums.Compute: seqIndex must be int64, got {seqIndex.dtype}.", nameof(seqIndex));
        return SequenceSumsFunction.apply(values.contiguous(), seqIndex.contiguous(), numSequences);
    }

    /// <summary>The sums without autograd (callers inside the kernels' own autograd functions).</summary>
    internal static Tensor Forward(Tensor values, Tensor seqIndex, int numSequences)
    {
        var sums = empty(numSequences, ScalarType.Float32, values.device);
        if (values.device_type != TorchSharp.DeviceType.CUDA)
            return sums.zero_().IndexAddInPlace(0, seqIndex, values);
        if (KernelSettings.UseCuda(values, "SequenceSums.Compute"))
        {
            CudaOps.SequenceSums(values, seqIndex, sums);
            return sums;
        }
        sums.Dispose();
        using var scope = NewDisposeScope();
        var oneHot = nn.functional.one_hot(seqIndex, numSequences).to(ScalarType.Float32);   // [N, S]
        return oneHot.t().mv(values).MoveToOuterDisposeScope();
    }
}

internal sealed class SequenceSumsFunction : TorchSharp.torch.autograd.SingleTensorFunction<SequenceSumsFunction>
{
    public override string Name => "WeakTeacher.SequenceSums";

    public override Tensor forward(TorchSharp.torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var values = (Tensor)vars[0];
        var seqIndex = (Tensor)vars[1];
        ctx.save_for_backward([seqIndex]);
        ctx.save_data("rows", values.shape[0]);
        ctx.set_materialize_grads(false);   // see AutogradGrads
        return SequenceSums.Forward(values, seqIndex, (int)vars[2]);
    }

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, Tensor grad) =>
        AutogradGrads.Backward(ctx, [grad], saved =>
        {
            var seqIndex = saved[0];
            long rows = (long)ctx.get_data("rows");
            var g = grad is null || grad.IsInvalid ? zeros(rows, ScalarType.Float32, seqIndex.device) : grad.index_select(0, seqIndex);
            return [g, null!, null!];
        });
}
