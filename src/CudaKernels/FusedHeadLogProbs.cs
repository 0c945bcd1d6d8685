using WeakTeacher.CudaKernels.Cuda;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// The output head and the per-token log-prob in one (the Cut Cross-Entropy idea): from hidden states [N, H] and the
/// output embedding [V, H], the log-probs of the labels without ever holding more than one [chunkRows, V] block of
/// logits. The forward goes over row blocks [chunkRows, V] (each row's logsumexp needs the whole row) and keeps only
/// the per-row logsumexp. The backward walks tiles of [8 * chunkRows, about V/8] — outer loop over vocabulary slices,
/// inner over row blocks — recomputes each tile's logits, turns them into dlogits in place (the kernel needs only the
/// saved full-row logsumexp), and accumulates dH += dlogits @ W[slice] and dW[slice] += dlogits^T @ h. So the float32
/// accumulators are dH [N, H] and one slice of dW, never all of dW, when the inputs are bfloat16.
/// </summary>
public static class FusedHeadLogProbs
{
    /// <summary>Elements of one logits block when <c>chunkRows</c> is 0 (auto): 2^25 (128 MiB in float32).</summary>
    public const long AutoBlockElements = 1L << 25;

    /// <summary>Rows per block for the auto setting: about <see cref="AutoBlockElements"/> / V, a multiple of 64 when
    /// that is at least 64, never more than N.</summary>
    public static int AutoChunkRows(long n, long vocab)
    {
        long rows = AutoBlockElements / Math.Max(vocab, 1);
        if (rows >= 64) rows = rows / 64 * 64;
        return (int)Math.Clamp(rows, 1, Math.Max(n, 1));
    }

    /// <param name="hidden">[N, H] float32 or bfloat16 final hidden states (one row per predicted token).</param>
    /// <param name="weight">[V, H] output embedding, same dtype and device as <paramref name="hidden"/>.</param>
    /// <param name="labels">[N] int64; <paramref name="ignoreIndex"/> marks rows without a label.</param>
    /// <param name="seqIndex">[N] int64 sequence of each row, in [0, numSequences).</param>
    /// <param name="numSequences">Number of sequences.</param>
    /// <param name="ignoreIndex">Label of ignored rows: log-prob 0, no gradient.</param>
    /// <param name="chunkRows">Rows per logits block; 0 picks <see cref="AutoChunkRows"/>.</param>
    /// <returns>TokenLogps [N] and SequenceLogps [numSequences], float32, differentiable w.r.t. hidden and weight.</returns>
    public static (Tensor TokenLogps, Tensor SequenceLogps) Compute(Tensor hidden, Tensor weight, Tensor labels, Tensor seqIndex,
        int numSequences, long ignoreIndex = -100, int chunkRows = 0)
    {
        const string op = "FusedHeadLogProbs.Compute";
        InputChecks.Logits(op, hidden, nameof(hidden));
        InputChecks.Logits(op, weight, nameof(weight));
        if (weight.shape[1] != hidden.shape[1])
            throw new ArgumentException($"{op}: weight is [{weight.shape[0]}, {weight.shape[1]}] but hidden has {hidden.shape[1]} features; weight must be [V, H].", nameof(weight));
        if (weight.dtype != hidden.dtype)
            throw new ArgumentException($"{op}: weight ({weight.dtype}) and hidden ({hidden.dtype}) must have the same dtype.", nameof(weight));
        if (!InputChecks.SameDevice(weight, hidden))
            throw new ArgumentException($"{op}: weight ({weight.device}) and hidden ({hidden.device}) must be on the same device.", nameof(weight));
        if (chunkRows < 0)
            throw new ArgumentOutOfRangeException(nameof(chunkRows), chunkRows, $"{op}: chunkRows must be >= 0 (0 = auto).");
        InputChecks.Indices(op, labels, seqIndex, hidden.shape[0], numSequences, hidden);
        InputChecks.IndexRanges(op, labels, seqIndex, weight.shape[0], numSequences, ignoreIndex);
        bool cuda = KernelSettings.UseCuda(hidden, op, floatKernel: true, nameof(hidden));
        int rows = chunkRows > 0 ? (int)Math.Min(chunkRows, Math.Max(hidden.shape[0], 1)) : AutoChunkRows(hidden.shape[0], weight.shape[0]);
        var outputs = FusedHeadLogProbsFunction.apply(hidden.contiguous(), weight.contiguous(), labels.contiguous(), seqIndex.contiguous(),
            numSequences, ignoreIndex, rows, cuda, hidden.requires_grad, weight.requires_grad);
        return (outputs[0], outputs[1]);
    }
}

/// <summary>Autograd function of <see cref="FusedHeadLogProbs"/>: one [rows, V] logits block alive at a time in both
/// directions; the per-block log-prob maths is the CUDA kernel or the reference, chosen at the call.</summary>
internal sealed class FusedHeadLogProbsFunction : TorchSharp.torch.autograd.MultiTensorFunction<FusedHeadLogProbsFunction>
{
    public override string Name => "WeakTeacher.FusedHeadLogProbs";

    public override List<Tensor> forward(TorchSharp.torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var hidden = (Tensor)vars[0];
        var weight = (Tensor)vars[1];
        var labels = (Tensor)vars[2];
        var seqIndex = (Tensor)vars[3];
        int numSequences = (int)vars[4];
        long ignoreIndex = (long)vars[5];
        int chunkRows = (int)vars[6];
        bool cuda = (bool)vars[7];
        long n = hidden.shape[0];

        var token = empty(n, ScalarType.Float32, hidden.device);
        var lse = empty(n, ScalarType.Float32, hidden.device);
        var sequence = zeros(numSequences, ScalarType.Float32, hidden.device);
        var weightT = weight.t();
        for (long start = 0; start < n; start += chunkRows)
        {
            using var scope = NewDisposeScope();
            long rows = Math.Min(chunkRows, n - start);
            var logits = hidden.narrow(0, start, rows).mm(weightT);
            var labelsBlock = labels.narrow(0, start, rows);
            if (cuda)
                CudaOps.LogProbForward(logits, labelsBlock, seqIndex.narrow(0, start, rows), ignoreIndex,
                    token.narrow(0, start, rows), lse.narrow(0, start, rows), sequence);
            else
                ReferenceLogProbs.ForwardBlock(logits.to(ScalarType.Float32), labelsBlock, ignoreIndex,
                    token.narrow(0, start, rows), lse.narrow(0, start, rows));
        }
        if (!cuda) sequence.IndexAddInPlace(0, seqIndex, token);
        ctx.save_for_backward([hidden, weight, labels, seqIndex, lse]);
        ctx.save_data("ignoreIndex", ignoreIndex);
        ctx.save_data("chunkRows", chunkRows);
        ctx.save_data("cuda", cuda);
        ctx.save_data("needHidden", (bool)vars[8]);
        ctx.save_data("needWeight", (bool)vars[9]);
        ctx.save_data("numSequences", numSequences);
        ctx.set_materialize_grads(false);   // see AutogradGrads
        return [token, sequence];
    }

    /// <summary>Vocabulary slices of the backward: about V/8 columns, a multiple of 64.</summary>
    internal static long SliceColumns(long vocab) => Math.Min(vocab, Math.Max(64, ((vocab + 7) / 8 + 63) / 64 * 64));

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, List<Tensor> grads)
    {
        var saved = ctx.get_saved_variables();
        Tensor hidden = saved[0], weight = saved[1], labels = saved[2], seqIndex = saved[3], lse = saved[4];
        long ignoreIndex = (long)ctx.get_data("ignoreIndex");
        int chunkRows = (int)ctx.get_data("chunkRows");
        bool cuda = (bool)ctx.get_data("cuda");
        bool needHidden = (bool)ctx.get_data("needHidden");
        bool needWeight = (bool)ctx.get_data("needWeight");
        long n = hidden.shape[0], vocab = weight.shape[0];
        // float32/float64 inputs accumulate in place; bfloat16/float16 in float32 buffers
        bool full = hidden.dtype is ScalarType.Float32 or ScalarType.Float64;

        Tensor? dHidden = null, dWeight = null;
        if (!needHidden && !needWeight) return [null!, null!, null!, null!, null!, null!, null!, null!, null!, null!];
        // dH accumulates over vocabulary slices: float32 [N, H] (the output itself for float32 inputs)
        Tensor? dHidden32 = needHidden ? zeros(hidden.shape, full ? hidden.dtype : ScalarType.Float32, hidden.device) : null;
        if (needWeight) dWeight = full ? zeros_like(weight) : empty_like(weight);
        using (var scope = NewDisposeScope())
        {
            var gradTokenIn = AutogradGrads.OrZeros(grads[0], n, hidden.device);
            var gradSequenceIn = AutogradGrads.OrZeros(grads[1], (int)ctx.get_data("numSequences"), hidden.device);
            Tensor? gradToken = null, gradSequence = null, rowGrad = null;
            if (cuda)
            {
                gradToken = gradTokenIn.to(ScalarType.Float32).contiguous();
                gradSequence = gradSequenceIn.to(ScalarType.Float32).contiguous();
            }
            else
            {
                rowGrad = ReferenceLogProbs.RowGrad(gradTokenIn, gradSequenceIn, labels, seqIndex, ignoreIndex);
            }
            long sliceColumns = SliceColumns(vocab);
            long tileRows = Math.Min(Math.Max(n, 1), (long)chunkRows * 8);
            for (long col = 0; col < vocab; col += sliceColumns)
            {
                using var sliceScope = NewDisposeScope();
                long cols = Math.Min(sliceColumns, vocab - col);
                var weightSlice = weight.narrow(0, col, cols);
                var weightSliceT = weightSlice.t();
                // dW of this slice: the output's rows themselves for float32, a float32 accumulator otherwise
                Tensor? dWeightSlice = dWeight is null ? null : full ? dWeight.narrow(0, col, cols) : zeros([cols, weight.shape[1]], ScalarType.Float32, weight.device);
                for (long start = 0; start < n; start += tileRows)
                {
                    using var tileScope = NewDisposeScope();
                    long rows = Math.Min(tileRows, n - start);
                    var hiddenBlock = hidden.narrow(0, start, rows);
                    var logits = hiddenBlock.mm(weightSliceT);
                    var labelsBlock = labels.narrow(0, start, rows);
                    Tensor dlogits;
                    if (cuda)
                    {
                        // in place: the recomputed logits tile becomes dlogits
                        CudaOps.LogProbBackward(logits, labelsBlock, seqIndex.narrow(0, start, rows), lse.narrow(0, start, rows),
                            gradToken!.narrow(0, start, rows), gradSequence!, ignoreIndex, logits, col);
                        dlogits = logits;
                    }
                    else
                    {
                        dlogits = ReferenceLogProbs.BackwardBlock(logits.to(ScalarType.Float32), labelsBlock, ignoreIndex,
                            lse.narrow(0, start, rows), rowGrad!.narrow(0, start, rows), col).to(hidden.dtype);
                    }
                    if (dHidden32 is not null)
                    {
                        var target = dHidden32.narrow(0, start, rows);
                        if (full) target.addmm_(dlogits, weightSlice);
                        else target.AddInPlace(dlogits.mm(weightSlice));
                    }
                    if (dWeightSlice is not null)
                    {
                        if (full) dWeightSlice.addmm_(dlogits.t(), hiddenBlock);
                        else dWeightSlice.AddInPlace(dlogits.t().mm(hiddenBlock));
                    }
                }
                if (dWeightSlice is not null && !full) dWeight!.narrow(0, col, cols).copy_(dWeightSlice);
            }
        }
        if (dHidden32 is not null) dHidden = full ? dHidden32 : dHidden32.to(hidden.dtype);
        return [dHidden!, dWeight!, null!, null!, null!, null!, null!, null!, null!, null!];
    }
}
