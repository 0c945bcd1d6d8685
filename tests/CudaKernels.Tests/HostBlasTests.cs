using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>The decode head's product through the system OpenBLAS (<see cref="HostBlas"/>) against torch's, and its
/// fallbacks to torch.</summary>
public sealed class HostBlasTests
{
    private static bool OpenBlasInstalled =>
        OperatingSystem.IsLinux() && (File.Exists("/usr/lib/x86_64-linux-gnu/libopenblas.so.0") || File.Exists("/usr/lib64/libopenblas.so.0"));

    [Theory]
    [InlineData(8, 768, 5027)]
    [InlineData(1, 16, 509)]
    [InlineData(3, 5, 7)]
    public void ProductIsTorchLinear(int m, int k, int n)
    {
        bool enabled = HostBlas.Enabled;
        HostBlas.Enabled = true;
        try { CheckProduct(m, k, n); }
        finally { HostBlas.Enabled = enabled; }
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
        bool enabled = HostBlas.Enabled;
        HostBlas.Enabled = true;
        try { CheckFallbacks(); }
        finally { HostBlas.Enabled = enabled; }
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
