using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>Which implementation the kernels' public entry points use.</summary>
public enum KernelBackend
{
    /// <summary>CUDA kernels when the tensors are on CUDA and the driver and NVRTC load; the reference path otherwise.</summary>
    Auto,
    /// <summary>The TorchSharp reference path (runs on any device).</summary>
    Reference,
    /// <summary>The CUDA kernels; an error when the tensors are not on CUDA or CUDA cannot be used.</summary>
    Cuda,
}

/// <summary>Process-wide kernel settings. The environment variable WT_KERNELS=reference forces the reference path
/// while <see cref="Backend"/> is left at Auto (WT_KERNELS=cuda likewise asks for the CUDA kernels).</summary>
public static class KernelSettings
{
    /// <summary>The backend to use; Auto by default.</summary>
    public static KernelBackend Backend { get; set; } = KernelBackend.Auto;

    /// <summary>Check label and sequence indices before launching (costs one device-to-host sync per call on CUDA;
    /// an out-of-range index in a kernel would be an out-of-bounds read). On by default.</summary>
    public static bool ValidateIndices { get; set; } = true;

    /// <summary>Wait for each kernel right after launching it and check the result, so a fault is reported as a
    /// <see cref="Native.CudaException"/> naming that kernel (debugging; slow). Also set by WT_KERNELS_SYNC=1.</summary>
    public static bool SynchronizeAfterLaunch { get; set; } = Environment.GetEnvironmentVariable("WT_KERNELS_SYNC") == "1";

    /// <summary>The backend that Auto resolves to through WT_KERNELS, or Backend itself when it is not Auto.</summary>
    public static KernelBackend EffectiveBackend
    {
        get
        {
            if (Backend != KernelBackend.Auto) return Backend;
            var env = Environment.GetEnvironmentVariable("WT_KERNELS");
            if (string.IsNullOrWhiteSpace(env)) return KernelBackend.Auto;
            return env.Trim().ToLowerInvariant() switch
            {
                "reference" or "ref" or "cpu" => KernelBackend.Reference,
                "cuda" => KernelBackend.Cuda,
                "auto" => KernelBackend.Auto,
                _ => throw new InvalidOperationException(
                    $"WT_KERNELS='{env}' is not a kernel backend: use 'reference', 'cuda' or 'auto'."),
            };
        }
    }

    private static int _fallbackReported;

    /// <summary>Where the reference path replaces the kernels for a dtype they do not take (a float16 checkpoint), this
    /// is said once per process on standard error rather than silently: that path is slower and holds more memory.</summary>
    public static Action<string> FallbackReporter { get; set; } = message => Console.Error.WriteLine(message);

    private static void ReportReferenceFallback(ScalarType dtype, string operation)
    {
        if (Interlocked.Exchange(ref _fallbackReported, 1) != 0) return;
        FallbackReporter($"warning: {operation}: the CUDA kernels take float32 or bfloat16, not {dtype}; using the slower reference path " +
            "(load the model as bfloat16 to use the kernels). Said once per process.");
    }

    /// <summary>Decides whether an operation on <paramref name="probe"/> runs the CUDA kernels. With
    /// <paramref name="floatKernel"/> the kernels take float32 or bfloat16 only: under Auto another dtype takes the
    /// reference path, under <see cref="KernelBackend.Cuda"/> it is an error naming <paramref name="parameter"/>.</summary>
    internal static bool UseCuda(Tensor probe, string operation, bool floatKernel = false, string parameter = "input")
    {
        bool dtypeFits = !floatKernel || probe.dtype is ScalarType.Float32 or ScalarType.BFloat16;
        switch (EffectiveBackend)
        {
            case KernelBackend.Reference:
                return false;
            case KernelBackend.Cuda:
                if (probe.device_type != TorchSharp.DeviceType.CUDA)
                    throw new InvalidOperationException(
                        $"{operation}: KernelBackend.Cuda needs CUDA tensors, but the input is on {probe.device}.");
                Cuda.CudaRuntime.EnsureAvailable();
                if (!dtypeFits)
                    throw new ArgumentException($"{operation}: the CUDA kernels take float32 or bfloat16 {parameter}, got {probe.dtype}.", parameter);
                return true;
            default:
                bool onCuda = probe.device_type == TorchSharp.DeviceType.CUDA;
                if (!dtypeFits && onCuda) ReportReferenceFallback(probe.dtype, operation);
                return dtypeFits && onCuda && Cuda.CudaRuntime.IsAvailable;
        }
    }
}
