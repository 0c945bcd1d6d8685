using WeakTeacher.CudaKernels.Cuda;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// Per-token log-probabilities of labels from logits, and their per-sequence sums, without a [N, V] softmax or
/// log-softmax tensor: the forward keeps only the per-row logsumexp, and the backward writes
/// dlogits = g * (onehot(label) - exp(x - lse)) in one pass.
/// </summary>
public static class TokenLogProbs
{
    /// <param name="logits">[N, V] float32 or bfloat16 (float16/float64 are accepted on the reference path).</param>
    /// <param name="labels">[N] int64 label per row; <paramref name="ignoreIndex"/> marks rows that are not response tokens.</param>
    /// <param name="seqIndex">[N] int64 sequence of each row, in [0, numSequences).</param>
    /// <param name="numSequences">Number of sequences (length of the second output).</param>
    /// <param name="ignoreIndex">Label value of ignored rows: log-prob 0, no gradient.</param>
    /// <returns>TokenLogps [N] float32 and SequenceLogps [numSequences] float32 (sum over each sequence's rows), both
    /// differentiable with respect to <paramref name="logits"/>.</returns>
    public static (Tensor TokenLogps, Tensor SequenceLogps) Compute(Tensor logits, Tensor labels, Tensor seqIndex, int numSequences, long ignoreIndex = -100)
    {
        const string op = "TokenLogProbs.Compute";
        InputChecks.Logits(op, logits);
        InputChecks.Indices(op, labels, seqIndex, logits.shape[0], numSequences, logits);
        InputChecks.IndexRanges(op, labels, seqIndex, logits.shape[1], numSequences, ignoreIndex);
        bool cuda = KernelSettings.UseCuda(logits, op, floatKernel: true, nameof(logits));
        var outputs = TokenLogProbsFunction.apply(cuda ? logits.contiguous() : logits, labels.contiguous(), seqIndex.contiguous(),
            numSequences, ignoreIndex, cuda);
        return (outputs[0], outputs[1]);
    }
}

/// <summary>Autograd function of <see cref="TokenLogProbs"/>: outputs (token log-probs [N], sequence sums [S]);
/// the CUDA kernels or the row-blocked reference, chosen at the call.</summary>
internal sealed class TokenLogProbsFunction : TorchSharp.torch.autograd.MultiTensorFunction<TokenLogProbsFunction>
{
    public override string Name => "WeakTeacher.TokenLogProbs";

    public override List<Tensor> forward(TorchSharp.torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var logits = (Tensor)vars[0];
        var labels = (Tensor)vars[1];
        var seqIndex = (Tensor)vars[2];
        int numSequences = (int)vars[3];
        long ignoreIndex = (long)vars[4];
        bool cuda = (bool)vars[5];
        long n = logits.shape[0], vocab = logits.shape[1];

        var token = empty(n, ScalarType.Float32, logits.device);
        var lse = empty(n, ScalarType.Float32, logits.device);
        if (cuda)
        {
            CudaOps.LogProbForward(logits, labels, ignoreIndex, token, lse);
        }
        else
        {
            long block = ReferenceLogProbs.BlockRows(n, vocab);
            for (long start = 0; start < n; start += block)
            {
                using var scope = NewDisposeScope();
                long rows = Math.Min(block, n - start);
                ReferenceLogProbs.ForwardBlock(logits.narrow(0, start, rows).to(ScalarType.Float32), labels.narrow(0, start, rows),
                    ignoreIndex, token.narrow(0, start, rows), lse.narrow(0, start, rows));
            }
        }
        var sequence = ReferenceLogProbs.SequenceSums(token, seqIndex, numSequences);
        ctx.save_for_backward([logits, labels, seqIndex, lse]);
        ctx.save_data("ignoreIndex", ignoreIndex);
        ctx.save_data("cuda", cuda);
        ctx.save_data("numSequences", numSequences);
        ctx.set_materialize_grads(false);   // see AutogradGrads
        return [token, sequence];
    }

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, List<Tensor> grads) =>
        AutogradGrads.Backward(ctx, grads, saved => Backward(ctx, saved, grads));

    private static List<Tensor> Backward(TorchSharp.torch.autograd.AutogradContext ctx, List<Tensor> saved, List<Tensor> grads)
    {
        Tensor logits = saved[0], labels = saved[1], seqIndex = saved[2], lse = saved[3];
        long ignoreIndex = (long)ctx.get_data("ignoreIndex");
        bool cuda = (bool)ctx.get_data("cuda");
        int numSequences = (int)ctx.get_data("numSequences");
        long n = logits.shape[0], vocab = logits.shape[1];

        var dlogits = empty_like(logits);
        using (var scope = NewDisposeScope())
        {
            var gradTokenIn = AutogradGrads.OrZeros(grads[0], n, logits.device);
            var gradSequenceIn = AutogradGrads.OrZeros(grads[1], numSequences, logits.device);
            if (cuda)
            {
                var gradToken = gradTokenIn.to(ScalarType.Float32).contiguous();
                var gradSequence = gradSequenceIn.to(ScalarType.Float32).contiguous();
                CudaOps.LogProbBackward(logits, labels, seqIndex, lse, gradToken, gradSequence, ignoreIndex, dlogits);
            }
            else
            {
                var g = ReferenceLogProbs.RowGrad(gradTokenIn, gradSequenceIn, labels, seqIndex, ignoreIndex);
                long block = ReferenceLogProbs.BlockRows(n, vocab);
                for (long start = 0; start < n; start += block)
                {
                    using var inner = NewDisposeScope();
                    long rows = Math.Min(block, n - start);
                    var d = ReferenceLogProbs.BackwardBlock(logits.narrow(0, start, rows).to(ScalarType.Float32, copy: true),
                        labels.narrow(0, start, rows), ignoreIndex, lse.narrow(0, start, rows), g.narrow(0, start, rows));
                    dlogits.narrow(0, start, rows).copy_(d);
                }
            }
        }
        return [dlogits, null!, null!, null!, null!, null!];
    }
}
