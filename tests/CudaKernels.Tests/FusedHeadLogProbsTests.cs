using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>The reference path of <see cref="FusedHeadLogProbs"/> against the plain matmul + log_softmax formula.</summary>
public sealed class FusedHeadLogProbsTests
{
    [Theory]
    [InlineData(29, 16, 509, 4, 0, false)]     // auto: one block
    [InlineData(29, 16, 509, 4, 6, false)]     // 5 forward blocks, the last partial; one backward tile of all 29 rows x 509
    [InlineData(100, 16, 509, 7, 1, false)]    // backward tiles of 63 rows x 64 columns: 2 row tiles (the last partial) x 8 slices
    [InlineData(10, 8, 50272, 3, 4, false)]
    [InlineData(29, 16, 509, 4, 0, true)]      // the CPU's kept logits: one block
    [InlineData(29, 16, 509, 4, 6, true)]      // kept, 5 blocks in both directions, the last partial
    [InlineData(10, 8, 50272, 3, 4, true)]
    public void ValuesAndGradientsMatchThePlainFormula(int n, int hiddenSize, int vocab, int s, int chunkRows, bool keepLogits)
    {
        long budget = FusedHeadLogProbs.KeptLogitsElements;
        FusedHeadLogProbs.KeptLogitsElements = keepLogits ? (long)n * vocab : 0;
        try
        {
            Assert.Equal(keepLogits, FusedHeadLogProbs.KeepsLogits(n, vocab, ScalarType.Float32, DeviceType.CPU, needWeight: true));
            CheckAgainstThePlainFormula(n, hiddenSize, vocab, s, chunkRows);
        }
        finally
        {
            FusedHeadLogProbs.KeptLogitsElements = budget;
        }
    }

    [Fact]
    public void KeptLogitsOnlyForATrainedHeadOnTheCpuWithinTheBudget()
    {
        Assert.True(FusedHeadLogProbs.KeepsLogits(512, 50272, ScalarType.Float32, DeviceType.CPU, needWeight: true));   // 4 pairs x 128
        Assert.False(FusedHeadLogProbs.KeepsLogits(16384, 50272, ScalarType.Float32, DeviceType.CPU, needWeight: true)); // 16 x 512: 3.3 GB
        Assert.False(FusedHeadLogProbs.KeepsLogits(512, 50272, ScalarType.Float32, DeviceType.CUDA, needWeight: true));
        Assert.False(FusedHeadLogProbs.KeepsLogits(512, 50272, ScalarType.BFloat16, DeviceType.CPU, needWeight: true));
        Assert.False(FusedHeadLogProbs.KeepsLogits(512, 50272, ScalarType.Float32, DeviceType.CPU, needWeight: false));
    }

    private static void CheckAgainstThePlainFormula(int n, int hiddenSize, int vocab, int s, int chunkRows)
    {
        var gen = new TorchSharp.torch.Generator((ulong)(n * 7 + chunkRows));
        var hidden64 = randn([n, hiddenSize], ScalarType.Float64, generator: gen).requires_grad_(true);
        var weight64 = (randn([vocab, hiddenSize], ScalarType.Float64, generator: gen) * 0.5).requires_grad_(true);
        var (labels, seqIndex) = TestData.Rows(gen, n, vocab, s, -100, allMaskedSequence: 0);
        var tokenWeight = randn([n], ScalarType.Float64, generator: gen);
        var sequenceWeight = randn([s], ScalarType.Float64, generator: gen);

        var (plainToken, plainSequence) = TestData.PlainLogProbs(hidden64.mm(weight64.t()), labels, seqIndex, s, -100);
        ((plainToken * tokenWeight).sum() + (plainSequence * sequenceWeight).sum()).backward();

        var hidden = hidden64.detach().to(ScalarType.Float32).requires_grad_(true);
        var weight = weight64.detach().to(ScalarType.Float32).requires_grad_(true);
        var (token, sequence) = FusedHeadLogProbs.Compute(hidden, weight, labels, seqIndex, s, chunkRows: chunkRows);
        ((token * tokenWeight.to(ScalarType.Float32)).sum() + (sequence * sequenceWeight.to(ScalarType.Float32)).sum()).backward();

        TestData.Close(plainToken, token, 1e-4, 1e-5, "token log-probs");
        TestData.Close(plainSequence, sequence, 3e-4, 1e-5, "sequence sums");
        TestData.Close(hidden64.grad!, hidden.grad!, 1e-4, 1e-4, "dH");
        TestData.Close(weight64.grad!, weight.grad!, 1e-4, 1e-4, "dW");
    }

    [Fact]
    public void Bfloat16InputsGiveFloat32LogProbsAndBfloat16Gradients()
    {
        var gen = new TorchSharp.torch.Generator(3);
        const int n = 12, h = 16, vocab = 509, s = 2;
        var hidden = randn([n, h], ScalarType.Float64, generator: gen).to(ScalarType.BFloat16).requires_grad_(true);
        var weight = (randn([vocab, h], ScalarType.Float64, generator: gen) * 0.5).to(ScalarType.BFloat16).requires_grad_(true);
        var (labels, seqIndex) = TestData.Rows(gen, n, vocab, s, -100);
        var hidden64 = hidden.detach().to(ScalarType.Float64).requires_grad_(true);
        var weight64 = weight.detach().to(ScalarType.Float64).requires_grad_(true);
        var (plainToken, plainSequence) = TestData.PlainLogProbs(hidden64.mm(weight64.t()), labels, seqIndex, s, -100);
        plainSequence.sum().backward();

        var (token, sequence) = FusedHeadLogProbs.Compute(hidden, weight, labels, seqIndex, s, chunkRows: 5);
        sequence.sum().backward();
        Assert.Equal(ScalarType.Float32, token.dtype);
        Assert.Equal(ScalarType.BFloat16, hidden.grad!.dtype);
        Assert.Equal(ScalarType.BFloat16, weight.grad!.dtype);
        // bf16 logits from a bf16 matmul: relative error of a few 2^-8 on the logits
        TestData.Close(plainToken, token, 0.15, 0.02, "bf16 token log-probs");
        TestData.Close(hidden64.grad!, hidden.grad!, 0.05, 0.05, "bf16 dH");
        TestData.Close(weight64.grad!, weight.grad!, 0.05, 0.05, "bf16 dW");
    }

    [Theory]
    [InlineData(ScalarType.Float32, 1e-4)]
    [InlineData(ScalarType.BFloat16, 0.05)]
    public void FrozenHeadGradientComesFromTheForwardBlocks(ScalarType dtype, double tolerance)
    {
        // frozen head: dH = g * (onehot - p) @ W kept from the forward blocks, no recompute in the backward
        var gen = new TorchSharp.torch.Generator(4);
        var hidden64 = randn([23, 8], ScalarType.Float64, generator: gen).to(dtype).to(ScalarType.Float64).requires_grad_(true);
        var weight64 = randn([509, 8], ScalarType.Float64, generator: gen).to(dtype).to(ScalarType.Float64);
        var (labels, seqIndex) = TestData.Rows(gen, 23, 509, 3, -100, allMaskedSequence: 1);
        var tokenWeight = randn([23], ScalarType.Float64, generator: gen);
        var (plainToken, plainSequence) = TestData.PlainLogProbs(hidden64.mm(weight64.t()), labels, seqIndex, 3, -100);
        ((plainToken * tokenWeight).sum() + plainSequence.sum()).backward();

        var hidden = hidden64.detach().to(dtype).requires_grad_(true);
        var weight = weight64.detach().to(dtype);
        var (token, sequence) = FusedHeadLogProbs.Compute(hidden, weight, labels, seqIndex, 3, chunkRows: 4);
        ((token * tokenWeight.to(ScalarType.Float32)).sum() + sequence.sum()).backward();
        Assert.Null(weight.grad);
        Assert.Equal(dtype, hidden.grad!.dtype);
        TestData.Close(hidden64.grad!, hidden.grad!, tolerance, tolerance, "frozen-head dH");
    }

    [Fact]
    public void AutoChunkRowsBoundsTheLogitsBlock()
    {
        // 16 pairs x 512 tokens at OPT's vocabulary: all rows per tile (dW rounded once), 4 slices for dH
        Assert.Equal((16384L, 15680L), FusedHeadLogProbsFunction.BackwardTile(16384, 50272, 640));
        Assert.Equal((63L, 64L), FusedHeadLogProbsFunction.BackwardTile(100, 509, 1));
        Assert.Equal((10L, 50L), FusedHeadLogProbsFunction.BackwardTile(10, 50, 4));
        Assert.Equal(640, FusedHeadLogProbs.AutoChunkRows(16384, 50272));
        Assert.True(640L * 50272 <= FusedHeadLogProbs.AutoBlockElements);
        Assert.Equal(10, FusedHeadLogProbs.AutoChunkRows(10, 50272));
        Assert.Contains("weight must be [V, H]",
            Assert.Throws<ArgumentException>(() => FusedHeadLogProbs.Compute(randn(3, 8), randn(8, 5), zeros(3, ScalarType.Int64), zeros(3, ScalarType.Int64), 1)).Message);
    }
}
