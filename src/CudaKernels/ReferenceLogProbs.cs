using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// Reference (device-agnostic TorchSharp) maths of the per-token log-prob, shared by <see cref="TokenLogProbs"/> and
/// <see cref="FusedHeadLogProbs"/>. Works on row blocks so that at most one float32 [rows, V] block is alive at a time.
/// </summary>
internal static class ReferenceLogProbs
{
    /// <summary>Elements of one float32 block: 2^24 (64 MiB). Tests lower it to exercise the block boundaries; the
    /// results do not depend on it.</summary>
    internal static long BlockElements { get; set; } = 1L << 24;

    /// <summary>Rows per block so that a float32 [rows, V] block holds about <see cref="BlockElements"/> elements.</summary>
    internal static long BlockRows(long n, long vocab) => Math.Clamp(BlockElements / Math.Max(vocab, 1), 1, Math.Max(n, 1));

    /// <summary>Forward of one block: float32 logits [rows, V] -> per-token log-prob and logsumexp written into the
    /// given [rows] slices.</summary>
    internal static void ForwardBlock(Tensor x32, Tensor labels, long ignoreIndex, Tensor tokenOut, Tensor lseOut)
    {
        var ignored = labels.Eq(ignoreIndex);
        var safe = labels.MaskedFill(ignored, 0L);
        var lse = x32.logsumexp(1, keepdim: false);
        var picked = x32.gather(1, safe.unsqueeze(1)).squeeze(1);
        tokenOut.copy_((picked - lse).MaskedFill(ignored, 0.0));
        lseOut.copy_(lse.MaskedFill(ignored, 0.0));
    }

    /// <summary>Backward of one block, in place on x32: dlogits = g * (onehot(label) - exp(x - lse)), where g is
    /// already zero on ignored rows (so those rows come out zero). x32 may be a [rows, slice] tile of the vocabulary
    /// starting at entry <paramref name="columnOffset"/>; lse is over the full rows.</summary>
    internal static Tensor BackwardBlock(Tensor x32, Tensor labels, long ignoreIndex, Tensor lse, Tensor rowGrad, long columnOffset = 0)
    {
        long width = x32.shape[1];
        var local = labels.Sub(columnOffset);
        var inSlice = labels.Ne(ignoreIndex) & local.Ge(0) & local.Lt(width);
        var d = x32.sub_(lse.unsqueeze(1)).exp_().mul_(rowGrad.neg().unsqueeze(1));
        return d.scatter_add_(1, local.MaskedFill(inSlice.logical_not(), 0L).unsqueeze(1),
            rowGrad.MaskedFill(inSlice.logical_not(), 0.0).unsqueeze(1));
    }

    /// <summary>Per-row upstream gradient: g_tok + g_seq[seqIndex], zero on ignored rows.</summary>
    internal static Tensor RowGrad(Tensor gradToken, Tensor gradSequence, Tensor labels, Tensor seqIndex, long ignoreIndex)
    {
        var ignored = labels.Eq(ignoreIndex);
        var safeSeq = seqIndex.MaskedFill(ignored, 0L);
        var fromSequence = gradSequence.numel() == 0
            ? zeros_like(gradToken, ScalarType.Float32)
            : gradSequence.to(ScalarType.Float32).index_select(0, safeSeq);
        return gradToken.to(ScalarType.Float32).Add(fromSequence).MaskedFill(ignored, 0.0);
    }

    internal static Tensor SequenceSums(Tensor tokenLogps, Tensor seqIndex, int numSequences) =>
        CudaKernels.SequenceSums.Forward(tokenLogps, seqIndex, numSequences);
}
