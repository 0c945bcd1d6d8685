using System.Diagnostics;
using System.Globalization;
using System.Text;
using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Engine.Training;
using static TorchSharp.torch;

/// <summary>
/// Packed (padding_free) against right-padded DPO steps on long-tailed lengths (issue 17 points 1 and 2): an HH-RLHF-like
/// length set (prompt and response lengths log-normal with long tails, chosen and rejected drawn apart, cut as the
/// tokenizer truncates), the same micro-batches both ways, alternated, medians; the step is the trainers' own path
/// (ResponseLogProbs over the batch's host-side rows, the sigmoid loss, backward, clipping, AdamW), with the packed
/// layouts compared (rows of the longest sequence's width as before, Collator.Layout's choice, one row as TRL and
/// OpenRLHF pack). Also the padding share of whole passes (labelling, the reference pass, training) padded and packed.
/// </summary>
internal static class PackingBench
{
    /// <summary>Token lengths of an HH-RLHF-like set: prompt ~ logN(ln 60, 0.9), responses ~ logN(ln 45, 0.9), at least 4,
    /// prompt cut to maxPrompt and responses so that prompt + response fit maxLength.</summary>
    public static (int Prompt, int Chosen, int Rejected)[] Lengths(int count, int maxLength, int maxPrompt, int seed)
    {
        var random = new Random(seed);
        int LogNormal(double median, double sigma)
        {
            double u = 1 - random.NextDouble(), v = random.NextDouble();
            double z = Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v);
            return Math.Max(4, (int)Math.Round(median * Math.Exp(sigma * z)));
        }
        return Enumerable.Range(0, count).Select(_ =>
        {
            int prompt = Math.Min(maxPrompt, LogNormal(60, 0.9));
            return (prompt, Math.Min(maxLength - prompt, LogNormal(45, 0.9)), Math.Min(maxLength - prompt, LogNormal(45, 0.9)));
        }).ToArray();
    }

    public static string Run(Device device, bool quick, Action<string> log)
    {
        (int setSize, int pairs, int batches, int maxLength, int maxPrompt, int iters) = quick ? (32, 4, 2, 64, 32, 1) : (256, 4, 3, 256, 128, 2);
        var config = quick
            ? DpoBench.Config("opt-125m") with { HiddenSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 512, WordEmbedProjDim = 128 }
            : DpoBench.Config("opt-125m");
        var lengths = Lengths(setSize, maxLength, maxPrompt, seed: 17);
        var generator = new torch.Generator(7);
        int[] Ids(int n)
        {
            using var values = randint(3, config.VocabSize, [n], dtype: ScalarType.Int64, generator: generator);
            return values.data<long>().Select(v => (int)v).ToArray();
        }
        var set = lengths.Select(l => new TokenizedPair(Ids(l.Prompt), Ids(l.Chosen), Ids(l.Rejected))).ToArray();
        var text = new StringBuilder();
        var all = set.SelectMany(p => new[] { p.ChosenLength, p.RejectedLength }).Order().ToArray();
        string Stat(IReadOnlyList<int> v) => string.Create(CultureInfo.InvariantCulture,
            $"mean {v.Average():F0}, median {v[v.Count / 2]}, p90 {v[(int)(v.Count * 0.9)]}, max {v[^1]}");
        var prompts = set.Select(p => p.PromptIds.Length).Order().ToArray();
        var responses = set.SelectMany(p => new[] { p.ChosenIds.Length, p.RejectedIds.Length }).Order().ToArray();
        var gaps = set.Select(p => Math.Abs(p.ChosenIds.Length - p.RejectedIds.Length)).Order().ToArray();
        text.AppendLine($"Length set: {setSize} pairs (seed 17), max_length {maxLength}, max_prompt_length {maxPrompt}. Sequence (prompt + response) " +
            $"lengths: {Stat(all)}; prompts: {Stat(prompts)}; responses: {Stat(responses)}; |chosen - rejected|: {Stat(gaps)}.");
        text.AppendLine();

        // padding share of whole passes over the set: right-padded batches in input order and length-sorted
        // (LengthBatches), and the same batches packed, at the longest sequence's width (before) and as Collator.Layout
        int evalBatch = quick ? 4 : 16;
        double Share(IEnumerable<int[]> plan, Func<int[], (int[] RowLengths, int Width)> layout)
        {
            long real = 0, cells = 0;
            foreach (var b in plan)
            {
                var (rowLengths, width) = layout(b.Select(i => set[i].ChosenLength).Concat(b.Select(i => set[i].RejectedLength)).ToArray());
                real += rowLengths.Sum();
                cells += (long)rowLengths.Length * width;
            }
            return 1 - (double)real / cells;
        }
        (int[], int) Padded(int[] lengths) { var l = Collator.Layout(lengths, packed: false); return (l.RowLengths, l.Width); }
        (int[], int) AtLongest(int[] lengths) { var l = Collator.PackInto(lengths, int.MaxValue); return (l.RowLengths, l.Width); }
        (int[], int) Packed(int[] lengths) { var l = Collator.Layout(lengths, packed: true, config.HiddenSize); return (l.RowLengths, l.Width); }
        List<int[]> InputOrder(int size) => Enumerable.Range(0, (setSize + size - 1) / size)
            .Select(k => Enumerable.Range(k * size, Math.Min(size, setSize - k * size)).ToArray()).ToList();
        var longer = set.Select(p => p.LongerLength).ToArray();
        var passes = new (string Name, IReadOnlyList<int[]> Plan)[]
        {
            ($"labelling: batches of {evalBatch} pairs length-sorted in windows of {LengthBatches.WindowBatches} batches", LengthBatches.Plan(longer, evalBatch, LengthBatches.Window(evalBatch))),
            ($"reference pass, scoring: batches of {evalBatch} pairs length-sorted (one window)", LengthBatches.Plan(longer, evalBatch)),
            ($"reference pass at DPO's batch of {pairs} pairs (eval_batch_size unset), length-sorted", LengthBatches.Plan(longer, pairs)),
            ($"DPO training: micro-batches of {pairs} pairs in input order", InputOrder(pairs)),
            ($"forward-only in input order, batches of {evalBatch} pairs (no length batching)", InputOrder(evalBatch)),
        };
        text.AppendLine("| pass over the set | padded | packed, rows of the longest's width (before) | packed (Collator.Layout) |");
        text.AppendLine("| --- | --- | --- | --- |");
        foreach (var (name, plan) in passes)
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {name} | {Share(plan, Padded):P1} | {Share(plan, AtLongest):P1} | {Share(plan, Packed):P1} |"));
        text.AppendLine();

        using var policy = CausalLMFactory.Create(config, device, ScalarType.Float32, seed: 1);
        var trainConfig = new DpoConfig { LearningRate = 1e-6, Lora = null };
        policy.train();
        using var optimizer = TrainingOptimizer.Create(policy, trainConfig);
        // micro-batches of `pairs` consecutive pairs of the set (input order, as the trainer's shuffled batches are unsorted)
        var micro = Enumerable.Range(0, batches).Select(k => set.Skip(k * pairs).Take(pairs).ToArray()).ToArray();
        var reference = micro.Select(m => randn(2 * m.Length).mul(10).sub(100)).ToArray();
        int pad = config.PadTokenId!.Value;
        // the layouts compared: right-padded, packed at the longest's width (before), Collator.Layout, all in one row
        var variants = new (string Name, Func<TokenizedPair[], PreferenceBatch> Collate)[]
        {
            ("padded", m => Collator.CollatePreferences(m, pad, device)),
            ("packed at the longest's width (before)", m => Collator.CollatePreferences(m, pad, device, int.MaxValue)),
            ("packed (Collator.Layout)", m => Collator.CollatePreferences(m, pad, device, packed: true, config.HiddenSize)),
            ("one row", m => Collator.CollatePreferences(m, pad, device, 1)),
        };
        double Step(TokenizedPair[] members, Tensor referenceLogps, int variant, out long peak)
        {
            using var scope = NewDisposeScope();
            using var batch = variants[variant].Collate(members);
            // freed native memory back to the system first, so each step's peak is its own
            if (OperatingSystem.IsLinux()) MallocTrim(0);
            ProcessMemory.ResetPeak();
            TorchDevice.Synchronize(device);
            var watch = Stopwatch.StartNew();
            using var logps = ResponseLogProbs.ComputeDetailed(policy, batch);
            int n = members.Length;
            var r = referenceLogps.to(device);
            var loss = PreferenceScoring.Loss(PreferenceLossInputs.FromConcatenated(logps.SequenceLogps, r, n), trainConfig.LossSettings).Loss;
            Backpropagation.Run(loss);
            optimizer.ClipGradients(trainConfig.MaxGradNorm);
            optimizer.Step();
            optimizer.ZeroGrad();
            TorchDevice.Synchronize(device);
            double ms = watch.Elapsed.TotalMilliseconds;
            peak = ProcessMemory.PeakRss();
            return ms;
        }
        bool rss = ProcessMemory.CanResetPeak && device.type == DeviceType.CPU;
        text.AppendLine($"| DPO step, {pairs} pairs, OPT-125M config{(quick ? " (quick: tiny)" : "")} | rows x width | padding share | median ms/step | real tok/s |" +
            (rss ? " peak RSS |" : ""));
        text.AppendLine("| --- | --- | --- | --- | --- |" + (rss ? " --- |" : ""));
        var totalMs = new double[variants.Length];
        long totalReal = 0;
        // one warm-up step each way
        for (int v = 0; v < variants.Length; v++) Step(micro[0], reference[0], v, out _);
        for (int k = 0; k < batches; k++)
        {
            var times = variants.Select(_ => new List<double>()).ToArray();
            var peaks = new long[variants.Length];
            for (int i = 0; i < iters; i++)
                for (int v = 0; v < variants.Length; v++)
                {
                    // alternated, so load drifts hit every layout alike
                    times[v].Add(Step(micro[k], reference[k], v, out long peak));
                    peaks[v] = Math.Max(peaks[v], peak);
                }
            long real = micro[k].Sum(p => (long)p.ChosenLength + p.RejectedLength);
            totalReal += real;
            for (int v = 0; v < variants.Length; v++)
            {
                double ms = Report.Median(times[v]);
                totalMs[v] += ms;
                using var b = variants[v].Collate(micro[k]);
                string row = string.Create(CultureInfo.InvariantCulture,
                    $"| batch {k + 1} {variants[v].Name} | {b.RowCount} x {b.SequenceLength} | {b.PaddingShare:P1} | {ms:F0} | {real / ms * 1000:F0} |")
                    + (rss ? string.Create(CultureInfo.InvariantCulture, $" {peaks[v] / (1024.0 * 1024):F0} MiB |") : "");
                text.AppendLine(row);
                log(row);
            }
        }
        for (int v = 0; v < variants.Length; v++)
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| all {batches} batches {variants[v].Name} | | | {totalMs[v]:F0} | {totalReal / totalMs[v] * 1000:F0} ({totalMs[0] / totalMs[v]:F2}x padded) |") + (rss ? " |" : ""));
        text.AppendLine();
        text.AppendLine($"Timing: one warm-up step each way, then per batch {iters} steps each way alternated, medians; real tok/s counts only real tokens" +
            (rss ? "; peak RSS: the process's VmHWM over the step (reset, after malloc_trim, once the batch is collated), the largest of its steps." : "."));
        text.AppendLine();

        // a labelling forward (no gradients, as WeakLabeler and the reference pass run) on one batch of the windows
        var labelBatch = passes[0].Plan[Math.Min(1, passes[0].Plan.Count - 1)].Select(i => set[i]).ToArray();
        long labelReal = labelBatch.Sum(p => (long)p.ChosenLength + p.RejectedLength);
        policy.eval();
        double Forward(int variant, out long peak)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            using var batch = variants[variant].Collate(labelBatch);
            if (OperatingSystem.IsLinux()) MallocTrim(0);
            ProcessMemory.ResetPeak();
            TorchDevice.Synchronize(device);
            var watch = Stopwatch.StartNew();
            using (ResponseLogProbs.Compute(policy, batch)) TorchDevice.Synchronize(device);
            double ms = watch.Elapsed.TotalMilliseconds;
            peak = ProcessMemory.PeakRss();
            return ms;
        }
        text.AppendLine($"| labelling forward, {labelBatch.Length} pairs ({labelReal} real tokens) | rows x width | padding share | median ms | real tok/s |" +
            (rss ? " peak RSS |" : ""));
        text.AppendLine("| --- | --- | --- | --- | --- |" + (rss ? " --- |" : ""));
        var forwardTimes = variants.Select(_ => new List<double>()).ToArray();
        var forwardPeaks = new long[variants.Length];
        for (int i = 0; i < iters; i++)
            for (int v = 0; v < variants.Length; v++)
            {
                forwardTimes[v].Add(Forward(v, out long peak));
                forwardPeaks[v] = Math.Max(forwardPeaks[v], peak);
            }
        for (int v = 0; v < variants.Length; v++)
        {
            double ms = Report.Median(forwardTimes[v]);
            using var b = variants[v].Collate(labelBatch);
            string row = string.Create(CultureInfo.InvariantCulture,
                $"| {variants[v].Name} | {b.RowCount} x {b.SequenceLength} | {b.PaddingShare:P1} | {ms:F0} | {labelReal / ms * 1000:F0} |")
                + (rss ? string.Create(CultureInfo.InvariantCulture, $" {forwardPeaks[v] / (1024.0 * 1024):F0} MiB |") : "");
            text.AppendLine(row);
            log(row);
        }
        text.AppendLine();
        text.AppendLine($"Forward: {iters} passes each way alternated (after the steps' warm-up), medians. Load average at the end (1/5/15 min): {Report.LoadAverage()}.");
        return text.ToString();
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);
}
