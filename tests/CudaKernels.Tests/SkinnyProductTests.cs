namespace WeakTeacher.CudaKernels.Tests;

/// <summary>The decode step's few-row product (<see cref="SkinnyProduct"/>) against its plain float64 loop on random inputs.</summary>
public sealed class SkinnyProductTests
{
    [Theory]
    [InlineData(8, 768, 1001, true, 2)]
    [InlineData(8, 768, 1001, false, 1)]
    [InlineData(1, 13, 7, true, 2)]
    [InlineData(3, 20, 513, false, 2)]
    [InlineData(5, 64, 1, true, 4)]
    [InlineData(7, 9, 600, true, 3)]
    public unsafe void MatchesThePlainLoop(int m, int k, int n, bool withBias, int threads)
    {
        Assert.SkipUnless(SkinnyProduct.Supported, "no AVX2 + FMA on this CPU");
        var random = new Random(m * 1000 + k + n);
        float[] Random(int length) => Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        float[] x = Random(m * k), w = Random(n * k), bias = withBias ? Random(n) : [];
        var ours = Enumerable.Repeat(float.NaN, m * n).ToArray();   // every output written
        var reference = new float[m * n];
        fixed (float* px = x, pw = w, pb = bias, py = ours)
            SkinnyProduct.Compute(px, m, k, pw, n, withBias ? pb : null, py, threads);
        SkinnyProduct.Reference(x, m, k, w, n, bias, reference);
        for (int i = 0; i < ours.Length; i++)
            Assert.True(Math.Abs(ours[i] - reference[i]) <= 1e-5 * k, $"y[{i / n}, {i % n}] = {ours[i]}, expected {reference[i]}");
    }

    [Fact]
    public unsafe void RejectsMoreRowsThanItTakes()
    {
        Assert.SkipUnless(SkinnyProduct.Supported, "no AVX2 + FMA on this CPU");
        var buffer = new float[16 * 4];
        Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            fixed (float* p = buffer) SkinnyProduct.Compute(p, SkinnyProduct.MaxRows + 1, 4, p, 4, null, p, 1);
        });
    }
}
