using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>The reference path of <see cref="TokenLogProbs"/> (what runs on CPU and without CUDA) against float64 formulas.</summary>
public sealed class TokenLogProbsTests
{
    [Fact]
    public void SmallCaseMatchesHandComputedDoubles()
    {
        // two rows over a vocabulary of 3; the second row is masked; one sequence
        double[] row0 = [1.0, 2.0, 0.5];
        var logits = tensor(new float[] { 1.0f, 2.0f, 0.5f, 9f, 9f, 9f }).reshape(2, 3);
        var labels = tensor(new long[] { 1, -100 });
        var seqIndex = tensor(new long[] { 0, 0 });
        var (token, sequence) = TokenLogProbs.Compute(logits, labels, seqIndex, 1);
        double lse = Math.Log(Math.Exp(row0[0]) + Math.Exp(row0[1]) + Math.Exp(row0[2]));
        Assert.Equal(row0[1] - lse, token[0].item<float>(), 6);
        Assert.Equal(0.0, token[1].item<float>());
        Assert.Equal(row0[1] - lse, sequence[0].item<float>(), 6);
    }

    [Theory]
    [InlineData(37, 509, 5, 1L)]
    [InlineData(6, 50272, 3, 2L)]
    [InlineData(64, 1000, 9, 3L)]
    public void ForwardMatchesFloat64(int n, int vocab, int numSequences, long seed)
    {
        var gen = new TorchSharp.torch.Generator((ulong)seed);
        var logits = TestData.Logits(gen, n, vocab);
        var (labels, seqIndex) = TestData.Rows(gen, n, vocab, numSequences, -100, allMaskedSequence: 1);
        var (expectedToken, expectedSequence) = TestData.PlainLogProbs(logits, labels, seqIndex, numSequences, -100);
        var (token, sequence) = TokenLogProbs.Compute(logits.to(ScalarType.Float32), labels, seqIndex, numSequences);
        Assert.Equal(ScalarType.Float32, token.dtype);
        Assert.Equal(ScalarType.Float32, sequence.dtype);
        TestData.Close(expectedToken, token, 2e-5, 2e-6, "token log-probs");
        TestData.Close(expectedSequence, sequence, 1e-4, 2e-6, "sequence sums");
        Assert.Equal(0.0, sequence[1].item<float>());   // the all-masked sequence
    }

    [Fact]
    public void Bfloat16InputMatchesFloat64OfTheRoundedValues()
    {
        var gen = new TorchSharp.torch.Generator(11);
        var logits = TestData.Logits(gen, 21, 509).to(ScalarType.BFloat16);
        var (labels, seqIndex) = TestData.Rows(gen, 21, 509, 4, -100);
        var (expectedToken, expectedSequence) = TestData.PlainLogProbs(logits.to(ScalarType.Float64), labels, seqIndex, 4, -100);
        var (token, sequence) = TokenLogProbs.Compute(logits, labels, seqIndex, 4);
        TestData.Close(expectedToken, token, 2e-5, 2e-6, "bf16 token log-probs");
        TestData.Close(expectedSequence, sequence, 1e-4, 2e-6, "bf16 sequence sums");
    }

    [Fact]
    public void GradientMatchesAutogradOfThePlainFormula()
    {
        var gen = new TorchSharp.torch.Generator(5);
        const int n = 40, vocab = 509, s = 6;
        var logits64 = TestData.Logits(gen, n, vocab).requires_grad_(true);
        var (labels, seqIndex) = TestData.Rows(gen, n, vocab, s, -1, allMaskedSequence: 2);
        var tokenWeight = randn([n], ScalarType.Float64, generator: gen);
        var sequenceWeight = randn([s], ScalarType.Float64, generator: gen);

        var (plainToken, plainSequence) = TestData.PlainLogProbs(logits64, labels, seqIndex, s, -1);
        ((plainToken * tokenWeight).sum() + (plainSequence * sequenceWeight).sum()).backward();

        var logits32 = logits64.detach().to(ScalarType.Float32).requires_grad_(true);
        var (token, sequence) = TokenLogProbs.Compute(logits32, labels, seqIndex, s, ignoreIndex: -1);
        ((token * tokenWeight.to(ScalarType.Float32)).sum() + (sequence * sequenceWeight.to(ScalarType.Float32)).sum()).backward();

        TestData.Close(logits64.grad!, logits32.grad!, 2e-6, 1e-4, "dlogits");
        var ignoredRows = labels.eq(-1).nonzero().squeeze(1);
        Assert.Equal(0.0, logits32.grad!.index_select(0, ignoredRows).abs().max().item<float>());
    }

    [Fact]
    public void RowBlocksGiveTheSameResultAsOneBlock()
    {
        var gen = new TorchSharp.torch.Generator(8);
        var logits = TestData.Logits(gen, 50, 509).to(ScalarType.Float32).requires_grad_(true);
        var (labels, seqIndex) = TestData.Rows(gen, 50, 509, 5, -100);
        var (token, sequence) = TokenLogProbs.Compute(logits, labels, seqIndex, 5);
        sequence.sum().backward();
        var grad = logits.grad!.clone();

        var old = ReferenceLogProbs.BlockElements;
        ReferenceLogProbs.BlockElements = 509 * 7;   // 7-row blocks, the last one partial
        try
        {
            var again = logits.detach().clone().requires_grad_(true);
            var (blockedToken, blockedSequence) = TokenLogProbs.Compute(again, labels, seqIndex, 5);
            blockedSequence.sum().backward();
            TestData.Close(token, blockedToken, 0, 0, "blocked token log-probs");
            TestData.Close(sequence, blockedSequence, 1e-6, 0, "blocked sequence sums");
            TestData.Close(grad, again.grad!, 0, 0, "blocked gradient");
        }
        finally { ReferenceLogProbs.BlockElements = old; }
    }

    [Fact]
    public void NoGradientWhenLogitsDoNotRequireIt()
    {
        var logits = randn(4, 10);
        var (token, sequence) = TokenLogProbs.Compute(logits, tensor(new long[] { 1, 2, 3, 4 }), zeros(4, ScalarType.Int64), 1);
        Assert.False(token.requires_grad);
        Assert.False(sequence.requires_grad);
    }

    [Fact]
    public void BadInputsNameTheInput()
    {
        var logits = randn(4, 10);
        var seq = zeros(4, ScalarType.Int64);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => TokenLogProbs.Compute(logits, tensor(new long[] { 1, 2, 10, -100 }), seq, 1));
        Assert.Contains("labels[2] = 10 is outside [0, 10)", ex.Message);
        var exSeq = Assert.Throws<ArgumentOutOfRangeException>(() => TokenLogProbs.Compute(logits, tensor(new long[] { 1, 2, 3, 4 }), tensor(new long[] { 0, 0, 1, 0 }), 1));
        Assert.Contains("seqIndex[2] = 1 is outside [0, 1)", exSeq.Message);
        Assert.Contains("labels must be 1-D of length 4",
            Assert.Throws<ArgumentException>(() => TokenLogProbs.Compute(logits, zeros(3, ScalarType.Int64), seq, 1)).Message);
        Assert.Contains("labels must be int64",
            Assert.Throws<ArgumentException>(() => TokenLogProbs.Compute(logits, zeros(4, ScalarType.Int32), seq, 1)).Message);
        Assert.Contains("logits must be 2-D",
            Assert.Throws<ArgumentException>(() => TokenLogProbs.Compute(randn(4), zeros(4, ScalarType.Int64), seq, 1)).Message);
    }
}

/// <summary>Backward after the forward's dispose scope is gone, with one output unused (TorchSharp would otherwise
/// zero-fill that output's gradient from a tensor the scope disposed).</summary>
public sealed class AutogradScopeTests
{
    [Fact]
    public void BackwardWorksAfterTheForwardScopeIsDisposedWithAnUnusedOutput()
    {
        var logits = randn(6, 11).requires_grad_(true);
        var labels = tensor(new long[] { 1, 2, -100, 4, 5, 6 });
        var seqIndex = tensor(new long[] { 0, 0, 0, 1, 1, 1 });
        Tensor sequence;
        using (var scope = NewDisposeScope())
        {
            var (_, seq) = TokenLogProbs.Compute(logits, labels, seqIndex, 2);
            sequence = seq.MoveToOuterDisposeScope();
        }
        sequence.sum().backward();
        var expected = logits.detach().to(ScalarType.Float64).requires_grad_(true);
        var (_, plain) = TestData.PlainLogProbs(expected, labels, seqIndex, 2, -100);
        plain.sum().backward();
        TestData.Close(expected.grad!, logits.grad!, 1e-6, 1e-5, "dlogits");

        var hidden = randn(6, 4).requires_grad_(true);
        var weight = randn(11, 4).requires_grad_(true);
        Tensor token;
        using (var scope = NewDisposeScope())
        {
            var (tok, _) = FusedHeadLogProbs.Compute(hidden, weight, labels, seqIndex, 2, chunkRows: 2);
            token = tok.MoveToOuterDisposeScope();
        }
        token.sum().backward();
        Assert.NotNull(hidden.grad);
        Assert.NotNull(weight.grad);
    }
}
