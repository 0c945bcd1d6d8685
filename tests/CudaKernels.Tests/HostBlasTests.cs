using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>The decode head's product through the system OpenBLAS (<see cref="HostBlas"/>) against torch's, and its
/// fallbacks to torch.</summary>
public sealed class HostBlasTests
{
    private static bool OpenBlasInstalled =>
        OperatingSystem.IsLinux() && (File.Exists("/usr/lib/x86_64-linux-gnu/libopenblas.so.0") || File.Exists("/usr/lib64/libopenblas.so.0"));

    /// <summary>Runs <paramref name="check"/> with OpenBLAS on, as by default, and restores the setting after.</summary>
    private static void WithHostBlas(Action check)
    {
        bool enabled = HostBlas.Enabled;
        HostBlas.Enabled = true;
        try { check(); }
        finally { HostBlas.Enabled = enabled; }
    }

    [Theory]
    [InlineData(8, 768, 5027)]
    [InlineData(1, 16, 509)]
    [InlineData(3, 5, 7)]
    public void ProductIsTorchLinear(int m, int k, int n)
    {
        WithHostBlas(() => CheckProduct(m, k, n));
    }

    private static void CheckProduct(int m, int k, int n)
    {
        var gen = new TorchSharp.torch.Generator((ulong)(m * 31 + n));
        using var x = randn([m, k], generator: gen);
        using var w = randn([n, k], generator: gen);
        // an installed OpenBLAS must be found and used: otherwise this only compares torch with itself
        if (OpenBlasInstalled) Assert.True(HostBlas.Available, HostBlas.Description);
        using var ours = HostBlas.Linear(x, w);
        using var torchs = nn.functional.linear(x, w);
        Assert.Equal(torchs.shape, ours.shape);
        Assert.True(ours.allclose(torchs, rtol: 1e-5, atol: 1e-4), $"max difference {(ours - torchs).abs().max().item<float>()}");
        // a non-contiguous input (the last column of [B, T, H] hidden states) gives the same
        using var wide = randn([m, 3, k], generator: gen);
        using var column = wide.select(1, -1);
        Assert.True(HostBlas.Linear(column, w).allclose(nn.functional.linear(column, w), rtol: 1e-5, atol: 1e-4));
    }

    [Theory]
    [InlineData(false, true)]
    [InlineData(true, true)]
    [InlineData(false, false)]
    public void LayerProductAndItsGradientsAreTorchs(bool weightInOut, bool withBias)
    {
        WithHostBlas(() => CheckGradients(weightInOut, withBias));
    }

    private static void CheckGradients(bool weightInOut, bool withBias)
    {
        if (OpenBlasInstalled) Assert.True(HostBlas.Available, HostBlas.Description);
        var gen = new TorchSharp.torch.Generator(7);
        const int k = 24, n = 40;
        using var x0 = randn([3, 5, k], generator: gen);
        using var w0 = randn(weightInOut ? [k, n] : [n, k], generator: gen);
        using var b0 = randn([n], generator: gen);
        using var dy = randn([3, 5, n], generator: gen);
        // a gradient already in .grad (a previous micro-batch) is added to, as autograd's accumulation does
        using var earlier = randn(w0.shape, generator: gen);
        (Tensor Y, Tensor Dx, Tensor Dw, Tensor? Db) Run(bool ours)
        {
            var x = x0.clone().requires_grad_(true);
            var w = w0.clone().requires_grad_(true);
            var b = withBias ? b0.clone().requires_grad_(true) : null;
            w.grad = earlier.clone();
            var y = ours ? HostBlas.TryLinear(x, w, b, weightInOut)! : weightInOut ? (b is null ? x.matmul(w) : x.matmul(w) + b) : nn.functional.linear(x, w, b);
            Assert.NotNull(y);
            y.backward([dy]);
            return (y.detach(), x.grad!, w.grad!, b?.grad);
        }
        var (yOurs, dxOurs, dwOurs, dbOurs) = Run(true);
        var (yTorch, dxTorch, dwTorch, dbTorch) = Run(false);
        void Same(Tensor a, Tensor b, string what) => Assert.True(a.allclose(b, rtol: 1e-5, atol: 1e-4), $"{what}: max difference {(a - b).abs().max().item<float>()}");
        Assert.Equal(yTorch.shape, yOurs.shape);
        Same(yOurs, yTorch, "y");
        Same(dxOurs, dxTorch, "dX");
        Same(dwOurs, dwTorch, "dW");
        if (withBias) Same(dbOurs!, dbTorch!, "db");
        else Assert.Null(dbOurs);
    }

    [Fact]
    public void AGradientStoredTransposedIsAddedTo()
    {
        WithHostBlas(() =>
        {
            using var x = randn([5, 8]).requires_grad_(true);
            using var w = randn([6, 8]).requires_grad_(true);
            using var earlier = randn([8, 6]);
            w.grad = earlier.clone().t();   // a [6, 8] gradient laid out column-major (its own memory: it is added to)
            using var dy = randn([5, 6]);
            HostBlas.TryLinear(x, w, null)!.backward([dy]);
            using var expected = earlier.t() + dy.t().mm(x.detach());
            Assert.True(w.grad!.allclose(expected, rtol: 1e-5, atol: 1e-4), $"max difference {(w.grad! - expected).abs().max().item<float>()}");
        });
    }

    [Fact]
    public void AFrozenWeightGetsNoGradient()
    {
        WithHostBlas(() =>
        {
            using var x = randn([4, 8]).requires_grad_(true);
            using var w = randn([6, 8]);
            using var y = HostBlas.TryLinear(x, w, null)!;
            y.sum().backward();
            Assert.Null(w.grad);
            Assert.True(x.grad!.allclose(w.sum([0L]).expand(4, 8), rtol: 1e-5, atol: 1e-5));
            // a computed weight (not a leaf) needs its gradient passed on, not stored: torch's product serves it
            using var leaf = randn([6, 8]).requires_grad_(true);
            using var computed = leaf * 2;
            Assert.Null(HostBlas.TryLinear(x, computed, null));
        });
    }

    [Theory]
    [InlineData(null, true)]
    [InlineData("", true)]
    [InlineData("openblas", true)]
    [InlineData("torch", false)]
    public void OnUnlessWtHostBlasIsTorch(string? setting, bool enabled) => Assert.Equal(enabled, HostBlas.EnabledBy(setting));

    [Fact]
    public void AnUnknownWtHostBlasIsRejected() => Assert.Throws<ArgumentException>(() => HostBlas.EnabledBy("mkl"));

    [Fact]
    public void OtherInputsGoToTorch()
    {
        WithHostBlas(() => CheckFallbacks());
    }

    private static void CheckFallbacks()
    {
        using var x = randn([4, 8]);
        using var w = randn([6, 8]).requires_grad_(true);
        // a product that needs a gradient keeps torch's autograd node
        using (var y = HostBlas.Linear(x, w)) Assert.True(y.requires_grad);
        using (no_grad())
        using (var y = HostBlas.Linear(x, w)) Assert.False(y.requires_grad);
        using var xb = x.to(ScalarType.BFloat16);
        using var wb = w.detach().to(ScalarType.BFloat16);
        using (var y = HostBlas.Linear(xb, wb)) Assert.Equal(ScalarType.BFloat16, y.dtype);
        HostBlas.Enabled = false;
        Assert.False(HostBlas.Available);
        using var z = HostBlas.Linear(x, w.detach());
        Assert.True(z.allclose(nn.functional.linear(x, w.detach())));
    }
}
