using System.Runtime.InteropServices;
using TorchSharp;
using WeakTeacher.CudaKernels.Native;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// The CPU's float32 products of the linear layers and the decode head through the system's OpenBLAS (Debian's
/// libopenblas0-openmp or libopenblas0-pthread, BSD-3-Clause, loaded at run time, not shipped) instead of the oneMKL
/// inside TorchSharp's libtorch, which on AMD CPUs takes a generic path (the 8 x 768 x 50272 head: 9.7 against
/// 17 GFLOP/s; training-sized 1024 x 768 x 3072: OpenBLAS faster too); products of up to 8 rows (a decode step) go to
/// <see cref="SkinnyProduct"/>. Forward and backward (<see cref="HostBlasLinearFunction"/>). On by default where
/// OpenBLAS is found; WT_HOST_BLAS=torch keeps every product in libtorch. Results are the same products up to float32
/// rounding of the sums' order (greedy generations are transformers' tokens on every parity fixture either way).
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

    /// <summary>Products of up to <see cref="SkinnyProduct.MaxRows"/> rows go to <see cref="SkinnyProduct"/> (tests and
    /// benchmarks turn it off to compare).</summary>
    internal static bool Skinny { get; set; } = true;

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
    public static Tensor Linear(Tensor x, Tensor weight) => TryLinear(x, weight, null) ?? nn.functional.linear(x, weight);

    /// <summary>
    /// y = x W^T + b for x [..., K] and weight [N, K] (<paramref name="weightInOut"/>: GPT-2's Conv1D layout, weight
    /// [K, N], y = x W + b) through OpenBLAS, or null where it does not serve (not float32 on the CPU, OpenBLAS off or
    /// missing) and the caller's torch product applies. Where a gradient is wanted the backward is OpenBLAS's too
    /// (<see cref="HostBlasLinearFunction"/>): dX = dY W, dW = dY^T X accumulated straight into weight.grad, db = sum dY.
    /// </summary>
    public static Tensor? TryLinear(Tensor x, Tensor weight, Tensor? bias, bool weightInOut = false)
    {
        if (!Serves(x, weight, bias, weightInOut)) return null;
        long k = x.shape[^1], n = weightInOut ? weight.shape[1] : weight.shape[0];
        var outShape = x.shape.ToArray();
        outShape[^1] = n;
        bool grad = is_grad_enabled() && (x.requires_grad || weight.requires_grad || bias?.requires_grad == true);
        // dW goes into weight.grad: only a leaf's (a parameter's) gradient ends there; a computed weight keeps torch's product
        if (grad && weight.requires_grad && !weight.is_leaf) return null;
        if (grad)
        {
            using var scope = NewDisposeScope();
            var rows = x.reshape(-1, k).contiguous();
            return HostBlasLinearFunction.apply(rows, weight, bias!, weightInOut).reshape(outShape).MoveToOuterDisposeScope();
        }
        using (var rows = x.reshape(-1, k).contiguous())
        using (var y = Forward(rows, weight, bias, weightInOut))
            return y.reshape(outShape);
    }

    /// <summary>[M, N] = rows [M, K] times W^T (or W, in-out layout), plus the bias broadcast over the rows.</summary>
    internal static Tensor Forward(Tensor rows, Tensor weight, Tensor? bias, bool weightInOut)
    {
        long m = rows.shape[0], k = rows.shape[1], n = weightInOut ? weight.shape[1] : weight.shape[0];
        var result = empty([m, n], ScalarType.Float32);
        if (m <= SkinnyProduct.MaxRows && !weightInOut && SkinnyProduct.Supported && Skinny)
        {
            // a decode step's few rows: each weight row streamed once (OpenBLAS's general kernel reads it at half the bandwidth)
            unsafe
            {
                SkinnyProduct.Compute((float*)TorchNative.DataPointer(rows), (int)m, (int)k, (float*)TorchNative.DataPointer(weight), (int)n,
                    bias is null ? null : (float*)TorchNative.DataPointer(bias), (float*)TorchNative.DataPointer(result), get_num_threads());
            }
            GC.KeepAlive(rows);
            GC.KeepAlive(weight);
            GC.KeepAlive(bias);
            return result;
        }
        if (bias is not null) result.copy_(bias.expand(m, n));
        Gemm(false, !weightInOut, m, n, k, rows, k, weight, weightInOut ? n : k, bias is null ? 0f : 1f, result, n);
        return result;
    }

    /// <summary>C [m, n] = op(A) op(B) + beta C, row-major, op = transpose where asked; lda/ldb/ldc are the stored rows' lengths.</summary>
    internal static void Gemm(bool transA, bool transB, long m, long n, long k, Tensor a, long lda, Tensor b, long ldb, float beta, Tensor c, long ldc)
    {
        var (sgemm, setThreads, _) = Library.Value;
        // OpenBLAS's own thread pool, sized as torch's (both run one after the other, never at once)
        setThreads?.Invoke(get_num_threads());
        sgemm!(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, (int)m, (int)n, (int)k, 1f, TorchNative.DataPointer(a), (int)lda,
            TorchNative.DataPointer(b), (int)ldb, beta, TorchNative.DataPointer(c), (int)ldc);
        GC.KeepAlive(a);
        GC.KeepAlive(b);
        GC.KeepAlive(c);
    }

    internal static bool Plain(Tensor t) => t.device_type == DeviceType.CPU && t.dtype == ScalarType.Float32;

    /// <summary>Plain float32 CPU tensors of matching sizes that fit BLAS's int arguments, a contiguous weight (a
    /// parameter) and at least one element each way.</summary>
    private static bool Serves(Tensor x, Tensor weight, Tensor? bias, bool weightInOut)
    {
        if (!Available || !Plain(x) || !Plain(weight) || x.dim() < 1 || weight.dim() != 2 || !weight.is_contiguous()) return false;
        long k = weightInOut ? weight.shape[0] : weight.shape[1], n = weightInOut ? weight.shape[1] : weight.shape[0];
        if (x.shape[^1] != k || k == 0 || n == 0) return false;
        long m = x.numel() / k;
        if (m == 0 || Math.Max(m, Math.Max(k, n)) >= int.MaxValue || m * n >= int.MaxValue || m * k >= int.MaxValue) return false;
        return bias is null || (Plain(bias) && bias.dim() == 1 && bias.shape[0] == n && bias.is_contiguous());
    }
}

/// <summary>
/// Autograd function of <see cref="HostBlas.TryLinear"/> on [M, K] rows. The weight's gradient is added into
/// weight.grad by the product itself (beta 1), as autograd's AccumulateGrad would, rather than returned: a gradient a
/// custom function returns stays referenced by TorchSharp's wrapper until the caller's scope ends, so autograd would
/// copy each layer's dW into .grad and both would live to the end of the backward.
/// </summary>
internal sealed class HostBlasLinearFunction : TorchSharp.torch.autograd.SingleTensorFunction<HostBlasLinearFunction>
{
    public override string Name => "WeakTeacher.HostBlasLinear";

    public override Tensor forward(TorchSharp.torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var rows = (Tensor)vars[0];
        var weight = (Tensor)vars[1];
        var bias = vars[2] as Tensor;
        bool weightInOut = (bool)vars[3];
        // the rows are saved as a plain alias of their memory (a tensor of its own, not a view: its own version
        // counter), which the backward lets go of once it has used it; libtorch frees a custom node's saved tensors only
        // with the graph, after the whole backward (every projection's input: 250 MiB at OPT-125M, 4 pairs x 128)
        Tensor alias;
        using (no_grad())
        using (var detached = rows.detach())
            alias = empty(0, ScalarType.Float32).set_(detached);
        ctx.save_for_backward([alias, weight]);
        ctx.save_data("needs", (rows.requires_grad, weight.requires_grad, bias?.requires_grad == true, weightInOut));
        ctx.set_materialize_grads(false);   // see AutogradGrads
        return HostBlas.Forward(rows, weight, bias, weightInOut);
    }

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, Tensor grad) =>
        AutogradGrads.Backward(ctx, [grad], saved =>
        {
            var (needRows, needWeight, needBias, weightInOut) = ((bool, bool, bool, bool))ctx.get_data("needs");
            if (grad is null || grad.IsInvalid) return [null!, null!, null!, null!];
            var rows = saved[0];
            var weight = saved[1];
            var g = grad.contiguous();
            long m = rows.shape[0], k = rows.shape[1], n = g.shape[1];
            Tensor? dRows = null;
            if (needRows)
            {
                // dX [M, K] = dY [M, N] W [N, K]  (in-out layout: dY W^T, W [K, N])
                dRows = empty([m, k], ScalarType.Float32);
                HostBlas.Gemm(false, weightInOut, m, k, n, g, n, weight, weightInOut ? n : k, 0f, dRows, k);
            }
            // a parameter (a leaf) is saved as itself: the unpacked tensor shares its .grad
            if (needWeight) AccumulateWeightGrad(weight, rows, g, weightInOut);
            var dBias = needBias ? g.sum([0L]) : null;
            using (var none = empty(0, ScalarType.Float32)) rows.set_(none);   // used: let go (a second backward fails on its version)
            return [dRows!, null!, dBias!, null!];
        });

    /// <summary>weight.grad += dY^T X ([N, K]; in-out layout X^T dY, [K, N]), allocated on first use.</summary>
    private static void AccumulateWeightGrad(Tensor weight, Tensor rows, Tensor g, bool weightInOut)
    {
        long m = rows.shape[0], k = rows.shape[1], n = g.shape[1];
        var existing = weight.grad;
        if (existing is null || existing.IsInvalid)
        {
            // the first micro-batch: the product is the gradient (beta 0: the new buffer is not read)
            var fresh = empty(weight.shape, ScalarType.Float32);
            Product(fresh, 0f);
            weight.grad = fresh;
        }
        else if (existing.is_contiguous() && HostBlas.Plain(existing)) Product(existing, 1f);   // added in place
        else
        {
            using var delta = empty(weight.shape, ScalarType.Float32);
            Product(delta, 0f);
            existing.AddInPlace(delta);
        }

        void Product(Tensor c, float beta)
        {
            if (weightInOut) HostBlas.Gemm(true, false, k, n, m, rows, k, g, n, beta, c, n);
            else HostBlas.Gemm(true, false, n, k, m, g, n, rows, k, beta, c, k);
        }
    }
}
