using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// Y [M, N] = X [M, K] W^T (+ b) for a few rows (M &lt;= <see cref="MaxRows"/>): the decode step's products, float32,
/// row-major, W [N, K] as a linear layer stores it. Each weight row is read from memory once and multiplied with every
/// row of X (L1-resident), so the bound is memory bandwidth: 4 bytes of W per 2M flops. OpenBLAS's general kernel
/// reaches about 9 GB/s of weight reads at M = 8 on the development AMD EPYC where a plain read streams at 21
/// (benchmarks: KernelBench `skinny`, ModelBench --suite generate-profile). AVX2 + FMA; <see cref="Supported"/> is false
/// elsewhere and callers use OpenBLAS or torch. The weight's rows are split into one contiguous range per thread, run
/// on libtorch's own threads (<see cref="TorchThreads"/>).
/// <see cref="Reference"/> is the plain loop it must equal up to float32 summation order.
/// </summary>
public static unsafe class SkinnyProduct
{
    public const int MaxRows = 8;

    public static bool Supported => Avx2.IsSupported && Fma.IsSupported;

    /// <summary>y[r, j] = sum_k x[r, k] w[j, k] + bias[j] (bias may be null).</summary>
    public static void Compute(float* x, int m, int k, float* w, int n, float* bias, float* y, int threads)
    {
        if (!Supported) throw new PlatformNotSupportedException("SkinnyProduct needs AVX2 and FMA.");
        if (m < 1 || m > MaxRows) throw new ArgumentOutOfRangeException(nameof(m), m, $"SkinnyProduct takes 1 to {MaxRows} rows.");
        // ranges of whole 2-row blocks, at least 256 weight rows each (below that a thread costs more than it saves)
        int parts = Math.Clamp(Math.Min(threads, n / 256), 1, 64);
        if (parts == 1)
        {
            Range(x, m, k, w, 0, n, bias, y, n);
            return;
        }
        var job = new Job { X = x, M = m, K = k, W = w, N = n, Bias = bias, Y = y };
        TorchThreads.For(parts, &RunPart, &job);
    }

    private struct Job
    {
        public float* X, W, Bias, Y;
        public int M, K, N;
    }

    private static void RunPart(void* data, int p, int parts)
    {
        ref var job = ref *(Job*)data;
        int start = (int)((long)job.N * p / parts) & ~1, end = p == parts - 1 ? job.N : (int)((long)job.N * (p + 1) / parts) & ~1;
        Range(job.X, job.M, job.K, job.W, start, end, job.Bias, job.Y, job.N);
    }

    /// <summary>Weight rows [start, end): two at a time, against X's rows four at a time (8 accumulators).</summary>
    private static void Range(float* x, int m, int k, float* w, int start, int end, float* bias, float* y, int n)
    {
        int j = start;
        for (; j + 1 < end; j += 2)
            for (int r = 0; r < m; r += 4)
                Block2(x, m, k, w, j, r, Math.Min(4, m - r), bias, y, n);
        if (j < end)
            for (int r = 0; r < m; r++) y[(long)r * n + j] = Dot(x + (long)r * k, w + (long)j * k, k) + (bias is null ? 0f : bias[j]);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block2(float* x, int m, int k, float* w, int j, int r, int rows, float* bias, float* y, int n)
    {
        float* w0 = w + (long)j * k, w1 = w0 + k;
        float* x0 = x + (long)r * k, x1 = x0 + (rows > 1 ? k : 0), x2 = x0 + (rows > 2 ? 2L * k : 0), x3 = x0 + (rows > 3 ? 3L * k : 0);
        Vector256<float> a00 = default, a01 = default, a10 = default, a11 = default, a20 = default, a21 = default, a30 = default, a31 = default;
        int i = 0;
        for (; i + 8 <= k; i += 8)
        {
            var v0 = Avx.LoadVector256(w0 + i);
            var v1 = Avx.LoadVector256(w1 + i);
            var u = Avx.LoadVector256(x0 + i);
            a00 = Fma.MultiplyAdd(u, v0, a00);
            a01 = Fma.MultiplyAdd(u, v1, a01);
            u = Avx.LoadVector256(x1 + i);
            a10 = Fma.MultiplyAdd(u, v0, a10);
            a11 = Fma.MultiplyAdd(u, v1, a11);
            u = Avx.LoadVector256(x2 + i);
            a20 = Fma.MultiplyAdd(u, v0, a20);
            a21 = Fma.MultiplyAdd(u, v1, a21);
            u = Avx.LoadVector256(x3 + i);
            a30 = Fma.MultiplyAdd(u, v0, a30);
            a31 = Fma.MultiplyAdd(u, v1, a31);
        }
        float b0 = bias is null ? 0f : bias[j], b1 = bias is null ? 0f : bias[j + 1];
        Span<float> sums = stackalloc float[8];
        sums[0] = Vector256.Sum(a00); sums[1] = Vector256.Sum(a01);
        sums[2] = Vector256.Sum(a10); sums[3] = Vector256.Sum(a11);
        sums[4] = Vector256.Sum(a20); sums[5] = Vector256.Sum(a21);
        sums[6] = Vector256.Sum(a30); sums[7] = Vector256.Sum(a31);
        for (int q = 0; q < rows; q++)
        {
            float* xq = x0 + (long)q * k;
            float s0 = sums[2 * q], s1 = sums[2 * q + 1];
            for (int t = i; t < k; t++)
            {
                s0 += xq[t] * w0[t];
                s1 += xq[t] * w1[t];
            }
            float* yq = y + (long)(r + q) * n + j;
            yq[0] = s0 + b0;
            yq[1] = s1 + b1;
        }
    }

    private static float Dot(float* a, float* b, int k)
    {
        var acc = Vector256<float>.Zero;
        int i = 0;
        for (; i + 8 <= k; i += 8) acc = Fma.MultiplyAdd(Avx.LoadVector256(a + i), Avx.LoadVector256(b + i), acc);
        float s = Vector256.Sum(acc);
        for (; i < k; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>The plain loop (float64 sums): what <see cref="Compute"/> computes.</summary>
    public static void Reference(ReadOnlySpan<float> x, int m, int k, ReadOnlySpan<float> w, int n, ReadOnlySpan<float> bias, Span<float> y)
    {
        for (int r = 0; r < m; r++)
            for (int j = 0; j < n; j++)
            {
                double s = bias.IsEmpty ? 0 : bias[j];
                for (int t = 0; t < k; t++) s += (double)x[r * k + t] * w[j * k + t];
                y[r * n + j] = (float)s;
            }
    }
}
