using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>Random inputs and the plain float64 formulas the kernels must agree with.</summary>
internal static class TestData
{
    /// <summary>Rows for <paramref name="numSequences"/> sequences: labels with some masked rows, sequence
    /// <paramref name="allMaskedSequence"/> (if >= 0) masked entirely, and every third row of the rest masked.</summary>
    internal static (Tensor Labels, Tensor SeqIndex) Rows(Generator gen, long n, long vocab, int numSequences, long ignoreIndex,
        int allMaskedSequence = -1, Device? device = null)
    {
        var labels = randint(0, vocab, [n], dtype: ScalarType.Int64, generator: gen);
        var seqIndex = (arange(n, ScalarType.Int64) * numSequences).div(Math.Max(n, 1), rounding_mode: RoundingMode.floor).clamp_max(numSequences - 1);
        var masked = (arange(n, ScalarType.Int64) % 3).eq(0);
        if (allMaskedSequence >= 0) masked = masked | seqIndex.eq(allMaskedSequence);
        labels = labels.masked_fill(masked, ignoreIndex);
        return (labels.to(device ?? CPU), seqIndex.to(device ?? CPU));
    }

    internal static Tensor Logits(Generator gen, long n, long vocab, double scale = 3.0) =>
        randn([n, vocab], ScalarType.Float64, generator: gen) * scale;

    /// <summary>The plain formula in float64: log_softmax + gather (0 on ignored rows) and a scatter-add per sequence.
    /// Differentiable, so its autograd gives the reference gradient.</summary>
    internal static (Tensor Token, Tensor Sequence) PlainLogProbs(Tensor logits64, Tensor labels, Tensor seqIndex, int numSequences, long ignoreIndex)
    {
        var ignored = labels.eq(ignoreIndex);
        var safe = labels.masked_fill(ignored, 0);
        var token = logits64.log_softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1).masked_fill(ignored, 0.0);
        var sequence = zeros(numSequences, ScalarType.Float64, logits64.device).index_add(0, seqIndex, token, 1);
        return (token, sequence);
    }

    /// <summary>Asserts |actual - expected| <= atol + rtol |expected| elementwise, naming the worst element.</summary>
    internal static void Close(Tensor expected, Tensor actual, double atol, double rtol, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        var e = expected.detach().cpu().to(ScalarType.Float64).flatten();
        var a = actual.detach().cpu().to(ScalarType.Float64).flatten();
        Assert.False(a.isnan().any().item<bool>(), $"{what}: NaN in the result");
        var excess = (a - e).abs() - (e.abs() * rtol + atol);
        if (e.numel() == 0) return;
        long worst = excess.argmax().item<long>();
        double over = excess[worst].item<double>();
        Assert.True(over <= 0, $"{what}: element {worst} is {a[worst].item<double>():R}, expected {e[worst].item<double>():R} (atol {atol}, rtol {rtol})");
    }
}
