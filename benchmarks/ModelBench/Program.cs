// Model throughput benchmark: an OPT-125M-sized model with random weights; forward tokens/s and greedy
// generation new tokens/s (KV cache). With --suite dpo: the engine doing benchmarks/torch_baseline.py's work (DPO step
// with and without the reference forward, per-stage breakdown, labelling, generation; OPT-125M and OPT-1.3B configs,
// 16 pairs x 512 tokens) in the baseline's table format (DpoBench.cs). With --suite packing: packed (padding_free)
// against padded DPO steps and length-sorted against input-order batches on long-tailed lengths (PackingBench.cs). Usage:
//   dotnet ModelBench.dll [--device cpu|cuda[:N]] [--dtype float32|bfloat16] [--quick] [--out path]
//                         [--threads N] [--torch-lib DIR] [--suite model|dpo|dpo-memory|matmul|generate|generate-profile|packing] [--models opt-125m,opt-1.3b]
//                         [--pairs N --length T --iters N]   (dpo: the shape, the CPU's is 4 x 128; 1 warm-up + N timed)
//   --suite matmul: the matmul rate (training-sized, decode head layouts, OpenBLAS where installed) and the BLAS mapped
//   --suite generate: greedy KV-cache generation 8 x (32 + 64) (--pairs rows, --length new tokens, --iters rounds), OPT-125M
//                     config; with OpenBLAS installed the head through torch and through OpenBLAS alternate
//   --suite generate-profile: the same decode steps' time per part (head, layers' parts, cache writes, host work; GenerateProfile.cs)
//   --suite dpo-memory: the precomputed-reference DPO step's memory per setup point and stage (peak RSS, RSS, malloc in use, live tensors)
//   --suite record: the benchmark of record, the engine against benchmarks/torch_baseline.py on the same weights and
//                   lengths, alternated (RecordBench.cs; ./build.sh bench) -> benchmarks/results/bench-cpu.md
// Writes a markdown report to benchmarks/results/model-<device>-<date>.md (or --out).
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using WeakTeacher.Engine.Generation;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Runtime;
using static TorchSharp.torch;
using Generator = WeakTeacher.Engine.Generation.Generator;

var settings = BenchSettings.Parse(args);
if (settings is null) return 2;

// the device comes first: any other torch call would bind TorchSharp to the CPU libtorch
Device device;
try
{
    device = TorchDevice.Initialize(new RuntimeOptions { Device = settings.Device, TorchLib = settings.TorchLib, Threads = settings.Threads });
}
catch (DeviceUnavailableException e)
{
    Console.Error.WriteLine(e.Message);
    return 3;
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"ModelBench: {e.Message}");
    return 2;
}
Seeds.Set(20261127);
bool gpu = device.type == DeviceType.CUDA;
if (settings.Suite == "record-worker")
{
    if (settings.Spec is null || settings.Result is null) { Console.Error.WriteLine("ModelBench: --suite record-worker needs --spec and --result"); return 2; }
    return RecordBench.Worker(settings.Spec, settings.Result, device);
}
if (settings.Suite == "record")
{
    if (gpu) { Console.Error.WriteLine("ModelBench: --suite record is the CPU benchmark of record (the GPU's is --suite dpo beside torch_baseline.py)"); return 2; }
    return RecordBench.Run(settings, Console.WriteLine);
}
if (settings.Suite == "packing")
{
    string packingTable = PackingBench.Run(device, settings.Quick, Console.WriteLine);
    string packingOut = settings.Out ?? Report.DefaultPath(device, settings.DType).Replace("model-", "packing-", StringComparison.Ordinal);
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(packingOut))!);
    File.WriteAllText(packingOut, $"# ModelBench --suite packing\n\n- Date: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC\n- Machine: {TorchDevice.Describe(device)}\n" +
        $"- Command: `dotnet ModelBench.dll {string.Join(' ', args)}`\n\n{packingTable}");
    Console.WriteLine(packingTable);
    Console.WriteLine($"wrote {packingOut}");
    return 0;
}
if (settings.Suite == "generate-profile")
{
    var profileConfig = DpoBench.Config("opt-125m");
    using var profiled = (OptModel)CausalLMFactory.Create(profileConfig, device, ScalarType.Float32, seed: 1);
    using var profilePrompt = torch.randint(3, profileConfig.VocabSize, new long[] { settings.Pairs ?? 8, 32 }, dtype: ScalarType.Int64, device: device);
    using (Generator.Generate(profiled, profilePrompt, torch.ones_like(profilePrompt), new GenerationOptions { MaxNewTokens = 4 })) { } // warm-up
    Console.Write(GenerateProfile.Run(profiled, profilePrompt, settings.Length ?? 64, settings.Iters ?? 3));
    return 0;
}
if (settings.Suite == "generate")
{
    // the issue's decode shape: greedy, KV cache, 8 x (32 + 64) on OPT-125M (random weights); medians
    var optConfig = DpoBench.Config("opt-125m");
    using var opt = CausalLMFactory.Create(optConfig, device, ScalarType.Float32, seed: 1);
    int rowsGen = settings.Pairs ?? 8, promptGen = 32, newGen = settings.Length ?? 64;
    using var promptIds = torch.randint(3, optConfig.VocabSize, new long[] { rowsGen, promptGen }, dtype: ScalarType.Int64, device: device);
    using var promptOnes = torch.ones(rowsGen, promptGen, dtype: ScalarType.Int64, device: device);
    var options = new GenerationOptions { MaxNewTokens = newGen, MinNewTokens = newGen };
    // with OpenBLAS installed, the head through torch and through OpenBLAS alternate in this one process (the load
    // on a shared machine changes faster than separate runs could follow); the first round of each is the warm-up
    bool configured = WeakTeacher.CudaKernels.HostBlas.Enabled;
    WeakTeacher.CudaKernels.HostBlas.Enabled = true;
    var heads = WeakTeacher.CudaKernels.HostBlas.Available ? new[] { false, true } : new[] { configured };
    var genTimes = heads.ToDictionary(h => h, _ => new List<double>());
    for (int i = 0; i < (settings.Quick ? 2 : settings.Iters ?? 4); i++)
        foreach (bool openBlas in heads)
        {
            WeakTeacher.CudaKernels.HostBlas.Enabled = openBlas;
            var watch = Stopwatch.StartNew();
            using var result = Generator.Generate(opt, promptIds, promptOnes, options);
            if (i > 0) genTimes[openBlas].Add(watch.Elapsed.TotalSeconds);
        }
    foreach (bool openBlas in heads)
    {
        WeakTeacher.CudaKernels.HostBlas.Enabled = openBlas;
        var times = genTimes[openBlas].Order().ToList();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"generation {rowsGen} x ({promptGen} + {newGen}), greedy, KV cache, {get_num_threads()} threads: {rowsGen * newGen / times[times.Count / 2]:F1} new tokens/s " +
            $"(median of {times.Count}{(heads.Length > 1 ? ", alternated" : "")}; runs {string.Join(", ", times.Select(t => (rowsGen * newGen / t).ToString("F1", CultureInfo.InvariantCulture)))}); head product: {WeakTeacher.CudaKernels.HostBlas.Description}"));
    }
    WeakTeacher.CudaKernels.HostBlas.Enabled = configured;
    Console.WriteLine($"BLAS mapped: {MatmulRate.LoadedBlas()}");
    return 0;
}
if (settings.Suite == "matmul")
{
    Console.WriteLine(MatmulRate.Report(device, settings.Quick));
    return 0;
}
if (settings.Suite == "dpo-memory")
{
    string memoryTable = DpoBench.RunMemory(settings.Models[0], device, Console.WriteLine, settings.Pairs ?? 4, settings.Length ?? 128, settings.Iters ?? 2);
    Console.WriteLine(memoryTable);
    if (settings.Out is { } memoryOut) File.WriteAllText(memoryOut, memoryTable);
    return 0;
}
if (settings.Suite == "dpo")
{
    var precision = settings.ScalarType == ScalarType.BFloat16 ? WeakTeacher.Engine.Training.TrainingPrecision.Bf16 : WeakTeacher.Engine.Training.TrainingPrecision.Fp32;
    var clock = Stopwatch.StartNew();
    string table = DpoBench.Run(settings.Models, device, precision, settings.Quick, Console.WriteLine, settings.Pairs, settings.Length, settings.Iters);
    string dpoOut = settings.Out ?? Report.DefaultPath(device, settings.DType).Replace("model-", "engine-dpo-", StringComparison.Ordinal);
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(dpoOut))!);
    File.WriteAllText(dpoOut, $"# ModelBench --suite dpo\n\n- Date: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC\n- Command: `dotnet ModelBench.dll {string.Join(' ', args)}`\n" +
        $"- Total wall time: {clock.Elapsed.TotalSeconds:F0} s\n\n{table}");
    Console.WriteLine(table);
    Console.WriteLine($"wrote {dpoOut} ({clock.Elapsed.TotalSeconds:F0} s)");
    return 0;
}

var config = new ModelConfig
{
    Family = ModelFamily.Opt,
    ModelType = "opt",
    VocabSize = 50272,
    HiddenSize = 768,
    NumHiddenLayers = 12,
    NumAttentionHeads = 12,
    IntermediateSize = 3072,
    MaxPositionEmbeddings = 2048,
    WordEmbedProjDim = 768,
    DoLayerNormBefore = true,
    HiddenAct = "relu",
    BosTokenId = 2,
    EosTokenIds = new[] { 2 },
    PadTokenId = 1,
    TieWordEmbeddings = true,
};

// shapes: what fits the time budget (CPU full run about 3 minutes, --quick under 30 s)
var plan = (gpu, settings.Quick) switch
{
    (true, false) => new Plan(Forward: new[] { (8, 512), (32, 512) }, Generate: new[] { 8, 32 }, PromptTokens: 64, NewTokens: 128, Repeats: 5),
    (true, true) => new Plan(Forward: new[] { (8, 512) }, Generate: new[] { 8 }, PromptTokens: 64, NewTokens: 32, Repeats: 2),
    (false, false) => new Plan(Forward: new[] { (4, 128) }, Generate: new[] { 8, 32 }, PromptTokens: 32, NewTokens: 128, Repeats: 2),
    (false, true) => new Plan(Forward: new[] { (2, 64) }, Generate: new[] { 4 }, PromptTokens: 16, NewTokens: 16, Repeats: 1),
};

Console.WriteLine($"ModelBench: OPT-125M-sized, random weights, device {TorchDevice.Describe(device)}, dtype {settings.DType}");
var total = Stopwatch.StartNew();
using var model = CausalLMFactory.Create(config, device, settings.ScalarType, seed: 1234);
long parameterCount = model.parameters().Sum(p => p.numel());
var rows = new List<ResultRow>();
Tensor RandomTokens(int batch, int length)
    => torch.randint(3, config.VocabSize, new long[] { batch, length }, dtype: ScalarType.Int64, device: device);

foreach (var (batch, length) in plan.Forward)
{
    using var input = RandomTokens(batch, length);
    using var mask = torch.ones(batch, length, dtype: ScalarType.Int64, device: device);
    double Run()
    {
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        TorchDevice.Synchronize(device);
        var watch = Stopwatch.StartNew();
        var logits = model.Logits(input, mask);
        TorchDevice.Synchronize(device);
        return watch.Elapsed.TotalSeconds;
    }
    Run(); // warm-up: kernel selection, allocator growth
    var times = Enumerable.Range(0, plan.Repeats).Select(_ => Run()).ToArray();
    rows.Add(new ResultRow("forward (logits)", $"{batch} x {length}", times, batch * (double)length, "tokens/s"));
    Console.WriteLine(rows[^1].Line());
}

foreach (int batch in plan.Generate)
{
    using var prompt = RandomTokens(batch, plan.PromptTokens);
    using var mask = torch.ones(batch, plan.PromptTokens, dtype: ScalarType.Int64, device: device);
    // MinNewTokens = MaxNewTokens: EOS is suppressed, so every row really produces NewTokens tokens
    double Run(int newTokens)
    {
        var options = new GenerationOptions { MaxNewTokens = newTokens, MinNewTokens = newTokens };
        TorchDevice.Synchronize(device);
        var watch = Stopwatch.StartNew();
        using var result = Generator.Generate(model, prompt, mask, options);
        TorchDevice.Synchronize(device);
        if (result.NumNewColumns != newTokens) throw new InvalidOperationException("generation stopped early");
        return watch.Elapsed.TotalSeconds;
    }
    Run(Math.Min(8, plan.NewTokens)); // warm-up
    var times = Enumerable.Range(0, plan.Repeats).Select(_ => Run(plan.NewTokens)).ToArray();
    rows.Add(new ResultRow("generate (greedy, KV cache)", $"{batch} x ({plan.PromptTokens} + {plan.NewTokens})", times,
        batch * (double)plan.NewTokens, "new tokens/s"));
    Console.WriteLine(rows[^1].Line());
}
total.Stop();

string report = Report.Markdown(settings, device, config, parameterCount, plan, rows, total.Elapsed);
Console.WriteLine();
Console.WriteLine(Report.Table(rows));
string outPath = settings.Out ?? Report.DefaultPath(device, settings.DType);
Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outPath))!);
File.WriteAllText(outPath, report);
Console.WriteLine($"wrote {outPath} ({total.Elapsed.TotalSeconds:F0} s)");
return 0;

internal sealed record Plan((int Batch, int Length)[] Forward, int[] Generate, int PromptTokens, int NewTokens, int Repeats);

internal sealed record ResultRow(string Name, string Shape, double[] Seconds, double Tokens, string Unit)
{
    public double Median => Report.Median(Seconds);
    public double Throughput => Tokens / Median;
    public string Line() => string.Create(CultureInfo.InvariantCulture,
        $"{Name,-28} {Shape,-18} median {Median * 1000,10:F1} ms  {Throughput,12:F0} {Unit}  (runs: {string.Join(", ", Seconds.Select(t => (t * 1000).ToString("F0", CultureInfo.InvariantCulture)))} ms)");
}

internal sealed record BenchSettings(string? Device, string DType, ScalarType ScalarType, bool Quick, string? Out, int? Threads, string? TorchLib,
    string Suite, string[] Models, int? Pairs, int? Length, int? Iters, int? Rounds = null, string? Python = null, string? Spec = null, string? Result = null,
    string[]? Workloads = null)
{
    public static BenchSettings? Parse(string[] args)
    {
        string? device = null, dtype = "float32", outPath = null, torchLib = null, python = null, spec = null, result = null, workloads = null;
        string suite = "model", models = "opt-125m,opt-1.3b";
        int? threads = null, pairs = null, length = null, iters = null, rounds = null;
        bool quick = false;
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            try
            {
                switch (args[i])
                {
                    case "--device": device = Value(); break;
                    case "--dtype": dtype = Value(); break;
                    case "--quick": quick = true; break;
                    case "--out": outPath = Value(); break;
                    case "--threads": threads = int.Parse(Value(), CultureInfo.InvariantCulture); break;
                    case "--torch-lib": torchLib = Value(); break;
                    case "--suite": suite = Value() is "model" or "dpo" or "dpo-memory" or "matmul" or "generate" or "generate-profile" or "packing" or "record" or "record-worker" ? args[i] : throw new ArgumentException($"--suite '{args[i]}' is not model, dpo, dpo-memory, matmul, generate, generate-profile, packing or record"); break;
                    case "--rounds": rounds = int.Parse(Value(), CultureInfo.InvariantCulture); break;
                    case "--python": python = Value(); break;
                    case "--spec": spec = Value(); break;
                    case "--result": result = Value(); break;
                    case "--models": models = Value(); break;
                    case "--workloads": workloads = Value(); break;
                    case "--pairs": pairs = int.Parse(Value(), CultureInfo.InvariantCulture); break;
                    case "--length": length = int.Parse(Value(), CultureInfo.InvariantCulture); break;
                    case "--iters": iters = int.Parse(Value(), CultureInfo.InvariantCulture); break;
                    case "-h" or "--help": Usage(); return null;
                    default: throw new ArgumentException($"unknown argument '{args[i]}'");
                }
            }
            catch (Exception e) when (e is ArgumentException or FormatException or OverflowException)
            {
                Console.Error.WriteLine($"ModelBench: {e.Message}");
                Usage();
                return null;
            }
        }
        ScalarType? type = dtype switch
        {
            "float32" or "fp32" => ScalarType.Float32,
            "bfloat16" or "bf16" => ScalarType.BFloat16,
            _ => null,
        };
        if (type is null)
        {
            Console.Error.WriteLine($"ModelBench: --dtype '{dtype}' is not float32 or bfloat16");
            return null;
        }
        var names = models.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var name in names)
        {
            try { DpoBench.Config(name); }
            catch (ArgumentException e) { Console.Error.WriteLine($"ModelBench: --models: {e.Message}"); return null; }
        }
        return new BenchSettings(device, type == ScalarType.Float32 ? "float32" : "bfloat16", type.Value, quick, outPath, threads, torchLib, suite, names, pairs, length, iters, rounds, python, spec, result,
            workloads?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    }

    private static void Usage() => Console.Error.WriteLine(
        "usage: ModelBench [--device cpu|cuda[:N]] [--dtype float32|bfloat16] [--quick] [--out path] [--threads N] [--torch-lib DIR] [--suite model|dpo|dpo-memory|matmul|generate|generate-profile|packing|record] [--models opt-125m,opt-1.3b] [--pairs N --length T --iters N (dpo; generate: rows, new tokens)] [--rounds N --python PATH --workloads a,b (record: only these, a partial report that is no record)]");
}

internal static class Report
{
    public static string DefaultPath(Device device, string dtype)
    {
        // the repository's benchmarks/results, found from the working directory, else next to it
        string root = RepositoryRoot() ?? Directory.GetCurrentDirectory();
        string name = device.type == DeviceType.CUDA ? "cuda" : "cpu";
        string suffix = dtype == "float32" ? "" : "-" + dtype;
        return Path.Combine(root, "benchmarks", "results", $"model-{name}{suffix}-{DateTime.UtcNow:yyyy-MM-dd}.md");
    }

    /// <summary>The checkout (the folder of WeakTeacher.Native.sln) above the working directory or ModelBench.dll; null if neither is in one.</summary>
    internal static string? RepositoryRoot()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "WeakTeacher.Native.sln"))) return d.FullName;
        return null;
    }

    public static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    public static string Table(List<ResultRow> rows)
    {
        var t = new StringBuilder();
        t.AppendLine("| benchmark | batch x tokens | median ms | throughput | runs (ms) |");
        t.AppendLine("|---|---|---:|---:|---|");
        foreach (var r in rows)
            t.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Name} | {r.Shape} | {r.Median * 1000:F1} | {r.Throughput:F0} {r.Unit} | {string.Join(", ", r.Seconds.Select(s => (s * 1000).ToString("F0", CultureInfo.InvariantCulture)))} |"));
        return t.ToString();
    }

    public static string Markdown(BenchSettings settings, Device device, ModelConfig config, long parameters, Plan plan,
        List<ResultRow> rows, TimeSpan elapsed)
    {
        var m = new StringBuilder();
        bool gpu = device.type == DeviceType.CUDA;
        m.AppendLine($"# ModelBench: OPT-125M-sized model, {(gpu ? "GPU" : "CPU")}, {settings.DType}");
        m.AppendLine();
        m.AppendLine($"- Date: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        m.AppendLine($"- Command: `dotnet ModelBench.dll {string.Join(' ', Environment.GetCommandLineArgs().Skip(1))}`");
        m.AppendLine($"- Device: {device}{(gpu ? $" ({TorchDevice.GpuName(device.index < 0 ? 0 : device.index) ?? "unknown GPU"})" : "")}");
        m.AppendLine($"- CPU: {CpuModel()}, {Environment.ProcessorCount} logical cores; torch threads: {torch.get_num_threads()}; " +
                     $"load average at the end (1/5/15 min): {LoadAverage()}");
        if (gpu) m.AppendLine($"- libtorch: {TorchDevice.CudaTorchLib}");
        m.AppendLine($"- .NET {Environment.Version}, TorchSharp {typeof(torch).Assembly.GetName().Version}, {RuntimeInformation.OSDescription}");
        m.AppendLine($"- Model: vocab {config.VocabSize}, hidden {config.HiddenSize}, {config.NumHiddenLayers} layers, {config.NumAttentionHeads} heads, " +
                     $"ffn {config.IntermediateSize}, max positions {config.MaxPositionEmbeddings}; {parameters / 1e6:F1} M parameters, random init");
        m.AppendLine($"- Timing: one warm-up run, then {plan.Repeats} timed run(s), median reported{(gpu ? "; torch.cuda.synchronize before and after each" : "")}");
        m.AppendLine($"- Total wall time: {elapsed.TotalSeconds:F0} s{(settings.Quick ? " (--quick)" : "")}");
        m.AppendLine();
        m.Append(Table(rows));
        m.AppendLine();
        m.AppendLine("forward (logits): one no-grad forward pass over B x T tokens including the LM head (logits [B, T, 50272]); tokens/s = B*T / time.");
        m.AppendLine($"generate: greedy decoding with the KV cache from unpadded {plan.PromptTokens}-token prompts (prefill included), EOS suppressed so every " +
                     $"row makes {plan.NewTokens} tokens; new tokens/s = B*{plan.NewTokens} / time.");
        return m.ToString();
    }

    // other processes compete for the cores; the load average says how much
    internal static string LoadAverage()
    {
        try { return string.Join(" / ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return "unknown"; }
    }

    /// <summary>The CPU's model name, vendor and family (AMD and Intel parts differ here: oneMKL's code paths).</summary>
    internal static string CpuModel()
    {
        string? model = null, vendor = null, family = null;
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
            {
                string Value() => line[(line.IndexOf(':') + 1)..].Trim();
                if (model is null && line.StartsWith("model name", StringComparison.Ordinal)) model = Value();
                else if (vendor is null && line.StartsWith("vendor_id", StringComparison.Ordinal)) vendor = Value();
                else if (family is null && line.StartsWith("cpu family", StringComparison.Ordinal)) family = Value();
            }
        }
        catch (IOException) { }
        return $"{model ?? RuntimeInformation.ProcessArchitecture.ToString()} ({vendor ?? "unknown vendor"}, family {family ?? "?"})";
    }
}
