using System.Diagnostics;
using System.Globalization;
using System.Text;
using WeakTeacher.Engine.Runtime;
using static TorchSharp.torch;

/// <summary>
/// The machine's float32 matmul rate through TorchSharp's libtorch, for the benchmark of record's "share of the matmul
/// rate": a training-sized product (1024 x 768 x 3072) and the decode step's output head (8 x 768 x 50272) in the
/// layouts a caller can choose (h W^T as nn.functional.linear computes it, (W h^T)^T), and the BLAS this process loaded.
/// </summary>
internal static class MatmulRate
{
    /// <summary>The BLAS libraries mapped into this process (from /proc/self/maps): libtorch's own oneMKL is linked into
    /// libtorch_cpu, so "none separate" means MKL inside libtorch.</summary>
    public static string LoadedBlas()
    {
        if (!File.Exists("/proc/self/maps")) return "unknown (no /proc)";
        var names = WeakTeacher.CudaKernels.Native.MappedLibraries.All().Select(Path.GetFileName).OfType<string>()
            .Where(n => n.Contains("blas", StringComparison.OrdinalIgnoreCase) || n.Contains("mkl", StringComparison.OrdinalIgnoreCase)
                        || n.Contains("lapack", StringComparison.OrdinalIgnoreCase) || n.StartsWith("libgomp", StringComparison.Ordinal)
                        || n.StartsWith("libiomp", StringComparison.Ordinal) || n.StartsWith("libtorch_cpu", StringComparison.Ordinal))
            .Distinct().Order().ToList();
        return names.Count == 0 ? "none mapped" : string.Join(", ", names);
    }

    /// <summary>GFLOP/s of <paramref name="product"/> (2 m k n flops), the median of <paramref name="iters"/> timed runs.</summary>
    public static double Rate(Func<Tensor> product, long m, long k, long n, int iters)
    {
        using (var warm = product()) { }
        var times = new List<double>();
        for (int i = 0; i < iters; i++)
        {
            var watch = Stopwatch.StartNew();
            using (var result = product()) { }
            times.Add(watch.Elapsed.TotalSeconds);
        }
        times.Sort();
        return 2.0 * m * k * n / times[times.Count / 2] / 1e9;
    }

    /// <summary>GFLOP/s of the training-sized product 1024 x 768 x 3072 (x W^T, as nn.functional.linear) on <paramref name="device"/>
    /// through libtorch and, on the CPU where it serves the engine's layers, through OpenBLAS (else null).</summary>
    public static (double Torch, double? OpenBlas) TrainingSizedRates(int iters, Device? device = null)
    {
        using var scope = NewDisposeScope();
        var a = randn([1024, 768], device: device);
        var w = randn([3072, 768], device: device);
        double torchRate = Rate(() => nn.functional.linear(a, w), 1024, 768, 3072, iters);
        bool cpu = device is null || device.type == TorchSharp.DeviceType.CPU;
        double? openBlas = cpu && WeakTeacher.CudaKernels.HostBlas.Available
            ? Rate(() => WeakTeacher.CudaKernels.HostBlas.Linear(a, w), 1024, 768, 3072, iters) : null;
        return (torchRate, openBlas);
    }

    /// <summary>The machine's rate for the benchmark of record: the faster of the libraries the engine's products run on.</summary>
    public static double TrainingSized(int iters, Device? device = null)
    {
        var (torchRate, openBlas) = TrainingSizedRates(iters, device);
        return Math.Max(torchRate, openBlas ?? 0);
    }

    public static string Report(Device device, bool quick)
    {
        int iters = quick ? 3 : 15;
        var text = new StringBuilder();
        text.AppendLine($"matmul rate, float32, {TorchDevice.Describe(device)}, {get_num_threads()} threads");
        using var scope = NewDisposeScope();
        var (torchRate, openBlas) = TrainingSizedRates(iters, device);
        text.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"  training-sized 1024 x 768 x 3072 (x W^T) through libtorch: {torchRate:F1} GFLOP/s"));
        if (openBlas is double rate)
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"  training-sized through {WeakTeacher.CudaKernels.HostBlas.Description}: {rate:F1} GFLOP/s"));
        var h = randn([8, 768], device: device);
        var w = randn([50272, 768], device: device);
        var ht = h.t().contiguous();
        text.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"  decode head 8 x 768 x 50272, h W^T (linear): {Rate(() => nn.functional.linear(h, w), 8, 768, 50272, iters):F1} GFLOP/s"));
        text.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"  decode head, W h^T then transposed: {Rate(() => w.mm(ht).t(), 8, 768, 50272, iters):F1} GFLOP/s"));
        text.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"  decode head, W h^T, contiguous [8, V]: {Rate(() => w.mm(ht).t().contiguous(), 8, 768, 50272, iters):F1} GFLOP/s"));
        if (WeakTeacher.CudaKernels.HostBlas.Available)
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"  decode head, h W^T through {WeakTeacher.CudaKernels.HostBlas.Description}: {Rate(() => WeakTeacher.CudaKernels.HostBlas.Linear(h, w), 8, 768, 50272, iters):F1} GFLOP/s"));
        text.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"  decode head as 8 matrix-vector products W h_i: {Rate(() => stack(Enumerable.Range(0, 8).Select(i => w.mv(h[i])).ToArray()), 8, 768, 50272, iters):F1} GFLOP/s"));
        text.AppendLine($"  BLAS mapped by this process: {LoadedBlas()}");
        return text.ToString();
    }
}
