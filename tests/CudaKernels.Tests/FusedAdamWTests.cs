using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>The one-pass AdamW update (<see cref="FusedAdamW"/>) against its plain loop and against the op-by-op torch
/// update TrainingOptimizer applies elsewhere, on random tensors over several steps.</summary>
public sealed class FusedAdamWTests
{
    [Theory]
    [InlineData(1_000_003, 0.0)]   // several parts, a tail that is not a multiple of 8
    [InlineData(13, 0.01)]
    public void MatchesThePlainLoopAndTorchsOpByOpUpdate(int count, double weightDecay)
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported, "no AVX2 + FMA on this CPU");
        var gen = new TorchSharp.torch.Generator(5);
        using var p = randn([count], generator: gen);
        using var m = zeros([count]);
        using var v = zeros([count]);
        using var pt = p.clone();
        using var mt = m.clone();
        using var vt = v.clone();
        var pr = p.data<float>().ToArray();
        var mr = new float[count];
        var vr = new float[count];
        const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8;
        for (int step = 1; step <= 3; step++)
        {
            using var g = randn([count], generator: gen);
            double c1 = 1 - Math.Pow(b1, step), c2 = 1 - Math.Pow(b2, step);
            var c = new FusedAdamW.Coefficients((float)(1 - lr * weightDecay), (float)(1 - b1), (float)b2, (float)(1 - b2), (float)Math.Sqrt(c2), (float)eps, (float)(-lr / c1));
            Assert.True(FusedAdamW.Serves(p, g, m, v));
            FusedAdamW.Step(p, g, m, v, c);
            FusedAdamW.Reference(pr, g.data<float>().ToArray(), mr, vr, c);
            // torch.optim.AdamW's single-tensor update, op by op
            pt.mul_(1 - lr * weightDecay);
            mt.lerp_(g, full([], 1 - b1));
            vt.mul_(b2).addcmul_(g, g, 1 - b2);
            using var denominator = vt.sqrt().div_(Math.Sqrt(c2)).add_(eps);
            pt.addcdiv_(mt, denominator, -lr / c1);
        }
        Assert.True(p.allclose(tensor(pr), rtol: 1e-6, atol: 1e-7), "FusedAdamW differs from its plain loop");
        Assert.True(p.allclose(pt, rtol: 1e-6, atol: 1e-6), $"FusedAdamW differs from torch's op-by-op update by {(p - pt).abs().max().item<float>()}");
        Assert.True(m.allclose(mt, rtol: 1e-6, atol: 1e-7) && v.allclose(vt, rtol: 1e-5, atol: 1e-9), "the moments differ from torch's");
    }

    [Fact]
    public void OtherTensorsAreNotServed()
    {
        using var p = randn([16]);
        using var g = randn([16]);
        using var m = zeros([16]);
        Assert.False(FusedAdamW.Serves(p, g, m, zeros([16], ScalarType.Float64)));
        Assert.False(FusedAdamW.Serves(p, randn([4, 8]).t(), m, zeros([16])));
        Assert.Throws<ArgumentException>(() => FusedAdamW.Step(p, g, m, zeros([15]), default));
    }
}
