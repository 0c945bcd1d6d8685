using System.Runtime.InteropServices;
using TorchSharp;
using WeakTeacher.CudaKernels.Native;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// The decode step's output head on the CPU through the system's OpenBLAS (Debian's libopenblas0-openmp or
/// libopenblas0-pthread, BSD-3-Clause, loaded at run time, not shipped) instead of the oneMKL inside TorchSharp's
/// libtorch: on AMD CPUs oneMKL takes a generic path for skinny products such as 8 x 768 x 50272 (ModelBench
/// --suite generate-profile on an AMD EPYC at 1 thread: 51.6 against 58.6 ms a decode step, the same state in turns).
/// On by default where OpenBLAS is found; WT_HOST_BLAS=torch keeps every product in libtorch. Plain float32 CPU
/// matrices without a gradient go through cblas_sgemm; otherwise <see cref="Linear"/> is nn.functional.linear. The
/// result is the same product up to float32 rounding of the sums' order (greedy generations are the same tokens unless
/// two logits tie within that rounding).
/// </summary>
public static class HostBlas
{
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate void SgemmFn(int order, int transA, int transB, int m, int n, int k, float alpha, IntPtr a, int lda,
        IntPtr b, int ldb, float beta, IntPtr c, int ldc);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate void SetThreadsFn(int threads);

    private const int RowMajor = 101, NoTrans = 111, Trans = 112;

    private static readonly Lazy<(SgemmFn? Sgemm, SetThreadsFn? SetThreads, string Description)> Library = new(Load);

    /// <summary>On unless WT_HOST_BLAS=torch (tests set it directly); off, every product goes to torch.</summary>
    internal static bool Enabled { get; set; } = EnabledBy(Environment.GetEnvironmentVariable("WT_HOST_BLAS"));

    /// <summary>Whether the WT_HOST_BLAS value <paramref name="setting"/> lets OpenBLAS serve (unset or openblas: yes; torch: no).</summary>
    internal static bool EnabledBy(string? setting) => setting switch
    {
        null or "" or "openblas" => true,
        "torch" => false,
        _ => throw new ArgumentException($"WT_HOST_BLAS='{setting}' is neither openblas nor torch."),
    };

    /// <summary>Whether OpenBLAS was found and will serve <see cref="Linear"/>.</summary>
    public static bool Available => Enabled && Library.Value.Sgemm is not null;

    /// <summary>The library serving <see cref="Linear"/> on the CPU (for benchmark reports).</summary>
    public static string Description => Enabled ? Library.Value.Description : "torch (WT_HOST_BLAS=torch)";

    private static (SgemmFn?, SetThreadsFn?, string) Load()
    {
        if (!OperatingSystem.IsLinux()) return (null, null, "torch (OpenBLAS is looked for on Linux only)");
        foreach (var name in new[] { "libopenblas.so.0", "libopenblasp.so.0", "libopenblaso.so.0" })
        {
            if (!NativeLibrary.TryLoad(name, out var handle)) continue;
            if (!NativeLibrary.TryGetExport(handle, "cblas_sgemm", out var sgemm)) continue;
            SetThreadsFn? setThreads = NativeLibrary.TryGetExport(handle, "openblas_set_num_threads", out var st)
                ? Marshal.GetDelegateForFunctionPointer<SetThreadsFn>(st) : null;
            return (Marshal.GetDelegateForFunctionPointer<SgemmFn>(sgemm), setThreads, $"OpenBLAS ({name})");
        }
        return (null, null, "torch (no libopenblas.so.0 found)");
    }

    /// <summary>x W^T for x [M, K] and weight [N, K]: [M, N] float32, as nn.functional.linear without a bias.</summary>
    public static Tensor Linear(Tensor x, Tensor weight)
    {
        if (!Serves(x, weight)) return nn.functional.linear(x, weight);
        var (sgemm, setThreads, _) = Library.Value;
        var a = x.contiguous();
        long m = a.shape[0], k = a.shape[1], n = weight.shape[0];
        var result = empty([m, n], ScalarType.Float32);
        // OpenBLAS's own thread pool, sized as torch's (both run one after the other, never at once)
        setThreads?.Invoke(get_num_threads());
        sgemm!(RowMajor, NoTrans, Trans, (int)m, (int)n, (int)k, 1f, TorchNative.DataPointer(a), (int)k,
            TorchNative.DataPointer(weight), (int)k, 0f, TorchNative.DataPointer(result), (int)n);
        GC.KeepAlive(a);
        GC.KeepAlive(weight);
        return result;
    }

    /// <summary>Plain float32 CPU matrices, fitting BLAS's int sizes, and no gradient wanted (the result has no autograd node).</summary>
    private static bool Serves(Tensor x, Tensor weight) =>
        Available && x.device_type == DeviceType.CPU && weight.device_type == DeviceType.CPU
        && x.dtype == ScalarType.Float32 && weight.dtype == ScalarType.Float32 && x.dim() == 2 && weight.dim() == 2
        && x.shape[1] == weight.shape[1] && weight.is_contiguous()
        && Math.Max(x.shape[0], Math.Max(x.shape[1], weight.shape[0])) < int.MaxValue && x.shape[0] * weight.shape[0] < int.MaxValue
        && !(is_grad_enabled() && (x.requires_grad || weight.requires_grad));
}
