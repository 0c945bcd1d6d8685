using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.CudaKernels.Memory;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Generation;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Engine.Training;
using static TorchSharp.torch;
using Generator = WeakTeacher.Engine.Generation.Generator;

/// <summary>
/// The engine doing the work of benchmarks/torch_baseline.py, in its table format (| model | workload | shape | ms/step |
/// throughput | peak MiB |), so one table shows both: a full fine-tuning DPO step (sigmoid loss, AdamW, grad clipping)
/// with the reference forward and with precomputed reference log-probs, labelling (teacher + reference, no grad) and
/// greedy generation with the KV cache, for OPT-125M and OPT-1.3B configs with random weights at 16 pairs x 512 tokens
/// (prompt 256, responses 256). The step is the trainers' own path: ResponseLogProbs over the batch's host-side rows,
/// <see cref="MixedPrecision"/> when the dtype is bfloat16 (float32 masters and AdamW state), TrainingOptimizer.
/// A second, instrumented run of the precomputed-reference step synchronises after each stage for the breakdown:
/// forward (the transformer), head + log-probs (fused head, loss), backward, optimizer (clip, AdamW, masters to the model).
/// </summary>
internal static class DpoBench
{
    private static readonly Dictionary<string, (int Hidden, int Layers, int Heads, int Ffn)> Sizes = new()
    {
        ["opt-125m"] = (768, 12, 12, 3072),
        ["opt-1.3b"] = (2048, 24, 32, 8192),
    };

    public static ModelConfig Config(string name)
    {
        if (!Sizes.TryGetValue(name, out var s)) throw new ArgumentException($"unknown model '{name}' (known: {string.Join(", ", Sizes.Keys)})");
        return new ModelConfig
        {
            Family = ModelFamily.Opt, ModelType = "opt", VocabSize = 50272, HiddenSize = s.Hidden, NumHiddenLayers = s.Layers,
            NumAttentionHeads = s.Heads, IntermediateSize = s.Ffn, MaxPositionEmbeddings = 2048, WordEmbedProjDim = s.Hidden,
            DoLayerNormBefore = true, HiddenAct = "relu", BosTokenId = 2, EosTokenIds = [2], PadTokenId = 1, TieWordEmbeddings = true,
            // as the baseline: no dropout, so both do the same arithmetic
            ResidDropout = 0, AttentionDropout = 0, EmbeddingDropout = 0,
        };
    }

    public static string Run(IReadOnlyList<string> models, Device device, TrainingPrecision precision, bool quick, Action<string> log,
        int? pairsOption = null, int? lengthOption = null, int? itersOption = null)
    {
        (int pairs, int length, int newTokens, int warm, int iters) = quick ? (2, 32, 4, 1, 1) : (16, 512, 64, 2, 5);
        if (itersOption is int n) (warm, iters) = (1, n);
        pairs = pairsOption ?? pairs;
        length = lengthOption ?? length;
        var rows = new List<string> { "| model | workload | shape | ms/step | throughput | peak MiB |", "| --- | --- | --- | --- | --- | --- |" };
        string shape = $"{pairs} pairs x {length}";
        // --quick (the device script's dry run on the CPU) checks the code path, not the numbers: one small OPT of the
        // full vocabulary (2 layers, hidden 128), so the step fits its 60 s on two busy cores even in bfloat16
        foreach (var name in quick ? ["opt-tiny"] : models)
        {
            var config = quick
                ? Config("opt-125m") with { HiddenSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 512, WordEmbedProjDim = 128 }
                : Config(name);
            using var policy = CausalLMFactory.Create(config, device, ScalarType.Float32, seed: 1);
            using var reference = CausalLMFactory.Create(config, device, precision.ComputeType(), seed: 2);
            void Record(string workload, double ms, string throughput)
            {
                // TorchSharp has no CUDA memory statistics: the column stays n/a (the baseline's has torch's)
                string row = string.Create(CultureInfo.InvariantCulture, $"| {name} (engine) | {workload} | {shape} | {ms:F1} | {throughput} | n/a |");
                rows.Add(row);
                log(row);
            }

            var generator = new torch.Generator(7);
            var tokenized = Enumerable.Range(0, pairs).Select(_ => new TokenizedPair(Random(length / 2, generator), Random(length - length / 2, generator),
                Random(length - length / 2, generator))).ToArray();
            using var batch = Collator.CollatePreferences(tokenized, config.PadTokenId!.Value, device);
            var trainConfig = new DpoConfig { Precision = precision, LearningRate = 1e-6, Lora = null };
            policy.train();
            using var mixed = MixedPrecision.Begin(policy, precision);
            using var optimizer = TrainingOptimizer.Create(policy, trainConfig, mixed.Trainable);
            Tensor precomputed;
            using (no_grad()) precomputed = ResponseLogProbs.Compute(reference, batch).detach();

            void Step(bool withReference) => DpoStep(policy, withReference ? reference : null, batch, precomputed, pairs, trainConfig, mixed, optimizer);
            long tokens = 2L * pairs * length;
            double ms = Timed(() => Step(true), device, warm, iters);
            Record("dpo step (policy + reference)", ms, $"{tokens / ms * 1000:F0} tok/s");
            ms = Timed(() => Step(false), device, warm, iters);
            Record("dpo step (precomputed reference)", ms, $"{tokens / ms * 1000:F0} tok/s");

            // the breakdown: the precomputed-reference step again, synchronised after each stage
            var stages = new double[4];
            var stagePeaks = new long[4];
            long liveBefore = Tensor.TotalCount;
            for (int i = 0; i < iters; i++)
            {
                var (t, memory) = StageTimes(policy, batch, precomputed, pairs, trainConfig, mixed, optimizer, device);
                for (int s = 0; s < 4; s++) { stages[s] += t[s] / iters; stagePeaks[s] = Math.Max(stagePeaks[s], memory[s].PeakRss); }
            }
            for (int s = 0; s < 4; s++)
                Record($"  stage: {StageNames[s]}", stages[s], $"{stages[s] / stages.Sum() * 100:F0}% of the step" +
                    (ProcessMemory.CanResetPeak ? $", peak RSS {Mib(stagePeaks[s]):F0} MiB" : ""));
            // managed tensors still alive after the steps returned: each holds native memory until disposed or collected
            log($"live tensors after {iters} instrumented step(s): {Tensor.TotalCount - liveBefore:+0;-0;0} (before: {liveBefore})");
            mixed.End();
            policy.eval();

            void Label()
            {
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                ResponseLogProbs.Compute(policy, batch);
                ResponseLogProbs.Compute(reference, batch);
            }
            // labelling as the labeller runs it: the teacher (here the trained policy) in the compute dtype
            if (precision != TrainingPrecision.Fp32) policy.to(precision.ComputeType());
            ms = Timed(Label, device, warm, iters);
            Record("labelling (teacher + reference)", ms, $"{pairs / ms * 1000:F1} pairs/s");

            using var prompt = batch.InputIds.narrow(0, 0, pairs).narrow(1, 0, length / 2).contiguous();
            using var promptMask = ones_like(prompt);
            void Generate()
            {
                using var result = Generator.Generate(policy, prompt, promptMask, new GenerationOptions { MaxNewTokens = newTokens, MinNewTokens = newTokens });
                if (result.NumNewColumns != newTokens) throw new InvalidOperationException("generation stopped early");
            }
            ms = Timed(Generate, device, 1, Math.Max(1, iters / 2));
            Record($"generation ({newTokens} new, KV cache)", ms, $"{pairs * newTokens / ms * 1000:F0} tok/s");
            precomputed.Dispose();
        }
        var text = new StringBuilder();
        text.AppendLine($"WeakTeacher engine on {TorchDevice.Describe(device)} ({precision.Name()}: {(precision == TrainingPrecision.Fp32 ? "float32 throughout" : "bfloat16 compute, float32 masters and AdamW state")}), " +
                        "full fine-tuning DPO, fused head (no [B, T, V] logits)");
        text.AppendLine();
        foreach (var r in rows) text.AppendLine(r);
        text.AppendLine();
        text.AppendLine($"Timing: {warm} warm-up step(s), then the mean of {iters}; synchronised before and after. Stage rows: a separate run of the " +
                        "precomputed-reference step, synchronised after each stage (their sum exceeds the step's time by the lost overlap).");
        return text.ToString();
    }

    private static int[] Random(int count, torch.Generator generator)
    {
        using var values = randint(3, 50272, [count], dtype: ScalarType.Int64, generator: generator);
        return values.data<long>().Select(v => (int)v).ToArray();
    }

    private static readonly string[] StageNames = ["forward", "head + log-probs", "backward", "optimizer"];

    private static double Mib(long bytes) => bytes / (1024.0 * 1024);

    /// <summary>One DPO step as the trainers run it (the reference forward when <paramref name="reference"/> is given,
    /// else the precomputed log-probs): policy log-probs, loss, backward, clip, AdamW, gradients released.</summary>
    private static void DpoStep(CausalLM policy, CausalLM? reference, PreferenceBatch batch, Tensor precomputed, int pairs, DpoConfig config,
        MixedPrecision mixed, TrainingOptimizer optimizer)
    {
        using var scope = NewDisposeScope();
        Tensor referenceLogps;
        using (no_grad()) referenceLogps = reference is not null ? ResponseLogProbs.Compute(reference, batch) : precomputed;
        using var logps = ResponseLogProbs.ComputeDetailed(policy, batch);
        var loss = Loss(logps.SequenceLogps, referenceLogps, pairs, config);
        Backpropagation.Run(loss);
        mixed.AccumulateGradients();
        optimizer.ClipGradients(config.MaxGradNorm);
        optimizer.Step();
        mixed.CopyToModel();
        optimizer.ZeroGrad();
    }

    /// <summary>
    /// --suite dpo-memory: where the precomputed-reference DPO step's memory goes, per stage (forward, head + log-probs,
    /// backward, optimizer) of the instrumented step: the stage's peak RSS (VmHWM reset before it), and at its end the
    /// RSS, the bytes malloc has handed out and not had back (mallinfo2: live tensors' storage plus the allocator's
    /// own, so RSS minus it is freed memory the process kept) and the managed tensors alive. Before them, the same at
    /// each point of the setup, so a stage's excess over the state it starts from shows.
    /// </summary>
    public static string RunMemory(string name, Device device, Action<string> log, int pairs, int length, int iters)
    {
        var lines = new List<string> { "| point | ms | peak RSS MiB | RSS MiB | malloc in use MiB | live tensors |", "| --- | ---: | ---: | ---: | ---: | ---: |" };
        void Point(string what, long peak, double ms = 0)
        {
            string line = string.Create(CultureInfo.InvariantCulture,
                $"| {what} | {(ms > 0 ? ms.ToString("F0", CultureInfo.InvariantCulture) : "")} | {(peak > 0 ? Mib(peak).ToString("F0", CultureInfo.InvariantCulture) : "")} | {Mib(ProcessMemory.Rss()):F0} | {Mib(ProcessMemory.HeapInUse()):F0} | {Tensor.TotalCount} |");
            lines.Add(line);
            log(line);
        }
        Point("runtime started", ProcessMemory.PeakRss());
        var config = Config(name);
        using var policy = CausalLMFactory.Create(config, device, ScalarType.Float32, seed: 1);
        using var reference = CausalLMFactory.Create(config, device, ScalarType.Float32, seed: 2);
        Point("policy and reference built", ProcessMemory.PeakRss());
        var generator = new torch.Generator(7);
        var tokenized = Enumerable.Range(0, pairs).Select(_ => new TokenizedPair(Random(length / 2, generator), Random(length - length / 2, generator),
            Random(length - length / 2, generator))).ToArray();
        using var batch = Collator.CollatePreferences(tokenized, config.PadTokenId!.Value, device);
        var trainConfig = new DpoConfig { Precision = TrainingPrecision.Fp32, LearningRate = 1e-6, Lora = null };
        policy.train();
        using var mixed = MixedPrecision.Begin(policy, TrainingPrecision.Fp32);
        using var optimizer = TrainingOptimizer.Create(policy, trainConfig, mixed.Trainable);
        Tensor precomputed;
        using (no_grad()) precomputed = ResponseLogProbs.Compute(reference, batch).detach();
        Point("reference log-probs precomputed", ProcessMemory.PeakRss());
        ProcessMemory.ResetPeak();
        DpoStep(policy, null, batch, precomputed, pairs, trainConfig, mixed, optimizer);
        Point("first step (optimizer state allocated)", ProcessMemory.PeakRss());
        ProcessMemory.ResetPeak();
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < iters; i++) DpoStep(policy, null, batch, precomputed, pairs, trainConfig, mixed, optimizer);
        Point($"{iters} more steps (as --suite dpo times them; ms per step)", ProcessMemory.PeakRss(), watch.Elapsed.TotalMilliseconds / iters);
        for (int i = 0; i < iters; i++)
        {
            var (times, memory) = StageTimes(policy, batch, precomputed, pairs, trainConfig, mixed, optimizer, device);
            for (int s = 0; s < 4; s++)
            {
                var m = memory[s];
                string line = string.Create(CultureInfo.InvariantCulture,
                    $"| step {i + 1}: {StageNames[s]} | {times[s]:F0} | {Mib(m.PeakRss):F0} | {Mib(m.Rss):F0} | {Mib(m.HeapInUse):F0} | {m.LiveTensors} |");
                lines.Add(line);
                log(line);
            }
        }
        Point("after the steps", 0);
        precomputed.Dispose();
        return $"DPO step memory, {name} (fp32), {pairs} pairs x {length}, precomputed reference, on {TorchDevice.Describe(device)}\n\n" +
            string.Join('\n', lines) + "\n";
    }

    /// <summary>A stage's memory: its peak RSS, and at its end the RSS, malloc's bytes in use and the live tensors.</summary>
    internal readonly record struct StageMemory(long PeakRss, long Rss, long HeapInUse, long LiveTensors)
    {
        public static StageMemory Now() => new(ProcessMemory.PeakRss(), ProcessMemory.Rss(), ProcessMemory.HeapInUse(), Tensor.TotalCount);
    }

    private static Tensor Loss(Tensor policyLogps, Tensor referenceLogps, int pairs, DpoConfig config)
    {
        var reference = referenceLogps.to(policyLogps.device);
        return PreferenceScoring.Loss(PreferenceLossInputs.FromConcatenated(policyLogps, reference, pairs), config.LossSettings).Loss;
    }

    private static (double[] Times, StageMemory[] Memory) StageTimes(CausalLM policy, PreferenceBatch batch, Tensor precomputed, int pairs, DpoConfig config,
        MixedPrecision mixed, TrainingOptimizer optimizer, Device device)
    {
        using var scope = NewDisposeScope();
        // the scored rows from the host-side mask, as ResponseLogProbs computes them
        long b = batch.RowCount, t = batch.SequenceLength;
        var scored = batch.HostResponseMask.narrow(1, 1, t - 1).Ne(0).nonzero();
        var sequenceIndex = scored.select(1, 0).contiguous();
        var rowIndex = sequenceIndex.Mul(t).Add(scored.select(1, 1));
        var labels = batch.HostInputIds.reshape(b * t).index_select(0, rowIndex.Add(1L));
        var (seqDevice, rowDevice, labelDevice) = (HostTransfers.ToDevice(sequenceIndex, device), HostTransfers.ToDevice(rowIndex, device),
            HostTransfers.ToDevice(labels, device));
        var times = new double[4];
        var peaks = new StageMemory[4];
        var watch = Stopwatch.StartNew();
        TorchDevice.Synchronize(device);
        ProcessMemory.ResetPeak();
        watch.Restart();
        var hidden = policy.ForwardHidden(batch.InputIds, batch.AttentionMask);
        TorchDevice.Synchronize(device);
        times[0] = watch.Elapsed.TotalMilliseconds;
        peaks[0] = StageMemory.Now();
        ProcessMemory.ResetPeak();
        watch.Restart();
        var rows = hidden.reshape(b * t, hidden.shape[2]).index_select(0, rowDevice);
        var (_, sequence) = FusedHeadLogProbs.Compute(rows, policy.OutputWeight, labelDevice, seqDevice, (int)b, checkIndices: false);
        var loss = Loss(sequence, precomputed, pairs, config);
        TorchDevice.Synchronize(device);
        times[1] = watch.Elapsed.TotalMilliseconds;
        peaks[1] = StageMemory.Now();
        ProcessMemory.ResetPeak();
        watch.Restart();
        Backpropagation.Run(loss);
        mixed.AccumulateGradients();
        TorchDevice.Synchronize(device);
        times[2] = watch.Elapsed.TotalMilliseconds;
        peaks[2] = StageMemory.Now();
        ProcessMemory.ResetPeak();
        watch.Restart();
        optimizer.ClipGradients(config.MaxGradNorm);
        optimizer.Step();
        mixed.CopyToModel();
        optimizer.ZeroGrad();
        TorchDevice.Synchronize(device);
        times[3] = watch.Elapsed.TotalMilliseconds;
        peaks[3] = StageMemory.Now();
        return (times, peaks);
    }

    private static double Timed(Action step, Device device, int warm, int iters)
    {
        for (int i = 0; i < warm; i++) step();
        TorchDevice.Synchronize(device);
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < iters; i++) step();
        TorchDevice.Synchronize(device);
        return watch.Elapsed.TotalMilliseconds / iters;
    }
}

/// <summary>The process's peak resident memory (VmHWM), and its reset (writing 5 to /proc/self/clear_refs, Linux 4.0+),
/// so that each stage's peak is its own.</summary>
internal static class ProcessMemory
{
    public static bool CanResetPeak { get; } = OperatingSystem.IsLinux() && File.Exists("/proc/self/clear_refs");

    public static void ResetPeak()
    {
        if (CanResetPeak) File.WriteAllText("/proc/self/clear_refs", "5");
    }

    /// <summary>VmHWM in bytes (0 where /proc is absent).</summary>
    public static long PeakRss() => Status("VmHWM:");

    /// <summary>VmRSS, the resident memory now, in bytes (0 where /proc is absent).</summary>
    public static long Rss() => Status("VmRSS:");

    private static long Status(string field)
    {
        if (!File.Exists("/proc/self/status")) return 0;
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(field, StringComparison.Ordinal))
                return long.Parse(line[field.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        return 0;
    }

    /// <summary>Bytes glibc's malloc has handed out and not had back, over all arenas (mallinfo2: uordblks + hblkhd;
    /// libtorch's CPU tensors are allocated there); 0 off glibc.</summary>
    public static long HeapInUse()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        try
        {
            var info = mallinfo2();
            return (long)(info.uordblks + info.hblkhd);
        }
        catch (EntryPointNotFoundException) { return 0; }
        catch (DllNotFoundException) { return 0; }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public nuint arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
    }

    [DllImport("libc.so.6")]
    private static extern MallInfo2 mallinfo2();
}
