using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Generation;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Engine.Training;
using static TorchSharp.torch;
using Generator = WeakTeacher.Engine.Generation.Generator;

/// <summary>
/// The benchmark of record (issue 17): the engine against benchmarks/torch_baseline.py (plain PyTorch eager the way TRL
/// and transformers do it) on the same weights, written once as Hugging Face checkpoints (config.json +
/// model.safetensors) that both sides load, and the same token ids. Eight workloads: a DPO step with precomputed
/// reference log-probs, a DPO step with the reference forward, labelling (teacher + reference, no grad) and greedy
/// KV-cache generation, each at fixed lengths and on an HH-RLHF-like long-tailed length set
/// (<see cref="PackingBench.Lengths"/>). Each workload runs in a fresh process per side (so each peak RSS is its own),
/// the sides alternated round by round (engine first in even rounds, PyTorch first in odd ones), timings the median of
/// every timed pass over all rounds. Each side batches the way it does by default: PyTorch right-pads each batch of the
/// input order to its longest (TRL's collator; left-pads prompts for generation); the engine packs DPO micro-batches
/// (padding_free), sorts labelling by length in windows and packs (WeakLabeler), sorts prompts by length for generation
/// (Generator.GenerateText). The same run measures the matmul rate, prints the BLAS each process mapped, and checks
/// that both sides compute the same numbers (reference log-probs, first-step gradient norm, rewards, greedy tokens).
/// </summary>
internal static class RecordBench
{
    internal sealed record Spec
    {
        public required string Workload { get; init; }
        public required string Policy { get; init; }
        public required string Reference { get; init; }
        public int Threads { get; init; }
        public int Iters { get; init; }
        public int WarmupBatches { get; init; } = 1;
        public int BatchSize { get; init; }
        public double Beta { get; init; } = 0.1;
        public double Lr { get; init; } = 1e-6;
        public double MaxGradNorm { get; init; } = 1.0;
        public int PadId { get; init; }
        /// <summary>Per pair: [prompt, chosen, rejected] token ids.</summary>
        public int[][][] Pairs { get; init; } = [];
        /// <summary>The input order's batches (indices into Pairs or Prompts), as a plain script or TRL's dataloader forms them.</summary>
        public int[][] Batches { get; init; } = [];
        public int[][] Prompts { get; init; } = [];
        public int NewTokens { get; init; }
    }

    internal sealed record Result
    {
        public string Side { get; init; } = "";
        public string Runtime { get; init; } = "";
        public string Model { get; init; } = "";
        public int Threads { get; init; }
        public double[] TimesMs { get; init; } = [];
        public long RealTokens { get; init; }
        public long Cells { get; init; }
        public double PeakRssMib { get; init; }
        /// <summary>RSS at the worker's start, before any model: the runtime's own (.NET + libtorch, or Python + torch).</summary>
        public double BaseRssMib { get; init; }
        public string Blas { get; init; } = "";
        public double[]? Check { get; init; }
        public double? FirstLoss { get; init; }
        public double? FirstGradNorm { get; init; }
        public long[][]? Generated { get; init; }
    }

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    // ---- the engine's side: one workload, in this process ----

    public static int Worker(string specPath, string resultPath, Device device)
    {
        double baseRss = ProcessMemory.Rss() / (1024.0 * 1024);
        var spec = JsonSerializer.Deserialize<Spec>(File.ReadAllText(specPath), Json)
            ?? throw new InvalidDataException($"{specPath}: empty spec");
        var load = new ModelLoadOptions { Device = device, DType = ScalarType.Float32 };
        using var policy = PretrainedModel.Load(spec.Policy, load);
        var pairs = spec.Pairs.Select(p => new TokenizedPair(p[0], p[1], p[2])).ToArray();
        long real = 0, cells = 0;
        double[]? check = null;
        double? firstLoss = null, firstGradNorm = null;
        long[][]? generated = null;
        Action<int> run;
        int batchCount;
        var disposables = new List<IDisposable>();
        try
        {
            switch (spec.Workload)
            {
                case "dpo" or "dpo_ref":
                {
                    // the reference is the initial policy (TRL's copy); its log-probs over the same packed micro-batches
                    var reference = PretrainedModel.Load(spec.Policy, load);
                    reference.eval();
                    var batches = spec.Batches.Select(b => Collator.CollatePreferences(b.Select(i => pairs[i]).ToArray(), spec.PadId, device, packed: true, hiddenSize: policy.Config.HiddenSize)).ToArray();
                    disposables.AddRange(batches);
                    var precomputed = new Tensor[batches.Length];
                    using (no_grad())
                        for (int k = 0; k < batches.Length; k++) precomputed[k] = ResponseLogProbs.Compute(reference, batches[k]).detach().cpu();
                    disposables.AddRange(precomputed);
                    check = precomputed.SelectMany(p => p.to(ScalarType.Float64).data<double>().ToArray()).ToArray();
                    if (spec.Workload == "dpo") reference.Dispose();
                    else disposables.Add(reference);
                    real = batches.Sum(b => (long)b.Lengths.Sum());
                    cells = batches.Sum(b => (long)b.RowCount * b.SequenceLength);
                    var config = new DpoConfig { LearningRate = spec.Lr, Beta = spec.Beta, MaxGradNorm = spec.MaxGradNorm, Lora = null, PaddingFree = true };
                    policy.train();
                    var optimizer = TrainingOptimizer.Create(policy, config);
                    disposables.Add(optimizer);
                    run = k =>
                    {
                        using var scope = NewDisposeScope();
                        var batch = batches[k];
                        Tensor referenceLogps;
                        if (spec.Workload == "dpo_ref")
                            using (no_grad()) referenceLogps = ResponseLogProbs.Compute(reference, batch);
                        else referenceLogps = precomputed[k].to(device);
                        using var logps = ResponseLogProbs.ComputeDetailed(policy, batch);
                        int n = batch.PairCount;
                        var loss = PreferenceScoring.Loss(PreferenceLossInputs.FromConcatenated(logps.SequenceLogps, referenceLogps, n), config.LossSettings).Loss;
                        Backpropagation.Run(loss);
                        double norm = optimizer.ClipGradients(config.MaxGradNorm);
                        optimizer.Step();
                        optimizer.ZeroGrad();
                        if (firstLoss is null) (firstLoss, firstGradNorm) = (loss.item<float>(), norm);
                    };
                    batchCount = batches.Length;
                    break;
                }
                case "label":
                {
                    var reference = PretrainedModel.Load(spec.Reference, load);
                    disposables.Add(reference);
                    policy.eval();
                    reference.eval();
                    // WeakLabeler.LabelAll's batches: sorted by the longer side within windows, each packed
                    var plan = LengthBatches.Plan(pairs.Select(p => p.LongerLength).ToArray(), spec.BatchSize, LengthBatches.Window(spec.BatchSize));
                    var batches = plan.Select(b => Collator.CollatePreferences(b.Select(i => pairs[i]).ToArray(), spec.PadId, device, packed: true, hiddenSize: policy.Config.HiddenSize)).ToArray();
                    disposables.AddRange(batches);
                    real = batches.Sum(b => (long)b.Lengths.Sum());
                    cells = batches.Sum(b => (long)b.RowCount * b.SequenceLength);
                    var rewards = new double[2 * pairs.Length];
                    run = k =>
                    {
                        using var scope = NewDisposeScope();
                        using var noGrad = no_grad();
                        var r = ResponseLogProbs.Compute(policy, batches[k]).sub(ResponseLogProbs.Compute(reference, batches[k])).to(ScalarType.Float64).cpu().data<double>().ToArray();
                        int n = plan[k].Length;
                        for (int j = 0; j < n; j++) (rewards[2 * plan[k][j]], rewards[2 * plan[k][j] + 1]) = (r[j], r[n + j]);
                    };
                    check = rewards;
                    batchCount = batches.Length;
                    break;
                }
                case "generate":
                {
                    policy.eval();
                    // Generator.GenerateText's batches: prompts sorted by length, each batch left-padded to its longest
                    var plan = LengthBatches.Plan(spec.Prompts.Select(p => p.Length).ToArray(), spec.BatchSize);
                    var inputs = plan.Select(b => LeftPadded(b.Select(i => spec.Prompts[i]).ToArray(), spec.PadId, device)).ToArray();
                    foreach (var (ids, mask) in inputs) { disposables.Add(ids); disposables.Add(mask); }
                    real = spec.Prompts.Sum(p => (long)p.Length);
                    cells = inputs.Sum(x => x.Ids.numel());
                    generated = new long[spec.Prompts.Length][];
                    var options = new GenerationOptions { MaxNewTokens = spec.NewTokens, MinNewTokens = spec.NewTokens, PadTokenId = spec.PadId };
                    run = k =>
                    {
                        using var result = Generator.Generate(policy, inputs[k].Ids, inputs[k].Mask, options);
                        if (result.NumNewColumns != spec.NewTokens) throw new InvalidOperationException("generation stopped early");
                        for (int j = 0; j < plan[k].Length; j++) generated[plan[k][j]] = result.NewTokens[j];
                    };
                    batchCount = inputs.Length;
                    break;
                }
                default:
                    throw new InvalidDataException($"{specPath}: unknown workload '{spec.Workload}'");
            }

            for (int k = 0; k < Math.Min(spec.WarmupBatches, batchCount); k++) run(k);
            var first = (firstLoss, firstGradNorm);
            ProcessMemory.ResetPeak();
            var times = new double[spec.Iters];
            for (int i = 0; i < spec.Iters; i++)
            {
                var watch = Stopwatch.StartNew();
                for (int k = 0; k < batchCount; k++) run(k);
                TorchDevice.Synchronize(device);
                times[i] = watch.Elapsed.TotalMilliseconds;
            }
            var result = new Result
            {
                Side = "engine", Runtime = $"WeakTeacher engine, TorchSharp {typeof(torch).Assembly.GetName().Version}", Model = "engine",
                Threads = get_num_threads(), TimesMs = times, RealTokens = real, Cells = cells,
                PeakRssMib = ProcessMemory.PeakRss() / (1024.0 * 1024), BaseRssMib = baseRss, Blas = $"{MatmulRate.LoadedBlas()}; linear layers and decode head: {WeakTeacher.CudaKernels.HostBlas.Description}",
                Check = check, FirstLoss = first.firstLoss, FirstGradNorm = first.firstGradNorm, Generated = generated,
            };
            WeakTeacher.Engine.AtomicFile.WriteAllText(resultPath, JsonSerializer.Serialize(result, Json));
            return 0;
        }
        finally
        {
            foreach (var d in disposables) d.Dispose();
        }
    }

    private static (Tensor Ids, Tensor Mask) LeftPadded(int[][] prompts, int pad, Device device)
    {
        int width = prompts.Max(p => p.Length);
        var ids = new long[prompts.Length * width];
        var mask = new long[prompts.Length * width];
        Array.Fill(ids, pad);
        for (int r = 0; r < prompts.Length; r++)
            for (int t = 0; t < prompts[r].Length; t++)
            {
                int at = r * width + width - prompts[r].Length + t;
                ids[at] = prompts[r][t];
                mask[at] = 1;
            }
        return (tensor(ids, [prompts.Length, width], device: device), tensor(mask, [prompts.Length, width], device: device));
    }

    // ---- the driver ----

    private sealed record Workload(string Name, string Lengths, Spec Spec, string Unit);

    /// <summary>One side's results of a workload over the rounds.</summary>
    private sealed record Side(List<Result> Runs)
    {
        public IEnumerable<double> Times => Runs.SelectMany(r => r.TimesMs);
        public double Peak => Runs.Max(r => r.PeakRssMib);
        public Result Last => Runs[^1];
    }

    public static int Run(BenchSettings settings, Action<string> log)
    {
        bool quick = settings.Quick;
        int threads = settings.Threads ?? Environment.ProcessorCount;
        int rounds = settings.Rounds ?? (quick ? 1 : 2);
        string? python = FindPython(settings.Python);
        if (python is null)
        {
            Console.Error.WriteLine("ModelBench --suite record: no Python that imports torch and numpy (Debian: python3-torch python3-numpy; set WT_PYTHON to choose one)");
            return 3;
        }
        string script = Path.Combine(RepoRoot(), "benchmarks", "torch_baseline.py");
        string work = Path.Combine(Path.GetTempPath(), $"wt-record-{Environment.ProcessId}");
        Directory.CreateDirectory(work);
        var clock = Stopwatch.StartNew();
        string loadBefore = Report.LoadAverage();
        try
        {
            var config = quick
                ? DpoBench.Config("opt-125m") with { VocabSize = 4096, HiddenSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 256, WordEmbedProjDim = 64 }
                : DpoBench.Config("opt-125m");
            string policyDir = Path.Combine(work, "policy"), referenceDir = Path.Combine(work, "reference");
            using (var policy = CausalLMFactory.Create(config, CPU, ScalarType.Float32, seed: 1)) PretrainedModel.Save(policy, policyDir);
            using (var reference = CausalLMFactory.Create(config, CPU, ScalarType.Float32, seed: 2)) PretrainedModel.Save(reference, referenceDir);
            var (workloads, lengthNote) = Workloads(config, policyDir, referenceDir, threads, quick);
            // --workloads: a subset for development; its report has no goals and is not written over the record
            bool partial = settings.Workloads is { Length: > 0 };
            if (partial)
            {
                var unknown = settings.Workloads!.Except(workloads.Select(w => w.Name)).ToList();
                if (unknown.Count > 0)
                    throw new ArgumentException($"--workloads: {string.Join(", ", unknown)} not among {string.Join(", ", workloads.Select(w => w.Name))}");
                workloads = workloads.Where(w => settings.Workloads!.Contains(w.Name)).ToList();
            }
            double matmulBefore = MatmulRate.TrainingSized(quick ? 3 : 15);
            log(string.Create(CultureInfo.InvariantCulture, $"matmul rate before: {matmulBefore:F1} GFLOP/s ({get_num_threads()} threads)"));

            var results = workloads.ToDictionary(w => w.Name, _ => new Dictionary<string, Side>());
            for (int round = 0; round < rounds; round++)
                foreach (var w in workloads)
                {
                    string specPath = Path.Combine(work, $"{w.Name}.json");
                    File.WriteAllText(specPath, JsonSerializer.Serialize(w.Spec, Json));
                    string[] order = round % 2 == 0 ? ["engine", "pytorch"] : ["pytorch", "engine"];
                    foreach (var side in order)
                    {
                        string resultPath = Path.Combine(work, $"{w.Name}-{side}-{round}.result.json");
                        var watch = Stopwatch.StartNew();
                        if (side == "engine")
                            Spawn("dotnet", [typeof(RecordBench).Assembly.Location, "--suite", "record-worker", "--device", "cpu", "--threads", threads.ToString(CultureInfo.InvariantCulture),
                                "--spec", specPath, "--result", resultPath, .. settings.TorchLib is null ? Array.Empty<string>() : ["--torch-lib", settings.TorchLib]], threads);
                        else
                            Spawn(python, [script, "--record", specPath, "--result", resultPath], threads);
                        var r = JsonSerializer.Deserialize<Result>(File.ReadAllText(resultPath), Json)!;
                        // a baseline on the netlib reference BLAS (Debian's default libblas.so.3) is no baseline
                        if (side == "pytorch" && !r.Blas.Contains("openblas", StringComparison.OrdinalIgnoreCase) && !r.Blas.Contains("mkl", StringComparison.OrdinalIgnoreCase))
                            throw new InvalidOperationException($"the PyTorch side ({python}) mapped no optimised BLAS ({r.Blas}): install libopenblas0-openmp (./build.sh bench does)");
                        if (!results[w.Name].TryGetValue(side, out var s)) results[w.Name][side] = s = new Side([]);
                        s.Runs.Add(r);
                        log(string.Create(CultureInfo.InvariantCulture,
                            $"round {round + 1}/{rounds} {w.Name,-18} {side,-7} passes {string.Join(", ", r.TimesMs.Select(t => t.ToString("F0", CultureInfo.InvariantCulture)))} ms, " +
                            $"peak RSS {r.PeakRssMib:F0} MiB, process {watch.Elapsed.TotalSeconds:F0} s, load {Report.LoadAverage()}"));
                    }
                }
            double matmulAfter = MatmulRate.TrainingSized(quick ? 3 : 15);
            log(string.Create(CultureInfo.InvariantCulture, $"matmul rate after: {matmulAfter:F1} GFLOP/s"));
            string report = Markdown(settings, config, workloads, results, lengthNote, threads, rounds, python, (matmulBefore + matmulAfter) / 2,
                matmulBefore, matmulAfter, loadBefore, clock.Elapsed);
            string outPath = settings.Out ?? (partial ? work + "-report.md"
                : Path.Combine(RepoRoot(), "benchmarks", "results", quick ? "bench-cpu-quick.md" : "bench-cpu.md"));
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outPath))!);
            WeakTeacher.Engine.AtomicFile.WriteAllText(outPath, report);
            Console.WriteLine(report);
            Console.WriteLine($"wrote {outPath} ({clock.Elapsed.TotalSeconds:F0} s)");
            return 0;
        }
        finally
        {
            try { Directory.Delete(work, recursive: true); } catch (IOException) { }
        }
    }

    private static (List<Workload>, string) Workloads(ModelConfig config, string policyDir, string referenceDir, int threads, bool quick)
    {
        var random = new Random(20261203);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, config.VocabSize)).ToArray();
        int pad = config.PadTokenId!.Value;
        Spec Base(string workload) => new() { Workload = workload, Policy = policyDir, Reference = referenceDir, Threads = threads, PadId = pad, Iters = 1 };
        int[][] Chunks(int count, int size) => Enumerable.Range(0, (count + size - 1) / size)
            .Select(k => Enumerable.Range(k * size, Math.Min(size, count - k * size)).ToArray()).ToArray();

        // fixed lengths: the issue's shapes (CPU): DPO 4 pairs x 128 (prompt 64 + response 64), labelling 16 x 128, generation 8 x (32 + 64)
        (int dpoPairs, int length, int labelPairs, int genRows, int genPrompt, int genNew) = quick ? (2, 32, 4, 2, 8, 4) : (4, 128, 16, 8, 32, 64);
        int[][][] FixedPairs(int n) => Enumerable.Range(0, n).Select(_ => new[] { Ids(length / 2), Ids(length / 2), Ids(length / 2) }).ToArray();
        var fixedDpo = FixedPairs(dpoPairs);
        var fixedLabel = FixedPairs(labelPairs);
        var fixedPrompts = Enumerable.Range(0, genRows).Select(_ => Ids(genPrompt)).ToArray();

        // realistic lengths: the HH-RLHF-like set of PackingBench (prompt ~ logN(ln 60, 0.9) cut at 128, responses ~ logN(ln 45, 0.9), max 256)
        (int rDpoBatches, int rLabelPairs, int rGenPrompts, int rGenNew, int maxLength, int maxPrompt) = quick ? (2, 8, 4, 4, 64, 32) : (3, 48, 16, 32, 256, 128);
        var lengths = PackingBench.Lengths(Math.Max(rDpoBatches * dpoPairs, rLabelPairs), maxLength, maxPrompt, seed: 17);
        var realistic = lengths.Select(l => new[] { Ids(l.Prompt), Ids(l.Chosen), Ids(l.Rejected) }).ToArray();
        var realisticPrompts = lengths.Take(rGenPrompts).Select(l => Ids(l.Prompt)).ToArray();
        var list = new List<Workload>
        {
            new("dpo_fixed", $"{dpoPairs} pairs x {length}", Base("dpo") with { Pairs = fixedDpo, Batches = Chunks(dpoPairs, dpoPairs), Iters = 2 }, "tok/s"),
            new("dpo_ref_fixed", $"{dpoPairs} pairs x {length}", Base("dpo_ref") with { Pairs = fixedDpo, Batches = Chunks(dpoPairs, dpoPairs), Iters = 2 }, "tok/s"),
            new("label_fixed", $"{labelPairs} pairs x {length}", Base("label") with { Pairs = fixedLabel, Batches = Chunks(labelPairs, labelPairs), BatchSize = labelPairs, Iters = 2 }, "pairs/s"),
            new("generate_fixed", $"{genRows} x ({genPrompt} + {genNew})", Base("generate") with { Prompts = fixedPrompts, Batches = Chunks(genRows, genRows), BatchSize = genRows, NewTokens = genNew, Iters = 2 }, "new tok/s"),
            new("dpo_real", $"{rDpoBatches} micro-batches of {dpoPairs} pairs", Base("dpo") with { Pairs = realistic.Take(rDpoBatches * dpoPairs).ToArray(), Batches = Chunks(rDpoBatches * dpoPairs, dpoPairs), Iters = 1 }, "real tok/s"),
            new("dpo_ref_real", $"{rDpoBatches} micro-batches of {dpoPairs} pairs", Base("dpo_ref") with { Pairs = realistic.Take(rDpoBatches * dpoPairs).ToArray(), Batches = Chunks(rDpoBatches * dpoPairs, dpoPairs), Iters = 1 }, "real tok/s"),
            new("label_real", $"{rLabelPairs} pairs, batch {labelPairs}", Base("label") with { Pairs = realistic.Take(rLabelPairs).ToArray(), Batches = Chunks(rLabelPairs, labelPairs), BatchSize = labelPairs, Iters = 1 }, "pairs/s"),
            new("generate_real", $"{rGenPrompts} prompts, batch {genRows}, {rGenNew} new", Base("generate") with { Prompts = realisticPrompts, Batches = Chunks(rGenPrompts, genRows), BatchSize = genRows, NewTokens = rGenNew, Iters = 1 }, "new tok/s"),
        };
        var used = lengths.Take(Math.Max(rDpoBatches * dpoPairs, rLabelPairs)).ToArray();
        var sequences = used.SelectMany(l => new[] { l.Prompt + l.Chosen, l.Prompt + l.Rejected }).Order().ToArray();
        string note = $"HH-RLHF-like set ({used.Length} pairs, seed 17, max_length {maxLength}, max_prompt_length {maxPrompt}): " +
            $"sequences {Stat(sequences)}; prompts {Stat(used.Select(l => l.Prompt).Order().ToArray())}; " +
            $"responses {Stat(used.SelectMany(l => new[] { l.Chosen, l.Rejected }).Order().ToArray())}; " +
            $"|chosen - rejected| {Stat(used.Select(l => Math.Abs(l.Chosen - l.Rejected)).Order().ToArray())}. DPO uses its first {rDpoBatches * dpoPairs} pairs, " +
            $"labelling its first {rLabelPairs}, generation the prompts of its first {rGenPrompts}.";
        return (list, note);
    }

    private static string Stat(IReadOnlyList<int> sorted) => string.Create(CultureInfo.InvariantCulture,
        $"mean {sorted.Average():F0}, median {sorted[sorted.Count / 2]}, p90 {sorted[(int)(sorted.Count * 0.9)]}, max {sorted[^1]}");

    /// <summary>FLOPs of one forward over the given sequences for OPT: the blocks' linear layers on every token, attention's
    /// two products per layer over each row's [width x width] (dense kernels, masked or not), the head on <paramref name="headRows"/> rows.</summary>
    private static double ForwardFlops(ModelConfig c, long tokens, double attentionCells, long headRows)
    {
        double d = c.HiddenSize, linear = (4 * d * d + 2 * d * c.IntermediateSize) * c.NumHiddenLayers;
        return 2 * linear * tokens + 4 * d * attentionCells * c.NumHiddenLayers + 2 * d * c.VocabSize * headRows;
    }

    private static string Markdown(BenchSettings settings, ModelConfig config, List<Workload> workloads, Dictionary<string, Dictionary<string, Side>> results,
        string lengthNote, int threads, int rounds, string python, double matmul, double matmulBefore, double matmulAfter, string loadBefore, TimeSpan elapsed)
    {
        var m = new StringBuilder();
        var engine0 = results.Values.First()["engine"].Last;
        var torch0 = results.Values.First()["pytorch"].Last;
        m.AppendLine($"# The benchmark of record: the engine against PyTorch eager{(settings.Quick ? " (--quick: a tiny model, it checks the harness, not the numbers)" : "")}");
        m.AppendLine();
        m.AppendLine($"- Date: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC; commit {GitCommit()}");
        m.AppendLine($"- Machine: {Report.CpuModel()}, {Environment.ProcessorCount} logical cores, {TotalMemoryGib():F0} GiB; {threads} threads on each side");
        m.AppendLine($"- Load average (1/5/15 min) before: {loadBefore}; after: {Report.LoadAverage()}");
        bool mklInside = !engine0.Blas.Split(';')[0].Contains("blas", StringComparison.OrdinalIgnoreCase) && !engine0.Blas.Split(';')[0].Contains("mkl", StringComparison.OrdinalIgnoreCase);
        m.AppendLine($"- Engine: {engine0.Runtime}; BLAS mapped: {engine0.Blas}{(mklInside ? " (no separate BLAS: the oneMKL linked into TorchSharp's libtorch_cpu)" : "")}");
        m.AppendLine($"- PyTorch: {torch0.Runtime} ({torch0.Model} model) via {python}; BLAS mapped: {torch0.Blas}");
        m.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"- Each runtime alone (RSS at a worker's start, before any model; included in every peak below): engine {results.Values.Max(v => v["engine"].Last.BaseRssMib):F0} MiB, PyTorch {results.Values.Max(v => v["pytorch"].Last.BaseRssMib):F0} MiB"));
        m.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"- Matmul rate in this run (float32 1024 x 768 x 3072, the faster of the engine's libtorch and OpenBLAS, {threads} threads): {matmul:F1} GFLOP/s (before {matmulBefore:F1}, after {matmulAfter:F1})"));
        m.AppendLine($"- Model: OPT config, vocab {config.VocabSize}, hidden {config.HiddenSize}, {config.NumHiddenLayers} layers, {config.NumAttentionHeads} heads, " +
                     $"ffn {config.IntermediateSize}; random weights (seeds 1 and 2) written once as Hugging Face checkpoints that both sides load; float32");
        m.AppendLine($"- Timing: {rounds} round(s), each workload in a fresh process per side, sides alternated; per process one warm-up batch, then " +
                     "timed passes over all the workload's batches; medians of all timed passes. Peak RSS: VmHWM of the timed passes (reset after the warm-up), " +
                     "the largest over the rounds.");
        m.AppendLine($"- Total wall time: {elapsed.TotalSeconds:F0} s. Command: `dotnet ModelBench.dll {string.Join(' ', Environment.GetCommandLineArgs().Skip(1))}` (`./build.sh bench`)");
        m.AppendLine();
        m.AppendLine($"Lengths: {lengthNote}");
        m.AppendLine();
        m.AppendLine("| workload | shape | engine | PyTorch eager | engine / PyTorch | engine peak RSS MiB | PyTorch peak RSS MiB | memory ratio | engine padding | PyTorch padding |");
        m.AppendLine("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        var ratios = new Dictionary<string, (double Speed, double Memory, double EnginePadding, double EngineMs)>();
        foreach (var w in workloads)
        {
            var e = results[w.Name]["engine"];
            var t = results[w.Name]["pytorch"];
            double work = w.Unit switch
            {
                "pairs/s" => w.Spec.Pairs.Length,
                "new tok/s" => (double)w.Spec.Prompts.Length * w.Spec.NewTokens,
                _ => e.Last.RealTokens,
            };
            double em = Report.Median(e.Times), tm = Report.Median(t.Times);
            double ePeak = e.Peak, tPeak = t.Peak;
            double ePad = 1 - (double)e.Last.RealTokens / e.Last.Cells, tPad = 1 - (double)t.Last.RealTokens / t.Last.Cells;
            ratios[w.Name] = (tm / em, ePeak / tPeak, ePad, em);
            m.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {w.Name} | {w.Lengths} | {work / em * 1000:F1} {w.Unit} | {work / tm * 1000:F1} {w.Unit} | {tm / em:F2}x | {ePeak:F0} | {tPeak:F0} | {ePeak / tPeak:F2} | {ePad:P1} | {tPad:P1} |"));
        }
        m.AppendLine();
        m.AppendLine("Padding: the share of the cells each side's batches compute over that hold no token (DPO and labelling: rows x width of every " +
                     "forward; generation: the left-padded prompts). Real tok/s counts only real tokens.");
        m.AppendLine();

        if (settings.Workloads is { Length: > 0 }) return m.Append(Checks(workloads, results)).ToString();   // --workloads: a subset, no goals

        // the engine's step against the matmul rate: the FLOPs it must do (its head runs on the scored rows only)
        var fixedDpo = workloads.First(w => w.Name == "dpo_fixed").Spec;
        long tokens = fixedDpo.Pairs.Sum(p => (long)p[0].Length * 2 + p[1].Length + p[2].Length);
        long scored = fixedDpo.Pairs.Sum(p => (long)p[1].Length + p[2].Length);
        double cells = fixedDpo.Pairs.Sum(p => Math.Pow(p[0].Length + p[1].Length, 2) + Math.Pow(p[0].Length + p[2].Length, 2));
        double stepFlops = 3 * ForwardFlops(config, tokens, cells, scored);
        double refFlops = stepFlops + ForwardFlops(config, tokens, cells, scored);
        double stepRate = stepFlops / (ratios["dpo_fixed"].EngineMs / 1000) / 1e9;
        double refRate = refFlops / (ratios["dpo_ref_fixed"].EngineMs / 1000) / 1e9;
        m.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"Fixed-length DPO step against the matmul rate: {stepFlops / 1e9:F1} GFLOP per step (forward + backward = 3 x forward: the blocks' linear layers on all {tokens} tokens, " +
            $"attention's two products over each sequence's T x T, the head on the {scored} scored response tokens) in {ratios["dpo_fixed"].EngineMs:F0} ms = {stepRate:F1} GFLOP/s, " +
            $"**{stepRate / matmul:P0} of the matmul rate**; with the reference forward {refFlops / 1e9:F1} GFLOP in {ratios["dpo_ref_fixed"].EngineMs:F0} ms = {refRate / matmul:P0}."));
        m.AppendLine();

        m.Append(Checks(workloads, results));

        m.AppendLine("| goal (issue 17) | measured | met |");
        m.AppendLine("| --- | --- | --- |");
        void Goal(string goal, string shown, bool met) => m.AppendLine($"| {goal} | {shown} | {(met ? "yes" : "**no**")} |");
        var r = ratios;
        Goal("realistic lengths: DPO step >= 1.5x PyTorch's real tok/s", $"{r["dpo_real"].Speed:F2}x (with the reference forward {r["dpo_ref_real"].Speed:F2}x)", r["dpo_real"].Speed >= 1.5);
        Goal("realistic lengths: DPO step peak memory <= 0.7x PyTorch's", $"{r["dpo_real"].Memory:F2} (with the reference forward {r["dpo_ref_real"].Memory:F2})", r["dpo_real"].Memory <= 0.7);
        Goal("realistic lengths: labelling >= 2x PyTorch's pairs/s", $"{r["label_real"].Speed:F2}x", r["label_real"].Speed >= 2);
        double worstPad = new[] { "dpo_real", "dpo_ref_real", "label_real" }.Max(n => r[n].EnginePadding);
        Goal("realistic lengths: padding share of the engine's batches <= 5%", $"{worstPad:P1} (DPO {r["dpo_real"].EnginePadding:P1}, labelling {r["label_real"].EnginePadding:P1})", worstPad <= 0.05);
        Goal("fixed lengths: DPO step >= 85% of the matmul rate", string.Create(CultureInfo.InvariantCulture, $"{stepRate / matmul:P0}"), stepRate / matmul >= 0.85);
        Goal("fixed lengths: generation >= 1.2x PyTorch", $"{r["generate_fixed"].Speed:F2}x (realistic prompts {r["generate_real"].Speed:F2}x)", r["generate_fixed"].Speed >= 1.2);
        double worstFixedMemory = new[] { "dpo_fixed", "dpo_ref_fixed", "label_fixed", "generate_fixed" }.Max(n => r[n].Memory);
        Goal("fixed lengths: peak memory <= 0.8x PyTorch's",
            string.Join(", ", new[] { "dpo_fixed", "dpo_ref_fixed", "label_fixed", "generate_fixed" }.Select(n => string.Create(CultureInfo.InvariantCulture, $"{n} {r[n].Memory:F2}"))), worstFixedMemory <= 0.8);
        return m.ToString();
    }

    /// <summary>The side-by-side checks that both sides computed the same numbers.</summary>
    private static string Checks(List<Workload> workloads, Dictionary<string, Dictionary<string, Side>> results)
    {
        var m = new StringBuilder();
        m.AppendLine("Both sides compute the same numbers:");
        foreach (var w in workloads)
        {
            var e = results[w.Name]["engine"].Last;
            var t = results[w.Name]["pytorch"].Last;
            if (e.Check is { } ec && t.Check is { } tc)
            {
                double max = ec.Zip(tc, (a, b) => Math.Abs(a - b)).Max(), scale = tc.Max(Math.Abs);
                string what = w.Spec.Workload == "label" ? "rewards (log-prob differences)" : "reference sequence log-probs";
                string norms = e.FirstGradNorm is double en && t.FirstGradNorm is double tn
                    ? string.Create(CultureInfo.InvariantCulture, $"; first step's gradient norm {en:G6} against {tn:G6} (relative {Math.Abs(en - tn) / tn:G2})") : "";
                m.AppendLine(string.Create(CultureInfo.InvariantCulture, $"- {w.Name}: {what}: max |engine - PyTorch| {max:G3} (values up to {scale:G4}, relative {max / scale:G2})") + norms);
            }
            if (e.Generated is { } eg && t.Generated is { } tg)
            {
                long same = 0, total = 0;
                for (int i = 0; i < eg.Length; i++)
                    for (int j = 0; j < Math.Min(eg[i].Length, tg[i].Length); j++, total++)
                        if (eg[i][j] == tg[i][j]) same++;
                m.AppendLine(string.Create(CultureInfo.InvariantCulture, $"- {w.Name}: greedy tokens identical at {same} of {total} positions ({(double)same / total:P1})"));
            }
        }
        m.AppendLine();
        return m.ToString();
    }

    private static string RepoRoot() => Report.RepositoryRoot()
        ?? throw new DirectoryNotFoundException("the repository (WeakTeacher.Native.sln) is not above the working directory or ModelBench.dll");

    private static void Spawn(string file, IEnumerable<string> arguments, int threads)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) start.ArgumentList.Add(a);
        // the same thread count on both sides, for every OpenMP runtime either loads (libtorch's, OpenBLAS's)
        start.Environment["OMP_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        start.Environment["OPENBLAS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {file}");
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        process.WaitForExit();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{Path.GetFileName(file)} {string.Join(' ', start.ArgumentList)} exited with {process.ExitCode}:\n{output.Result}\n{error.Result}");
    }

    /// <summary>An interpreter that imports torch and numpy: WT_PYTHON or --python first, then Debian's, then PATH's.</summary>
    public static string? FindPython(string? preferred)
    {
        string?[] candidates = [preferred, Environment.GetEnvironmentVariable("WT_PYTHON"), "/usr/bin/python3", "python3"];
        foreach (var c in candidates)
        {
            if (string.IsNullOrEmpty(c)) continue;
            try
            {
                var start = new ProcessStartInfo(c) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                start.ArgumentList.Add("-c");
                start.ArgumentList.Add("import torch, numpy");
                using var p = Process.Start(start);
                if (p is null) continue;
                p.StandardOutput.ReadToEnd();
                p.StandardError.ReadToEnd();
                p.WaitForExit();
                if (p.ExitCode == 0) return c;
            }
            catch (System.ComponentModel.Win32Exception) { }
        }
        return null;
    }


    private static string GitCommit()
    {
        try
        {
            var start = new ProcessStartInfo("git") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = RepoRoot() };
            foreach (var a in new[] { "describe", "--always", "--dirty" }) start.ArgumentList.Add(a);
            using var p = Process.Start(start)!;
            string text = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? text : "unknown";
        }
        catch (System.ComponentModel.Win32Exception) { return "unknown (no git)"; }
    }


    private static double TotalMemoryGib()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemTotal:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0 / 1024;
        }
        catch (IOException) { }
        return double.NaN;
    }

}
