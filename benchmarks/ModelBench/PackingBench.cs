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
/// (ResponseLogProbs over the batch's host-side rows, the sigmoid loss, backward, clipping, AdamW). Also the padding
/// share of the forward-only passes (reference, labelling) in input order against length-sorted batches
/// (<see cref="LengthBatches"/>), and their time on a few batches.
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

        // forward-only passes: padding share over the whole set, input order against length-sorted, at the demo's batch of 16
        int evalBatch = quick ? 4 : 16;
        double Share(IEnumerable<int[]> plan)
        {
            long real = 0, cells = 0;
            foreach (var b in plan)
            {
                real += b.Sum(i => (long)set[i].ChosenLength + set[i].RejectedLength);
                cells += 2L * b.Length * b.Max(i => set[i].LongerLength);
            }
            return 1 - (double)real / cells;
        }
        var inputOrder = Enumerable.Range(0, (setSize + evalBatch - 1) / evalBatch)
            .Select(k => Enumerable.Range(k * evalBatch, Math.Min(evalBatch, setSize - k * evalBatch)).ToArray()).ToList();
        var longer = set.Select(p => p.LongerLength).ToArray();
        var sortedAll = LengthBatches.Plan(longer, evalBatch);
        var sortedWindows = LengthBatches.Plan(longer, evalBatch, LengthBatches.Window(evalBatch));
        text.AppendLine($"| forward-only pass (batch {evalBatch} pairs) | padding share |");
        text.AppendLine("| --- | --- |");
        text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| input order (before) | {Share(inputOrder):P1} |"));
        text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| length-sorted, one window (reference pass, scoring, generation) | {Share(sortedAll):P1} |"));
        text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| length-sorted in windows of {LengthBatches.WindowBatches} batches | {Share(sortedWindows):P1} |"));
        // labelling as it runs by default: the windows' batches, each packed (LabelingOptions.PaddingFree)
        long packedReal = 0, packedCells = 0;
        foreach (var b in sortedWindows)
        {
            var (_, rowLengths, width) = Collator.Layout(b.SelectMany(i => new[] { set[i].ChosenLength, set[i].RejectedLength }).ToArray(), packed: true);
            packedReal += rowLengths.Sum();
            packedCells += (long)rowLengths.Length * width;
        }
        text.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"| the same batches packed (labelling's default, LabelingOptions.PaddingFree) | {1 - (double)packedReal / packedCells:P1} |"));
        text.AppendLine();

        using var policy = CausalLMFactory.Create(config, device, ScalarType.Float32, seed: 1);
        var trainConfig = new DpoConfig { LearningRate = 1e-6, Lora = null };
        policy.train();
        using var optimizer = TrainingOptimizer.Create(policy, trainConfig);
        // micro-batches of `pairs` consecutive pairs of the set (input order, as the trainer's shuffled batches are unsorted)
        var micro = Enumerable.Range(0, batches).Select(k => set.Skip(k * pairs).Take(pairs).ToArray()).ToArray();
        var reference = micro.Select(m => randn(2 * m.Length).mul(10).sub(100)).ToArray();
        double Step(TokenizedPair[] members, Tensor referenceLogps, bool packed, out double share, out long real)
        {
            using var scope = NewDisposeScope();
            using var batch = Collator.CollatePreferences(members, config.PadTokenId!.Value, device, packed);
            share = batch.PaddingShare;
            real = batch.Lengths.Sum(l => (long)l);
            TorchDevice.Synchronize(device);
            var watch = Stopwatch.StartNew();
            using var logps = ResponseLogProbs.ComputeDetailed(policy, batch);
            int n = members.Length;
            var r = referenceLogps.to(device);
            var loss = PreferenceScoring.Loss(new PreferenceLossInputs(logps.SequenceLogps.narrow(0, 0, n), logps.SequenceLogps.narrow(0, n, n),
                r.narrow(0, 0, n), r.narrow(0, n, n)), trainConfig.LossSettings).Loss;
            loss.backward();
            optimizer.ClipGradients(trainConfig.MaxGradNorm);
            optimizer.Step();
            optimizer.ZeroGrad();
            TorchDevice.Synchronize(device);
            return watch.Elapsed.TotalMilliseconds;
        }
        text.AppendLine($"| DPO step, {pairs} pairs, OPT-125M config{(quick ? " (quick: tiny)" : "")} | rows x width | padding share | median ms/step | real tok/s |");
        text.AppendLine("| --- | --- | --- | --- | --- |");
        double totalPadded = 0, totalPacked = 0;
        long totalReal = 0;
        // one warm-up step each way
        Step(micro[0], reference[0], false, out _, out _);
        Step(micro[0], reference[0], true, out _, out _);
        for (int k = 0; k < batches; k++)
        {
            var padded = new List<double>();
            var packed = new List<double>();
            double sharePadded = 0, sharePacked = 0;
            long real = 0;
            for (int i = 0; i < iters; i++)
            {
                // alternated, so load drifts hit both sides alike
                padded.Add(Step(micro[k], reference[k], false, out sharePadded, out real));
                packed.Add(Step(micro[k], reference[k], true, out sharePacked, out _));
            }
            double mp = Median(padded), mk = Median(packed);
            totalPadded += mp;
            totalPacked += mk;
            totalReal += real;
            using var a = Collator.CollatePreferences(micro[k], config.PadTokenId!.Value, null);
            using var b = Collator.CollatePreferences(micro[k], config.PadTokenId!.Value, null, packed: true);
            foreach (var (name, ms, share, shape) in new[] { ("padded", mp, sharePadded, $"{a.RowCount} x {a.SequenceLength}"), ("packed", mk, sharePacked, $"{b.RowCount} x {b.SequenceLength}") })
            {
                string row = string.Create(CultureInfo.InvariantCulture, $"| batch {k + 1} {name} | {shape} | {share:P1} | {ms:F0} | {real / ms * 1000:F0} |");
                text.AppendLine(row);
                log(row);
            }
        }
        text.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"| all {batches} batches | | | padded {totalPadded:F0}, packed {totalPacked:F0} | padded {totalReal / totalPadded * 1000:F0}, packed {totalReal / totalPacked * 1000:F0} ({totalPadded / totalPacked:F2}x) |"));
        text.AppendLine();
        text.AppendLine($"Timing: one warm-up step each way, then per batch {iters} steps each way alternated, medians; real tok/s counts only real tokens.");
        return text.ToString();
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
