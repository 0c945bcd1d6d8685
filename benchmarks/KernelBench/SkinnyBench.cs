using System.Diagnostics;
using System.Globalization;
using WeakTeacher.CudaKernels;
using static TorchSharp.torch;

namespace WeakTeacher.Benchmarks;

/// <summary>
/// KernelBench --skinny: the decode step's few-row products (OPT-125M's at 8 rows) through <see cref="SkinnyProduct"/>
/// at 1 and all threads, OpenBLAS and libtorch, as GB/s of weight read (the bound) against a plain streaming read of the
/// same bytes, and the largest difference from the float64 reference.
/// </summary>
internal static class SkinnyBench
{
    public static unsafe int Run(bool quick)
    {
        int threads = get_num_threads();
        Console.WriteLine($"few-row products, {threads} threads; GB/s = weight bytes / time (median of {(quick ? 5 : 21)}); read = torch sum over the weight");
        Console.WriteLine("| rows x in x out | skinny 1 thread | skinny | OpenBLAS | torch | read | max rel. diff |");
        Console.WriteLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var (m, k, n) in new[] { (8, 768, 50272), (8, 768, 3072), (8, 3072, 768), (8, 768, 768), (1, 768, 50272) })
        {
            using var x = randn([m, k]);
            using var w = randn([n, k]);
            using var y = empty([m, n]);
            float* px = (float*)WeakTeacher.CudaKernels.Native.TorchNative.DataPointer(x), pw = (float*)WeakTeacher.CudaKernels.Native.TorchNative.DataPointer(w),
                py = (float*)WeakTeacher.CudaKernels.Native.TorchNative.DataPointer(y);
            double bytes = 4.0 * n * k;
            double Rate(Action body)
            {
                body();
                var times = new List<double>();
                for (int i = 0; i < (quick ? 5 : 21); i++)
                {
                    var sw = Stopwatch.StartNew();
                    body();
                    times.Add(sw.Elapsed.TotalSeconds);
                }
                times.Sort();
                return bytes / times[times.Count / 2] / 1e9;
            }
            double one = Rate(() => SkinnyProduct.Compute(px, m, k, pw, n, null, py, 1));
            double all = Rate(() => SkinnyProduct.Compute(px, m, k, pw, n, null, py, threads));
            bool skinny = HostBlas.Skinny;
            HostBlas.Skinny = false;
            double blas = Rate(() => { using var r = HostBlas.Linear(x, w); });
            HostBlas.Skinny = skinny;
            double torchRate = Rate(() => { using var r = nn.functional.linear(x, w); });
            double read = Rate(() => { using var s = w.sum(); });
            using var expected = nn.functional.linear(x.to(ScalarType.Float64), w.to(ScalarType.Float64));
            SkinnyProduct.Compute(px, m, k, pw, n, null, py, threads);
            double diff = (y.to(ScalarType.Float64) - expected).abs().max().item<double>() / expected.abs().max().item<double>();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {m} x {k} x {n} | {one:F1} | {all:F1} | {blas:F1} | {torchRate:F1} | {read:F1} | {diff:G2} |"));
        }
        return 0;
    }
}
