using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using WeakTeacher.CudaKernels.Native;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// One AdamW update of a float32 CPU parameter in a single pass over p, g, m and v, in place (torch.optim.AdamW's
/// single-tensor formula, the one TrainingOptimizer applies op by op elsewhere):
/// p = p (1 - lr wd); m = m + (1 - b1)(g - m); v = b2 v + (1 - b2) g^2; p = p + s m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// with s = -lr / (1 - b1^t). Memory-bound: 16 bytes read and 12 written per element, where the op-by-op update makes
/// six passes and a temporary. AVX2 + FMA, split over libtorch's threads (<see cref="TorchThreads"/>); <see cref="Reference"/>
/// is the plain loop it equals up to float32 rounding (fused multiply-adds).
/// </summary>
public static unsafe class FusedAdamW
{
    public readonly record struct Coefficients(float Decay, float OneMinusBeta1, float Beta2, float OneMinusBeta2, float Correction2Sqrt, float Epsilon, float StepSize);

    /// <summary>Contiguous float32 CPU tensors of one size, on a CPU with AVX2 + FMA.</summary>
    public static bool Serves(Tensor parameter, Tensor grad, Tensor expAvg, Tensor expAvgSq) =>
        Avx2.IsSupported && Fma.IsSupported
        && new[] { parameter, grad, expAvg, expAvgSq }.All(t => t.device_type == TorchSharp.DeviceType.CPU && t.dtype == ScalarType.Float32 && t.is_contiguous())
        && grad.numel() == parameter.numel() && expAvg.numel() == parameter.numel() && expAvgSq.numel() == parameter.numel();

    public static void Step(Tensor parameter, Tensor grad, Tensor expAvg, Tensor expAvgSq, Coefficients c)
    {
        if (!Serves(parameter, grad, expAvg, expAvgSq))
            throw new ArgumentException("FusedAdamW.Step takes contiguous float32 CPU tensors of one size on a CPU with AVX2 and FMA.");
        var job = new Job
        {
            P = (float*)TorchNative.DataPointer(parameter), G = (float*)TorchNative.DataPointer(grad),
            M = (float*)TorchNative.DataPointer(expAvg), V = (float*)TorchNative.DataPointer(expAvgSq),
            Count = parameter.numel(), C = c,
        };
        // parts of at least 64 Ki elements (below that a thread costs more than it saves)
        int parts = (int)Math.Clamp(Math.Min(get_num_threads(), job.Count / 65536), 1, 64);
        TorchThreads.For(parts, &RunPart, &job);
        GC.KeepAlive(parameter);
        GC.KeepAlive(grad);
        GC.KeepAlive(expAvg);
        GC.KeepAlive(expAvgSq);
    }

    private struct Job
    {
        public float* P, G, M, V;
        public long Count;
        public Coefficients C;
    }

    private static void RunPart(void* data, int part, int parts)
    {
        ref var job = ref *(Job*)data;
        // 8-element aligned ranges
        long start = job.Count * part / parts & ~7L, end = part == parts - 1 ? job.Count : job.Count * (part + 1) / parts & ~7L;
        Range(job.P, job.G, job.M, job.V, start, end, job.C);
    }

    private static void Range(float* p, float* g, float* m, float* v, long start, long end, Coefficients c)
    {
        var decay = Vector256.Create(c.Decay);
        var w1 = Vector256.Create(c.OneMinusBeta1);
        var b2 = Vector256.Create(c.Beta2);
        var w2 = Vector256.Create(c.OneMinusBeta2);
        var c2 = Vector256.Create(c.Correction2Sqrt);
        var eps = Vector256.Create(c.Epsilon);
        var step = Vector256.Create(c.StepSize);
        long i = start;
        for (; i + 8 <= end; i += 8)
        {
            var gi = Avx.LoadVector256(g + i);
            var mi = Avx.LoadVector256(m + i);
            var vi = Avx.LoadVector256(v + i);
            mi = Fma.MultiplyAdd(w1, Avx.Subtract(gi, mi), mi);
            vi = Fma.MultiplyAdd(Avx.Multiply(w2, gi), gi, Avx.Multiply(vi, b2));
            var denominator = Avx.Add(Avx.Divide(Avx.Sqrt(vi), c2), eps);
            var pi = Avx.Multiply(Avx.LoadVector256(p + i), decay);
            pi = Fma.MultiplyAdd(step, Avx.Divide(mi, denominator), pi);
            Avx.Store(m + i, mi);
            Avx.Store(v + i, vi);
            Avx.Store(p + i, pi);
        }
        for (; i < end; i++) Scalar(ref p[i], g[i], ref m[i], ref v[i], c);
    }

    private static void Scalar(ref float p, float g, ref float m, ref float v, Coefficients c)
    {
        m = MathF.FusedMultiplyAdd(c.OneMinusBeta1, g - m, m);
        v = MathF.FusedMultiplyAdd(c.OneMinusBeta2 * g, g, v * c.Beta2);
        p = MathF.FusedMultiplyAdd(c.StepSize, m / (MathF.Sqrt(v) / c.Correction2Sqrt + c.Epsilon), p * c.Decay);
    }

    /// <summary>The plain loop, element by element: what <see cref="Step"/> computes.</summary>
    public static void Reference(Span<float> p, ReadOnlySpan<float> g, Span<float> m, Span<float> v, Coefficients c)
    {
        for (int i = 0; i < p.Length; i++) Scalar(ref p[i], g[i], ref m[i], ref v[i], c);
    }
}
