using WeakTeacher.CudaKernels.Cuda;
using WeakTeacher.CudaKernels.Memory;
using WeakTeacher.CudaKernels.Native;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>
/// The CUDA kernels against float64 references on fresh random inputs; skipped where CUDA is unavailable. Kernel outputs
/// are NaN-filled before each launch, so an element a kernel fails to write shows up as NaN. Run on a GPU node with
///   bash .device/on-device.sh .device/CudaKernels.Tests/CudaKernels.Tests --filter-class '*GpuKernelTests'
/// </summary>
[Collection("Process-wide kernel settings")]
public sealed class GpuKernelTests
{
    private static Device Gpu()
    {
        Assert.SkipUnless(cuda.is_available(), "libtorch has no CUDA device here");
        Assert.SkipUnless(CudaRuntime.IsAvailable, "CUDA kernels unavailable: " + CudaRuntime.UnavailableReason);
        KernelSettings.SynchronizeAfterLaunch = true;   // a fault is reported at the kernel that caused it
        return CUDA;
    }

    private static Tensor Poisoned(long n, ScalarType dtype, Device device) => full([n], double.NaN, dtype, device);

    public static TheoryData<int, int, string, int> Shapes => new()
    {
        { 7, 509, "f32", 3 },        // odd V: scalar path
        { 64, 50272, "f32", 5 },     // OPT vocabulary: vector path
        { 33, 50272, "bf16", 4 },
        { 5, 1000, "f32", 1 },       // all rows masked below
        { 19, 32001, "bf16", 2 },    // odd V in bf16
        { 128, 4096, "bf16", 16 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void ForwardAndBackwardKernelsMatchFloat64(int n, int vocab, string dtypeName, int s)
    {
        var device = Gpu();
        var dtype = dtypeName == "f32" ? ScalarType.Float32 : ScalarType.BFloat16;
        var gen = new TorchSharp.torch.Generator((ulong)(n * 31 + vocab));
        var logitsCpu = TestData.Logits(gen, n, vocab).to(dtype);
        var (labelsCpu, seqCpu) = TestData.Rows(gen, n, vocab, s, -100, allMaskedSequence: s > 1 ? 1 : -1);
        if (n == 5) labelsCpu = full([n], -100L, ScalarType.Int64);   // every row masked
        var logits = logitsCpu.to(device);
        var labels = labelsCpu.to(device);
        var seqIndex = seqCpu.to(device);

        var token = Poisoned(n, ScalarType.Float32, device);
        var lse = Poisoned(n, ScalarType.Float32, device);
        var sequence = Poisoned(s, ScalarType.Float32, device);
        CudaOps.LogProbForward(logits, labels, -100, token, lse);
        CudaOps.SequenceSums(token, seqIndex, sequence);
        var again = Poisoned(s, ScalarType.Float32, device);
        CudaOps.SequenceSums(token, seqIndex, again);
        Assert.True(sequence.equal(again).item<bool>(), "the sequence sums are not bit-identical between two launches");

        var logits64 = logitsCpu.to(ScalarType.Float64);
        var (expectedToken, expectedSequence) = TestData.PlainLogProbs(logits64, labelsCpu, seqCpu, s, -100);
        TestData.Close(expectedToken, token, 5e-5, 5e-6, $"token [{n},{vocab}] {dtypeName}");
        TestData.Close(expectedSequence, sequence, 3e-4, 5e-6, $"sequence [{n},{vocab}] {dtypeName}");
        var validRows = labelsCpu.ne(-100);
        TestData.Close(logits64.logsumexp(1).masked_fill(validRows.logical_not(), 0.0), lse, 5e-5, 5e-6, "lse");

        // backward: g = g_tok + g_seq[seq]; dlogits = g (onehot - softmax), zero on masked rows
        var gradToken = randn([n], generator: gen);
        var gradSequence = randn([s], generator: gen);
        var dlogits = full([n, vocab], double.NaN, dtype, device);
        CudaOps.LogProbBackward(logits, labels, seqIndex, lse, gradToken.to(device), gradSequence.to(device), -100, dlogits);
        var g = (gradToken.to(ScalarType.Float64) + gradSequence.to(ScalarType.Float64).index_select(0, seqCpu)).masked_fill(validRows.logical_not(), 0.0);
        var onehot = zeros([n, vocab], ScalarType.Float64).scatter(1, labelsCpu.masked_fill(validRows.logical_not(), 0).unsqueeze(1), ones([n, 1], ScalarType.Float64));
        var expectedGrad = g.unsqueeze(1) * (onehot - logits64.softmax(1));
        double atol = dtype == ScalarType.BFloat16 ? 1e-2 : 1e-6;
        TestData.Close(expectedGrad, dlogits, atol, dtype == ScalarType.BFloat16 ? 1e-2 : 1e-4, $"dlogits [{n},{vocab}] {dtypeName}");
    }

    [Theory]
    [InlineData(300, 50272, "f32")]
    [InlineData(96, 509, "bf16")]
    public void PublicApiGradientMatchesAutogradOnTheGpu(int n, int vocab, string dtypeName)
    {
        var device = Gpu();
        var dtype = dtypeName == "f32" ? ScalarType.Float32 : ScalarType.BFloat16;
        var gen = new TorchSharp.torch.Generator(99);
        var (labelsCpu, seqCpu) = TestData.Rows(gen, n, vocab, 6, -100, allMaskedSequence: 2);
        var logits64 = TestData.Logits(gen, n, vocab).to(dtype).to(ScalarType.Float64).to(device).requires_grad_(true);
        var labels = labelsCpu.to(device);
        var seqIndex = seqCpu.to(device);
        var w = randn([6], ScalarType.Float64, generator: gen).to(device);
        var (_, plainSequence) = TestData.PlainLogProbs(logits64, labels, seqIndex, 6, -100);
        (plainSequence * w).sum().backward();

        var logits = logits64.detach().to(dtype).requires_grad_(true);
        var before = CudaOps.LaunchCount;
        var (token, sequence) = TokenLogProbs.Compute(logits, labels, seqIndex, 6);
        (sequence * w.to(ScalarType.Float32)).sum().backward();
        Assert.True(CudaOps.LaunchCount - before >= 2, "the CUDA kernels were not used");
        TestData.Close(plainSequence, sequence, 3e-4, 1e-5, "sequence");
        TestData.Close(logits64.grad!, logits.grad!, dtype == ScalarType.BFloat16 ? 1e-2 : 1e-6, 1e-2, "dlogits");
    }

    [Theory]
    [InlineData(200, 64, 50272, "f32", 64)]
    [InlineData(77, 32, 5003, "bf16", 0)]
    public void FusedHeadMatchesThePlainFormulaOnTheGpu(int n, int h, int vocab, string dtypeName, int chunkRows)
    {
        var device = Gpu();
        var dtype = dtypeName == "f32" ? ScalarType.Float32 : ScalarType.BFloat16;
        var gen = new TorchSharp.torch.Generator(7);
        var (labelsCpu, seqCpu) = TestData.Rows(gen, n, vocab, 5, -100, allMaskedSequence: 3);
        var hidden64 = randn([n, h], ScalarType.Float64, generator: gen).to(dtype).to(ScalarType.Float64).to(device).requires_grad_(true);
        var weight64 = (randn([vocab, h], ScalarType.Float64, generator: gen) * 0.3).to(dtype).to(ScalarType.Float64).to(device).requires_grad_(true);
        var labels = labelsCpu.to(device);
        var seqIndex = seqCpu.to(device);
        var (plainToken, plainSequence) = TestData.PlainLogProbs(hidden64.mm(weight64.t()), labels, seqIndex, 5, -100);
        plainSequence.sum().backward();

        var hidden = hidden64.detach().to(dtype).requires_grad_(true);
        var weight = weight64.detach().to(dtype).requires_grad_(true);
        var (token, sequence) = FusedHeadLogProbs.Compute(hidden, weight, labels, seqIndex, 5, chunkRows: chunkRows);
        sequence.sum().backward();
        bool bf16 = dtype == ScalarType.BFloat16;
        TestData.Close(plainToken, token, bf16 ? 0.15 : 2e-4, bf16 ? 0.02 : 1e-5, "token");
        TestData.Close(hidden64.grad!, hidden.grad!, bf16 ? 0.05 : 1e-4, bf16 ? 0.05 : 1e-4, "dH");
        TestData.Close(weight64.grad!, weight.grad!, bf16 ? 0.05 : 1e-4, bf16 ? 0.05 : 1e-4, "dW");
    }

    [Theory]
    [InlineData(PreferenceLossType.Sigmoid, 0.0, 5)]
    [InlineData(PreferenceLossType.Sigmoid, 0.1, 300)]
    [InlineData(PreferenceLossType.Ipo, 0.0, 64)]
    [InlineData(PreferenceLossType.Hinge, 0.0, 1000)]
    [InlineData(PreferenceLossType.Robust, 0.2, 2049)]
    public void PreferenceKernelsMatchDoubles(PreferenceLossType type, double ls, int b)
    {
        var device = Gpu();
        var gen = new TorchSharp.torch.Generator((ulong)b);
        Tensor R() => randn([b], generator: gen) * 4 - 30;
        Tensor pc = R(), pr = R(), rc = R(), rr = R();
        const double beta = 0.2;
        Tensor P() => Poisoned(b, ScalarType.Float32, device);
        Tensor chosenOut = P(), rejectedOut = P(), accOut = P(), marginOut = P();
        var grads = full([4, b], double.NaN, ScalarType.Float32, device);
        var loss = full([], double.NaN, ScalarType.Float32, device);
        long before = CudaOps.LaunchCount;
        CudaOps.PreferenceLoss(pc.to(device), pr.to(device), rc.to(device), rr.to(device), (int)type, beta, ls,
            chosenOut, rejectedOut, accOut, marginOut, grads, loss);
        Assert.Equal(1, CudaOps.LaunchCount - before);
        float[] a = pc.data<float>().ToArray(), c = pr.data<float>().ToArray(), r1 = rc.data<float>().ToArray(), r2 = rr.data<float>().ToArray();
        float[] chosenCpu = chosenOut.cpu().data<float>().ToArray(), rejectedCpu = rejectedOut.cpu().data<float>().ToArray(),
            accCpu = accOut.cpu().data<float>().ToArray(), marginCpu = marginOut.cpu().data<float>().ToArray(),
            gradCpu = grads.cpu().flatten().data<float>().ToArray();
        double mean = 0;
        for (int i = 0; i < b; i++)
        {
            double chosen = (double)a[i] - r1[i], rejected = (double)c[i] - r2[i], l = chosen - rejected;
            mean += PreferenceScoringTests.PairLoss(type, l, beta, ls) / b;
            const double h = 1e-5;
            double grad = (PreferenceScoringTests.PairLoss(type, l + h, beta, ls) - PreferenceScoringTests.PairLoss(type, l - h, beta, ls)) / (2 * h) / b;
            double tol = 1e-6 + 1e-4 * Math.Abs(grad);
            Assert.Equal(beta * chosen, chosenCpu[i], 4);
            Assert.Equal(beta * rejected, rejectedCpu[i], 4);
            Assert.Equal(beta * chosen > beta * rejected ? 1f : 0f, accCpu[i]);
            Assert.Equal(beta * l, marginCpu[i], 4);
            Assert.Equal(grad, gradCpu[i], tol);
            Assert.Equal(-grad, gradCpu[b + i], tol);
            Assert.Equal(-grad, gradCpu[2 * b + i], tol);
            Assert.Equal(grad, gradCpu[3 * b + i], tol);
        }
        Assert.Equal(mean, loss.cpu().item<float>(), 1e-5 * Math.Max(1, Math.Abs(mean)));

        // through the public API: autograd reaches the policy log-probs
        var policyChosen = pc.to(device).requires_grad_(true);
        var result = PreferenceScoring.DpoLoss(policyChosen, pr.to(device), rc.to(device), rr.to(device), type, beta, ls);
        result.Loss.backward();
        TestData.Close(grads[0], policyChosen.grad!, 1e-7, 1e-6, "public DpoLoss gradient");

        var labelsOut = PreferenceScoring.LabelPairs(pc.to(device), rc.to(device), pr.to(device), rr.to(device), beta);
        var margin = (pc.to(ScalarType.Float64) - rc) - (pr.to(ScalarType.Float64) - rr);
        TestData.Close(margin, labelsOut.Margin, 1e-4, 1e-6, "label margin");
        Assert.Equal(margin.lt(0).to(ScalarType.Int64).data<long>().ToArray(), labelsOut.Label.cpu().data<long>().ToArray());
        TestData.Close((margin.abs() * beta).sigmoid(), labelsOut.Confidence, 1e-6, 1e-6, "confidence");
    }

    [Fact]
    public void PageLockedPoolUploadsAndDownloadsThroughTheDevice()
    {
        var device = Gpu();
        using var pool = new PinnedMemoryPool(1 << 26, PinnedMemoryKind.PageLocked);
        Assert.True(pool.IsPageLocked);
        var gpu = empty([1 << 16], ScalarType.Int64, device);
        for (int round = 0; round < 3; round++)
        {
            using var up = pool.Rent<long>(1 << 16);
            for (int i = 0; i < up.Length; i++) up.Span[i] = i * 3L + round;
            HostTransfers.Upload(up, gpu);
            var doubled = gpu * 2;
            using var down = pool.Rent<long>(1 << 16);
            HostTransfers.Download(doubled, down).Wait();
            for (int i = 0; i < down.Length; i += 997) Assert.Equal(2 * (i * 3L + round), down.Span[i]);
        }
        Assert.Equal(2, pool.BlockAllocations);
    }

    [Fact]
    public void KernelsCompileOnceAndEveryErrorCodeIsChecked()
    {
        Gpu();
        var device = CudaRuntime.Device(0);
        device.Warmup();
        Assert.Equal(0, device.Warmup());   // loaded modules are reused
        var ex = Assert.Throws<CudaException>(() => device.Function(CudaOps.LogProbFile, "no_such_kernel"));
        Assert.Equal("CUDA_ERROR_NOT_FOUND", ex.ErrorName);
        Assert.Contains("cuModuleGetFunction(no_such_kernel)", ex.Message);
    }

    /// <summary>Every TRL loss type on CUDA (the preference kernel where it applies, tensor ops otherwise) gives the
    /// float64 CPU loss and gradients, with and without WPO weights.</summary>
    [Theory]
    [MemberData(nameof(PreferenceLossTypesTests.GradientCases), MemberType = typeof(PreferenceLossTypesTests))]
    public void EveryPreferenceLossOnCudaMatchesTheCpuDoubles(PreferenceLossType type, double ls, FDivergenceType divergence, bool wpo)
    {
        var device = Gpu();
        var gen = new TorchSharp.torch.Generator(29);
        const int b = 37;
        Tensor R() => randn([b], ScalarType.Float64, generator: gen) * 3 - 25;
        var values = new[] { R(), R(), R(), R() };
        var counts = (rand([b], ScalarType.Float64, generator: gen) * 20 + 1).floor();
        var countsRejected = (rand([b], ScalarType.Float64, generator: gen) * 20 + 1).floor();
        var weights = wpo ? rand([b], ScalarType.Float64, generator: gen) + 0.1 : null;
        var settings = new PreferenceLossSettings { LossTypes = [type], Beta = 0.2, LabelSmoothing = ls, FDivergence = divergence, AlphaDivergenceCoef = 0.6 };
        (double Loss, Tensor[] Grads) Run(Device on, ScalarType dtype)
        {
            var leaves = values.Select(v => v.to(dtype).to(on).requires_grad_(true)).ToArray();
            var inputs = new PreferenceLossInputs(leaves[0], leaves[1], leaves[2], leaves[3])
            {
                ChosenTokens = counts.to(dtype).to(on), RejectedTokens = countsRejected.to(dtype).to(on),
                ChosenNll = tensor(1.1, dtype, on), PairWeights = weights?.to(dtype).to(on),
            };
            var output = PreferenceScoring.Loss(inputs, settings);
            output.Loss.backward();
            return (output.Loss.to(ScalarType.Float64).cpu().item<double>(),
                leaves.Select(l => l.grad is null ? zeros([b], ScalarType.Float64) : l.grad.to(ScalarType.Float64).cpu()).ToArray());
        }
        var (cpuLoss, cpuGrads) = Run(CPU, ScalarType.Float64);
        var (gpuLoss, gpuGrads) = Run(device, ScalarType.Float32);
        Assert.Equal(cpuLoss, gpuLoss, 1e-4 * Math.Max(1, Math.Abs(cpuLoss)));
        for (int i = 0; i < 4; i++) TestData.Close(cpuGrads[i], gpuGrads[i], 1e-6, 1e-3, $"{type} d loss / d input {i}");
    }
}
