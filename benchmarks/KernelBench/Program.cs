// Kernel benchmark: the ceilings of the card (device-to-device copy bandwidth, matmul rate, pinned host-to-device copy)
// and, measured in the same run, the kernels of WeakTeacher.CudaKernels against libtorch eager:
//   1. token log-probs forward (GB/s, % of copy bandwidth) and forward+backward vs log_softmax + gather + backward;
//   2. the fused head (hidden @ W^T + log-probs) forward+backward vs eager, and its peak extra memory;
//   3. the DPO-family loss: one launch vs the eager formula's op count, forward+backward time;
//   4. pooled pinned uploads of token batches: GB/s vs the pinned-copy ceiling, managed allocations per batch.
// Usage: dotnet KernelBench.dll --device cuda|cpu [--quick] [--out PATH]
// Writes a markdown report (default benchmarks/results/kernels-<device>-<date>.md) and prints the table.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using TorchSharp;
using WeakTeacher.Benchmarks;
using WeakTeacher.CudaKernels;
using WeakTeacher.CudaKernels.Cuda;
using WeakTeacher.CudaKernels.Memory;
using static TorchSharp.torch;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
var options = BenchOptions.Parse(args);
if (options is null) return 2;

if (options.Cuda)
{
    // CUDA libtorch must be chosen before any other torch call (TorchSharp binds LibTorchSharp once)
    bool torchCuda;
    try { torchCuda = torch.TryInitializeDeviceType(DeviceType.CUDA) && cuda.is_available(); }
    catch (Exception e) when (e is NotSupportedException or InvalidOperationException or DllNotFoundException or TypeInitializationException)
    {
        var reason = (e is TypeInitializationException { InnerException: { } inner } ? inner : e).Message.Split('\n')[0];
        Console.Error.WriteLine($"--device cuda: TorchSharp could not load a CUDA libtorch: {reason}");
        return 3;
    }
    if (!torchCuda)
    {
        Console.Error.WriteLine("--device cuda: libtorch reports no CUDA device (is LD_LIBRARY_PATH pointing at a CUDA PyTorch's torch/lib? " +
                                "bash .device/on-device.sh sets it). CUDA driver binding: " +
                                (CudaRuntime.IsAvailable ? "available" : CudaRuntime.UnavailableReason));
        return 3;
    }
    if (!CudaRuntime.IsAvailable)
    {
        Console.Error.WriteLine($"--device cuda: the kernels cannot run: {CudaRuntime.UnavailableReason}");
        return 3;
    }
}

if (options.Skinny) return SkinnyBench.Run(options.Quick);
if (options.Probe is not null) return MemoryProbe.Run(options);
return Bench.Run(options);

namespace WeakTeacher.Benchmarks
{
    internal sealed record BenchOptions(bool Cuda, bool Quick, string? Out, string? Probe, int ProbeHidden, bool Skinny = false)
    {
        internal static BenchOptions? Parse(string[] args)
        {
            bool cudaDevice = false, quick = false, skinny = false;
            string? output = null, probe = null;
            int probeHidden = 768;
            for (int i = 0; i < args.Length; i++)
            {
                string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
                switch (args[i])
                {
                    case "--device":
                        var d = Next();
                        if (d is not ("cuda" or "cpu")) { Console.Error.WriteLine($"--device {d}: use cuda or cpu"); return null; }
                        cudaDevice = d == "cuda";
                        break;
                    case "--quick": quick = true; break;
                    case "--skinny": skinny = true; break;   // the CPU few-row products (SkinnyBench)
                    case "--out": output = Next(); break;
                    case "--probe": probe = Next(); break;          // internal: one memory measurement in a fresh process
                    case "--probe-hidden": probeHidden = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "-h" or "--help":
                        Console.WriteLine("dotnet KernelBench.dll --device cuda|cpu [--quick] [--out PATH] | --skinny [--quick]");
                        return null;
                    default:
                        Console.Error.WriteLine($"unknown argument {args[i]}; usage: --device cuda|cpu [--quick] [--out PATH]");
                        return null;
                }
            }
            return new BenchOptions(cudaDevice, quick, output, probe, probeHidden, skinny);
        }
    }

    /// <summary>Times a body: CUDA events on stream 0 (the stream torch and the kernels use) or a stopwatch on CPU.
    /// Each iteration runs in its own dispose scope so freed tensors go back to the allocator at once.</summary>
    internal sealed class DeviceTimer(bool gpu)
    {
        public double Milliseconds(Action body, int warmup, int iterations)
        {
            for (int i = 0; i < warmup; i++) { using var s = NewDisposeScope(); body(); }
            Synchronize();
            if (!gpu)
            {
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < iterations; i++) { using var s = NewDisposeScope(); body(); }
                return sw.Elapsed.TotalMilliseconds / iterations;
            }
            var device = CudaRuntime.Device(0);
            var driver = device.Driver;
            IntPtr start = driver.EventCreate(0), end = driver.EventCreate(0);
            try
            {
                driver.EventRecord(start, IntPtr.Zero);
                for (int i = 0; i < iterations; i++) { using var s = NewDisposeScope(); body(); }
                driver.EventRecord(end, IntPtr.Zero);
                driver.EventSynchronize(end);
                return driver.EventElapsedMilliseconds(start, end) / iterations;
            }
            finally { driver.EventDestroy(start); driver.EventDestroy(end); }
        }

        public void Synchronize()
        {
            if (gpu) CudaRuntime.Device(0).Synchronize();
        }
    }

    internal sealed record Row(string Group, string Case, string Shape, double Ms, string Rate, string VsCeiling, string VsEager, string Note);

    internal static class Bench
    {
        internal static int Run(BenchOptions o)
        {
            bool gpu = o.Cuda;
            var device = gpu ? CUDA : CPU;
            var timer = new DeviceTimer(gpu);
            var rows = new List<Row>();
            var notes = new List<string>();
            var total = Stopwatch.StartNew();
            manual_seed(20261127);
            KernelSettings.ValidateIndices = false;   // the range check costs a device-to-host sync; inputs here are valid by construction
            int warm = gpu ? 3 : 1, iters = gpu ? (o.Quick ? 5 : 20) : (o.Quick ? 2 : 5);

            string card = gpu ? CudaRuntime.Device(0).Name : CpuName();
            if (gpu) { var d = CudaRuntime.Device(0); d.Warmup(); notes.Add($"kernels for {d.Architecture}: {d.CompiledCount} file(s) compiled by NVRTC in this run (0 = all from the disk cache {KernelCache.Directory})"); }
            Console.WriteLine($"KernelBench on {card} ({(gpu ? "cuda" : $"cpu, {get_num_threads()} threads")}), {(o.Quick ? "quick" : "full")} shapes");

            // ---- ceilings ----
            long copyElems = gpu ? (o.Quick ? 1L << 26 : 1L << 28) : 1L << 24;          // float32: 256 MiB / 1 GiB on GPU, 64 MiB on CPU
            var src = rand(copyElems, ScalarType.Float32, device);
            var dst = empty_like(src);
            double copyMs = timer.Milliseconds(() => dst.copy_(src), warm, iters);
            double copyGBs = 2.0 * copyElems * 4 / (copyMs * 1e6);                      // bytes read + written per second
            rows.Add(new("ceiling", "device copy (tensor.copy_)", $"{copyElems * 4 >> 20} MiB f32", copyMs, $"{Num(copyGBs)} GB/s", "", "", "read + written bytes"));
            src.Dispose(); dst.Dispose();

            int mm = gpu ? (o.Quick ? 4096 : 8192) : 512;
            var mmType = gpu ? ScalarType.BFloat16 : ScalarType.Float32;
            var ma = randn([mm, mm], mmType, device);
            var mb = randn([mm, mm], mmType, device);
            double mmMs = timer.Milliseconds(() => ma.mm(mb), warm, iters);
            double tflops = 2.0 * mm * (double)mm * mm / (mmMs * 1e9);
            rows.Add(new("ceiling", "matmul", $"{mm}^3 {Name(mmType)}", mmMs, $"{Num(tflops)} TFLOP/s", "", "", ""));
            ma.Dispose(); mb.Dispose();

            // ---- kernel 1: token log-probs ----
            long n1 = gpu ? (o.Quick ? 4096 : 16384) : 256, v1 = 50272;
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                using var scope = NewDisposeScope();
                var logits = (randn([n1, v1], ScalarType.Float32, device) * 3).to(dtype);
                var (labels, seqIndex, s) = Rows(n1, v1, device);
                double bytes = (double)n1 * v1 * logits.ElementSize;
                double fwdMs = timer.Milliseconds(() => { using var ng = no_grad(); TokenLogProbs.Compute(logits, labels, seqIndex, s); }, warm, iters);
                double eagerFwdMs = timer.Milliseconds(() => { using var ng = no_grad(); Eager(logits, labels, seqIndex, s); }, warm, iters);
                double gbs = bytes / (fwdMs * 1e6);
                rows.Add(new("1 log-probs", $"forward {Name(dtype)}", $"[{n1}, {v1}]", fwdMs, $"{Num(gbs)} GB/s", $"{100 * gbs / copyGBs:F0}% of copy", $"{eagerFwdMs / fwdMs:F2}x", $"eager fwd {eagerFwdMs:F3} ms"));

                var leaf = logits.detach().requires_grad_(true);
                double fbMs = timer.Milliseconds(() =>
                {
                    var (_, seq) = TokenLogProbs.Compute(leaf, labels, seqIndex, s);
                    autograd.grad([seq.sum()], [leaf]);
                }, warm, iters);
                double eagerFbMs = timer.Milliseconds(() =>
                {
                    var (_, seq) = Eager(leaf, labels, seqIndex, s);
                    autograd.grad([seq.sum()], [leaf]);
                }, warm, iters);
                double fbGbs = 3 * bytes / (fbMs * 1e6);   // forward read + backward read and write
                rows.Add(new("1 log-probs", $"fwd+bwd {Name(dtype)}", $"[{n1}, {v1}]", fbMs, $"{Num(fbGbs)} GB/s", $"{100 * fbGbs / copyGBs:F0}% of copy", $"{eagerFbMs / fbMs:F2}x", $"eager fwd+bwd {eagerFbMs:F3} ms; goal >= 3x"));

                // agreement with float32 eager on the first rows (sanity, not the test)
                using var ng2 = no_grad();
                long check = Math.Min(n1, 512);
                var oursToken = TokenLogProbs.Compute(logits.narrow(0, 0, check), labels.narrow(0, 0, check), seqIndex.narrow(0, 0, check), s).TokenLogps;
                var eagerToken = Eager(logits.narrow(0, 0, check).to(ScalarType.Float32), labels.narrow(0, 0, check), seqIndex.narrow(0, 0, check), s).Token;
                notes.Add($"kernel 1 {Name(dtype)}: max |token log-prob - float32 eager| over {check} rows = {(oursToken - eagerToken).abs().max().item<float>():G3}");
            }

            // ---- kernel 2: fused head ----
            // CPU: the response rows of a 4 pairs x 128 DPO step at OPT-125M's head (the quick run: a small one)
            long n2 = gpu ? (o.Quick ? 4096 : 16384) : (o.Quick ? 128 : 512), v2 = gpu || !o.Quick ? 50272 : 8192;
            var headType = gpu ? ScalarType.BFloat16 : ScalarType.Float32;
            foreach (int h in gpu ? new[] { 768, 2048 } : o.Quick ? new[] { 64 } : new[] { 768 })
            {
                using var scope = NewDisposeScope();
                var hidden = (randn([n2, h], ScalarType.Float32, device) * 0.5).to(headType).requires_grad_(true);
                var weight = (randn([v2, h], ScalarType.Float32, device) * 0.05).to(headType).requires_grad_(true);
                var (labels, seqIndex, s) = Rows(n2, v2, device);
                double fusedMs = timer.Milliseconds(() =>
                {
                    var (_, seq) = FusedHeadLogProbs.Compute(hidden, weight, labels, seqIndex, s);
                    autograd.grad([seq.sum()], [hidden, weight]);
                }, warm, iters);
                double eagerMs = timer.Milliseconds(() =>
                {
                    var (_, seq) = Eager(hidden.mm(weight.t()), labels, seqIndex, s);
                    autograd.grad([seq.sum()], [hidden, weight]);
                }, warm, iters);
                double flops = 6.0 * n2 * v2 * h + 2.0 * n2 * v2 * h;   // fwd matmul, bwd recompute + dH + dW
                if (!gpu)
                {
                    // the CPU keeps the logits for the backward when they fit (no recompute): both paths alternated
                    // (a busy machine's load shifts between runs), medians
                    long budget = FusedHeadLogProbs.KeptLogitsElements;
                    var keptTimes = new List<double>();
                    var recomputeTimes = new List<double>();
                    try
                    {
                        for (int round = 0; round < iters; round++)
                            foreach (bool keep in new[] { true, false })
                            {
                                FusedHeadLogProbs.KeptLogitsElements = keep ? budget : 0;
                                (keep ? keptTimes : recomputeTimes).Add(timer.Milliseconds(() =>
                                {
                                    var (_, seq) = FusedHeadLogProbs.Compute(hidden, weight, labels, seqIndex, s);
                                    autograd.grad([seq.sum()], [hidden, weight]);
                                }, round == 0 ? 1 : 0, 1));
                            }
                    }
                    finally { FusedHeadLogProbs.KeptLogitsElements = budget; }
                    double keptMs = keptTimes.Order().ElementAt(iters / 2), recomputeMs = recomputeTimes.Order().ElementAt(iters / 2);
                    bool kept = FusedHeadLogProbs.KeepsLogits(n2, v2, headType, DeviceType.CPU, needWeight: true);
                    notes.Add($"kernel 2 H={h} on the CPU, alternated, medians of {iters}: {(kept ? "logits kept for the backward" : "over the kept-logits budget")} " +
                              $"{keptMs:F1} ms, the backward recomputing them {recomputeMs:F1} ms ({recomputeMs / keptMs:F2}x)");
                }
                string memory = "";
                if (gpu)
                {
                    long fusedExtra = MemoryProbe.Measure("fused", h, o), eagerExtra = MemoryProbe.Measure("eager", h, o);
                    memory = fusedExtra < 0 || eagerExtra < 0 ? "memory probe failed"
                        : $"peak extra {fusedExtra / 1048576.0:F0} MiB vs eager {eagerExtra / 1048576.0:F0} MiB = 1/{(double)eagerExtra / Math.Max(fusedExtra, 1):F1} (goal <= 1/8)";
                }
                else
                {
                    long chunk = FusedHeadLogProbs.AutoChunkRows(n2, v2);
                    memory = $"by sizes: fused block {chunk}x{v2}, eager 2+ x [{n2}, {v2}]";
                }
                rows.Add(new("2 fused head", $"fwd+bwd H={h} {Name(headType)}", $"N={n2} V={v2}", fusedMs, $"{Num(flops / (fusedMs * 1e9))} TFLOP/s", $"{100 * flops / (fusedMs * 1e9) / tflops:F0}% of matmul", $"{eagerMs / fusedMs:F2}x", memory));
            }
            if (gpu) notes.Add("kernel 2 peak extra memory: measured in a fresh process per case with cuMemGetInfo (total - free) after one forward+backward, " +
                               "minus the same before it and minus the gradients' own size; TorchSharp has no torch.cuda memory statistics, and the caching " +
                               "allocator keeps its peak reserved, so this is the peak reserved by the allocator (including its rounding)");

            // ---- kernel 3: DPO-family loss ----
            {
                using var scope = NewDisposeScope();
                const int b = 64;
                var pc = (randn(b, ScalarType.Float32, device) * 4 - 30).requires_grad_(true);
                var pr = (randn(b, ScalarType.Float32, device) * 4 - 30).requires_grad_(true);
                var rc = randn(b, ScalarType.Float32, device) * 4 - 30;
                var rr = randn(b, ScalarType.Float32, device) * 4 - 30;
                long launches0 = CudaOps.LaunchCount;
                PreferenceScoring.DpoLoss(pc, pr, rc, rr, PreferenceLossType.Sigmoid, 0.1);
                long ourLaunches = CudaOps.LaunchCount - launches0;
                double oursMs = timer.Milliseconds(() =>
                {
                    var r = PreferenceScoring.DpoLoss(pc, pr, rc, rr, PreferenceLossType.Sigmoid, 0.1);
                    autograd.grad([r.Loss], [pc, pr]);
                }, warm * 5, iters * 10);
                int eagerOps = 0;
                double eagerMs = timer.Milliseconds(() =>
                {
                    var (loss, ops) = EagerDpo(pc, pr, rc, rr, 0.1);
                    eagerOps = ops;
                    autograd.grad([loss], [pc, pr]);
                }, warm * 5, iters * 10);
                rows.Add(new("3 DPO loss", "sigmoid fwd+bwd", $"B={b}", oursMs, gpu ? $"{ourLaunches} kernel launch fwd" : "reference path", "", $"{eagerMs / oursMs:F2}x",
                    $"eager forward: {eagerOps} torch ops (about one launch each) + its backward"));
            }

            // ---- pinned pool: token batch uploads ----
            {
                using var pool = new PinnedMemoryPool(1L << 30);
                long ceilingBytes = gpu ? 256L << 20 : 64L << 20;
                var big = empty(ceilingBytes / 8, ScalarType.Int64, device);
                using (var owner = pool.Rent<long>((int)(ceilingBytes / 8)))
                {
                    owner.Span.Fill(1);
                    double ceilMs = timer.Milliseconds(() => HostTransfers.Upload(owner, big), 1, 5);
                    double ceilGBs = ceilingBytes / (ceilMs * 1e6);
                    rows.Add(new("ceiling", pool.IsPageLocked ? "pinned host->device copy" : "host copy (ordinary memory)", $"{ceilingBytes >> 20} MiB", ceilMs, $"{Num(ceilGBs)} GB/s", "", "", pool.IsPageLocked ? "cuMemcpyHtoDAsync" : "memcpy"));

                    foreach (var (batch, seqLen) in new[] { (64, 2048), (256, 2048) })
                    {
                        int count = batch * seqLen;
                        var target = empty([batch, seqLen], ScalarType.Int64, device);
                        var inFlight = new Queue<PinnedMemoryOwner<long>>();
                        void OneBatch(int i)
                        {
                            var tokens = pool.Rent<long>(count);
                            tokens.Span[0] = i;                           // the tokenizer writes straight into the rented span
                            HostTransfers.Upload(tokens, target);
                            inFlight.Enqueue(tokens);
                            if (inFlight.Count > 2) inFlight.Dequeue().Dispose();   // double-buffered: at most 2 copies in flight
                        }
                        for (int i = 0; i < 10; i++) OneBatch(i);
                        timer.Synchronize();
                        int batches = gpu ? 200 : 50;
                        var sw = new Stopwatch();
                        long alloc0 = GC.GetAllocatedBytesForCurrentThread();
                        sw.Start();
                        for (int i = 0; i < batches; i++) OneBatch(i);
                        timer.Synchronize();
                        sw.Stop();
                        long allocated = GC.GetAllocatedBytesForCurrentThread() - alloc0;
                        double ms = sw.Elapsed.TotalMilliseconds / batches;
                        while (inFlight.Count > 0) inFlight.Dequeue().Dispose();
                        double gbs = count * 8.0 / (ms * 1e6);
                        rows.Add(new("4 pinned pool", "token batch upload", $"[{batch}, {seqLen}] int64 ({count * 8 >> 20} MiB)", ms, $"{Num(gbs)} GB/s",
                            $"{100 * gbs / ceilGBs:F0}% of copy", "", $"{(double)allocated / batches:F0} bytes allocated per batch (goal 0); rent + upload + return, 2 in flight"));
                    }
                }
                big.Dispose();
            }

            Console.WriteLine();
            var table = Table(rows);
            Console.WriteLine(table);
            foreach (var note in notes) Console.WriteLine("note: " + note);
            Console.WriteLine($"total {total.Elapsed.TotalSeconds:F1} s");

            var path = o.Out ?? Path.Combine("benchmarks", "results", $"kernels-{(gpu ? "cuda" : "cpu")}-{DateTime.UtcNow:yyyy-MM-dd}.md");
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
            var md = new StringBuilder();
            md.AppendLine($"# Kernel benchmark, {(gpu ? "CUDA" : "CPU")}{(o.Quick ? " (quick shapes)" : "")}");
            md.AppendLine();
            md.AppendLine($"- card: {card}");
            md.AppendLine($"- date: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
            md.AppendLine($"- ceilings measured in this run: copy {Num(copyGBs)} GB/s (read + written), matmul {Num(tflops)} TFLOP/s ({Name(mmType)} {mm}^3)");
            if (gpu) md.AppendLine($"- CUDA driver {CudaRuntime.Device(0).Driver.DriverVersion()}, {CudaRuntime.Device(0).Architecture}; timings by CUDA events on stream 0, mean of {iters} iterations after {warm} warm-up");
            else md.AppendLine($"- CPU reference paths (no GPU): {get_num_threads()} torch threads; stopwatch, mean of {iters} iterations. " +
                               "A smoke test of the harness only: the goals (copy-bandwidth share, speed-ups, memory) apply to the CUDA run");
            md.AppendLine($"- command: `dotnet KernelBench.dll {string.Join(' ', Environment.GetCommandLineArgs().Skip(1))}`");
            md.AppendLine();
            md.AppendLine(table);
            md.AppendLine();
            foreach (var note in notes) md.AppendLine($"- {note}");
            File.WriteAllText(path, md.ToString());
            Console.WriteLine($"wrote {path}");
            return 0;
        }

        internal static string Num(double v) => v >= 100 ? v.ToString("F0") : v >= 10 ? v.ToString("F1") : v.ToString("F2");

        internal static string Name(ScalarType t) => t switch { ScalarType.Float32 => "f32", ScalarType.BFloat16 => "bf16", _ => t.ToString() };

        /// <summary>Labels with every 8th row masked, 8 rows per... sequences of 512 rows.</summary>
        internal static (Tensor Labels, Tensor SeqIndex, int Sequences) Rows(long n, long vocab, Device device)
        {
            int sequences = (int)Math.Max(1, n / 512);
            var labels = randint(0, vocab, [n], dtype: ScalarType.Int64, device: device);
            var position = arange(n, ScalarType.Int64, device);
            labels = labels.masked_fill((position % 8).eq(0), -100);
            var seqIndex = position.div(512, rounding_mode: RoundingMode.floor).clamp_max(sequences - 1);
            return (labels, seqIndex, sequences);
        }

        /// <summary>libtorch eager: log_softmax + gather, masked, summed per sequence (what the kernels replace).</summary>
        internal static (Tensor Token, Tensor Sequence) Eager(Tensor logits, Tensor labels, Tensor seqIndex, int sequences)
        {
            var ignored = labels.eq(-100);
            var token = logits.log_softmax(1).gather(1, labels.masked_fill(ignored, 0).unsqueeze(1)).squeeze(1).masked_fill(ignored, 0);
            var sequence = zeros(sequences, token.dtype, logits.device).index_add(0, seqIndex, token, 1);
            return (token, sequence);
        }

        /// <summary>TRL's sigmoid DPO loss written out op by op, counting the torch ops of the forward.</summary>
        internal static (Tensor Loss, int Ops) EagerDpo(Tensor pc, Tensor pr, Tensor rc, Tensor rr, double beta)
        {
            var piLogratios = pc - pr;                                  // 1
            var refLogratios = rc - rr;                                 // 2
            var logits = piLogratios - refLogratios;                    // 3
            var z = logits * beta;                                      // 4
            var losses = -nn.functional.logsigmoid(z);                  // 5, 6
            var loss = losses.mean();                                   // 7
            using var ng = no_grad();
            var chosen = (pc - rc) * beta;                              // 8, 9
            var rejected = (pr - rr) * beta;                            // 10, 11
            var accuracies = chosen.gt(rejected).to(ScalarType.Float32); // 12, 13
            var margins = chosen - rejected;                            // 14
            GC.KeepAlive(accuracies); GC.KeepAlive(margins);
            return (loss, 14);
        }

        internal static string Table(List<Row> rows)
        {
            var sb = new StringBuilder();
            sb.AppendLine("| group | case | shape | ms | rate | vs ceiling | speed-up vs eager | note |");
            sb.AppendLine("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |");
            foreach (var r in rows)
                sb.AppendLine($"| {r.Group} | {r.Case} | {r.Shape} | {r.Ms:F3} | {r.Rate} | {r.VsCeiling} | {r.VsEager} | {r.Note} |");
            return sb.ToString().TrimEnd();
        }

        private static string CpuName()
        {
            try
            {
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
            }
            catch (IOException) { }
            return "CPU";
        }
    }

    /// <summary>Peak extra device memory of one fused-head or eager forward+backward, measured in a fresh process (the
    /// caching allocator never gives memory back, so total - free after the run is its peak reservation).</summary>
    internal static class MemoryProbe
    {
        internal static long Measure(string which, int hiddenSize, BenchOptions o)
        {
            var exe = Environment.ProcessPath!;
            var info = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            if (Path.GetFileNameWithoutExtension(exe) == "dotnet") info.ArgumentList.Add(typeof(MemoryProbe).Assembly.Location);
            foreach (var a in new[] { "--device", "cuda", "--probe", which, "--probe-hidden", hiddenSize.ToString(CultureInfo.InvariantCulture) })
                info.ArgumentList.Add(a);
            if (o.Quick) info.ArgumentList.Add("--quick");
            using var process = Process.Start(info)!;
            string stdout = process.StandardOutput.ReadToEnd();
            string stderr = process.StandardError.ReadToEnd();
            process.WaitForExit();
            foreach (var line in stdout.Split('\n'))
                if (line.StartsWith("PROBE_EXTRA_BYTES=", StringComparison.Ordinal))
                    return long.Parse(line["PROBE_EXTRA_BYTES=".Length..].Trim(), CultureInfo.InvariantCulture);
            Console.Error.WriteLine($"memory probe {which} H={hiddenSize} failed (exit {process.ExitCode}): {stderr.Trim()}");
            return -1;
        }

        internal static int Run(BenchOptions o)
        {
            KernelSettings.ValidateIndices = false;
            var device = CUDA;
            var cudaDevice = CudaRuntime.Device(0);
            long n = o.Quick ? 4096 : 16384, v = 50272, h = o.ProbeHidden;
            var hidden = (randn([n, h], ScalarType.Float32, device) * 0.5).to(ScalarType.BFloat16).requires_grad_(true);
            var weight = (randn([v, h], ScalarType.Float32, device) * 0.05).to(ScalarType.BFloat16).requires_grad_(true);
            var (labels, seqIndex, s) = Bench.Rows(n, v, device);
            cudaDevice.Warmup();
            cudaDevice.Synchronize();
            var (free0, total) = cudaDevice.MemoryInfo();
            long gradientBytes = (n * h + v * h) * 2;   // dH and dW themselves are results, not working memory
            Tensor[] grads;
            if (o.Probe == "fused")
            {
                var (_, seq) = FusedHeadLogProbs.Compute(hidden, weight, labels, seqIndex, s);
                grads = autograd.grad([seq.sum()], [hidden, weight]).ToArray();
            }
            else
            {
                var (_, seq) = Bench.Eager(hidden.mm(weight.t()), labels, seqIndex, s);
                grads = autograd.grad([seq.sum()], [hidden, weight]).ToArray();
            }
            cudaDevice.Synchronize();
            var (free1, _) = cudaDevice.MemoryInfo();
            GC.KeepAlive(grads);
            long extra = (long)(free0 - free1) - gradientBytes;
            Console.WriteLine($"PROBE_EXTRA_BYTES={extra}");
            Console.WriteLine($"probe {o.Probe} H={h}: total {total >> 20} MiB, used before {(total - free0) >> 20} MiB, after {(total - free1) >> 20} MiB");
            return 0;
        }
    }
}
