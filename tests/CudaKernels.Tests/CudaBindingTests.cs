using WeakTeacher.CudaKernels.Cuda;
using WeakTeacher.CudaKernels.Native;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>Tests that change process-wide settings (the backend, WT_KERNELS) run alone.</summary>
[CollectionDefinition("Process-wide kernel settings", DisableParallelization = true)]
public sealed class SettingsCollection;

/// <summary>The driver/NVRTC binding where no driver exists: clear exceptions, no crash.</summary>
[Collection("Process-wide kernel settings")]
public sealed class CudaBindingTests
{
    [Fact]
    public void MissingDriverLibraryGivesAClearReason()
    {
        var (driver, reason) = CudaDriver.TryCreate(["libcuda-missing-for-test.so.1"]);
        Assert.Null(driver);
        Assert.StartsWith("CUDA driver libcuda-missing-for-test.so.1 not found: ", reason);
        Assert.Contains("libcuda-missing-for-test.so.1", reason[40..]);
    }

    [Fact]
    public void MissingNvrtcGivesAClearReason()
    {
        var (compiler, reason) = Nvrtc.TryCreate(["libnvrtc-missing-for-test.so"]);
        Assert.Null(compiler);
        Assert.StartsWith("NVRTC (libnvrtc.so) not found: libnvrtc-missing-for-test.so", reason);
    }

    [Fact]
    public void WithoutCudaTheRuntimeSaysWhyAndNothingCrashes()
    {
        Assert.SkipWhen(CudaRuntime.IsAvailable, "CUDA is available here; this checks the no-driver behaviour");
        Assert.False(CudaRuntime.IsAvailable);
        Assert.NotEmpty(CudaRuntime.UnavailableReason);
        var ex = Assert.Throws<CudaUnavailableException>(CudaRuntime.EnsureAvailable);
        Assert.Equal(CudaRuntime.UnavailableReason, ex.Message);
        Assert.Throws<CudaUnavailableException>(() => CudaRuntime.Device(0));
        if (!CudaDriver.TryGet(out _, out var driverReason))
            Assert.StartsWith("CUDA driver libcuda.so.1 not found: ", driverReason);
    }

    [Fact]
    public void CudaBackendOnCpuTensorsIsAClearError()
    {
        var old = KernelSettings.Backend;
        KernelSettings.Backend = KernelBackend.Cuda;
        try
        {
            var ex = Assert.Throws<InvalidOperationException>(() =>
                TokenLogProbs.Compute(randn(2, 5), tensor(new long[] { 1, 2 }), zeros(2, ScalarType.Int64), 1));
            Assert.Contains("KernelBackend.Cuda needs CUDA tensors", ex.Message);
            var x = tensor(new float[] { -1f });
            Assert.Throws<InvalidOperationException>(() => PreferenceScoring.DpoLoss(x, x, x, x, PreferenceLossType.Sigmoid, 0.1));
        }
        finally { KernelSettings.Backend = old; }
    }

    [Fact]
    public void EnvironmentSelectsTheBackendWhileTheSettingIsAuto()
    {
        var old = Environment.GetEnvironmentVariable("WT_KERNELS");
        try
        {
            Environment.SetEnvironmentVariable("WT_KERNELS", "reference");
            Assert.Equal(KernelBackend.Reference, KernelSettings.EffectiveBackend);
            Environment.SetEnvironmentVariable("WT_KERNELS", "cuda");
            Assert.Equal(KernelBackend.Cuda, KernelSettings.EffectiveBackend);
            Environment.SetEnvironmentVariable("WT_KERNELS", "fast");
            Assert.Contains("WT_KERNELS='fast'", Assert.Throws<InvalidOperationException>(() => KernelSettings.EffectiveBackend).Message);
            KernelSettings.Backend = KernelBackend.Reference;
            Assert.Equal(KernelBackend.Reference, KernelSettings.EffectiveBackend);   // an explicit setting wins
        }
        finally
        {
            KernelSettings.Backend = KernelBackend.Auto;
            Environment.SetEnvironmentVariable("WT_KERNELS", old);
        }
        Assert.Equal(old is null ? KernelBackend.Auto : KernelSettings.EffectiveBackend, KernelSettings.EffectiveBackend);
    }

    [Fact]
    public void CudaExceptionNamesTheCallAndTheError()
    {
        var ex = new CudaException("cuLaunchKernel(logprob_forward_f32)", 700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered");
        Assert.Equal("cuLaunchKernel(logprob_forward_f32) failed: CUDA_ERROR_ILLEGAL_ADDRESS (700): an illegal memory access was encountered", ex.Message);
        Assert.Equal("CUDA_ERROR_ILLEGAL_ADDRESS", ex.ErrorName);
        Assert.Equal(700, ex.Code);
    }

    [Fact]
    public unsafe void TensorDataPointerAddressesTheElements()
    {
        var t = arange(10, ScalarType.Float32);
        var p = (float*)TorchNative.DataPointer(t);
        Assert.Equal(0f, p[0]);
        Assert.Equal(9f, p[9]);
        var view = t.narrow(0, 3, 4);   // storage offset applied
        Assert.Equal(3f, *(float*)TorchNative.DataPointer(view));
    }
}
