using System.Diagnostics;
using System.Globalization;
using System.Text;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Generation;
using WeakTeacher.Engine.Models;
using static TorchSharp.torch;
using Generator = WeakTeacher.Engine.Generation.Generator;

/// <summary>
/// A per-part profile of greedy KV-cache decode steps on OPT (ModelBench --suite generate --profile): the steps of
/// Generator.Generate's loop and OptDecoder.Forward done op by op on the model's own modules, each part timed on its
/// own (CPU ops are synchronous; with OpenBLAS installed the head is timed through both libraries, in turns), summed over the decode steps of one generation and divided by their count; the whole
/// Generator.Generate step is timed next to it, so what the parts miss shows as the difference.
/// </summary>
internal static class GenerateProfile
{
    public static string Run(OptModel model, Tensor promptIds, int newTokens, int repeats)
    {
        bool configuredHead = HostBlas.Enabled;
        HostBlas.Enabled = true;
        bool[] headLibraries = HostBlas.Available ? new[] { false, true } : new[] { configuredHead };
        string openBlasName = HostBlas.Description;
        HostBlas.Enabled = configuredHead;
        string HeadPart(bool used) => used ? $"head product ({HostBlas.Description})"
            : $"(head product through {(configuredHead ? "torch" : openBlasName)}, not summed)";
        var config = model.Config;
        long heads = config.NumAttentionHeads, headDim = config.HiddenSize / heads;
        var decoder = model.Decoder;
        // the parts below are OPT-125M's pre-norm decode step; other layouts would be profiled as something they are not
        if (!config.DoLayerNormBefore || decoder.project_in is not null || decoder.final_layer_norm is null || config.HiddenAct != "relu")
            throw new NotSupportedException("the decode profile follows pre-norm OPT blocks without project_in/out (OPT-125M's layout)");
        var parts = new SortedDictionary<string, List<double>>(StringComparer.Ordinal);
        var whole = new List<double>();
        model.eval();
        for (int repeat = 0; repeat < repeats; repeat++)
        {
            var sums = new Dictionary<string, double>();
            var watch = new Stopwatch();
            void Start() => watch.Restart();
            void Stop(string part)
            {
                sums[part] = sums.GetValueOrDefault(part) + watch.Elapsed.TotalMilliseconds;
            }
            using (no_grad())
            using (inference_mode())
            using (var cache = model.NewCache())
            {
                var input = promptIds.alias();
                var mask = ones_like(promptIds);
                for (int step = 0; step < newTokens; step++)
                {
                    using var scope = NewDisposeScope();
                    bool timed = step > 0; // the prefill is not a decode step
                    long length = input.shape[1];
                    Start();
                    var positions = Attention.Positions(mask, length).Add(2L);
                    var attentionMask = Attention.CausalPaddingMask(mask, length);
                    if (timed) Stop("host: positions + attention mask");
                    Start();
                    var hidden = decoder.embed_tokens.forward(input).Add(decoder.embed_positions.forward(positions));
                    if (timed) Stop("embeddings");
                    for (int i = 0; i < decoder.layers.Count; i++)
                    {
                        var layer = decoder.layers[i];
                        var attn = layer.self_attn;
                        Start();
                        var normed = layer.self_attn_layer_norm.forward(hidden);
                        var q = Attention.SplitHeads(attn.q_proj.forward(normed), heads, headDim);
                        var k = Attention.SplitHeads(attn.k_proj.forward(normed), heads, headDim);
                        var v = Attention.SplitHeads(attn.v_proj.forward(normed), heads, headDim);
                        if (timed) Stop("layers: layer norm + q, k, v projections");
                        Start();
                        (k, v) = cache.Append(i, k, v);
                        if (timed) Stop("layers: cache writes");
                        Start();
                        var attended = Attention.ScaledDotProduct(q, k, v, attentionMask, 0.0);
                        if (timed) Stop("layers: attention (SDPA)");
                        Start();
                        hidden = hidden.Add(attn.out_proj.forward(Attention.MergeHeads(attended)));
                        if (timed) Stop("layers: merge heads + out projection");
                        Start();
                        hidden = hidden.Add(layer.fc2.forward(nn.functional.relu(layer.fc1.forward(layer.final_layer_norm.forward(hidden)))));
                        if (timed) Stop("layers: MLP (layer norm, fc1, relu, fc2)");
                    }
                    Start();
                    var last = decoder.final_layer_norm!.forward(hidden).select(1, -1);
                    if (timed) Stop("final layer norm");
                    // both heads on the same state, in turns: the one Generator would use feeds the next step
                    Tensor? logits = null;
                    foreach (bool openBlas in (step % 2 == 0 ? headLibraries : headLibraries.Reverse()))
                    {
                        HostBlas.Enabled = openBlas;
                        Start();
                        var product = HostBlas.Linear(last, model.OutputWeight);
                        if (timed) Stop(HeadPart(openBlas == configuredHead));
                        if (openBlas == configuredHead) logits = product;
                    }
                    HostBlas.Enabled = configuredHead;
                    Start();
                    var next = logits!.argmax(-1).cpu().data<long>().ToArray();
                    var column = tensor(next).unsqueeze(1);
                    var nextMask = cat(new[] { mask, ones_like(column) }, 1);
                    if (timed) Stop("host: argmax, read, next input and mask");
                    input.Dispose();
                    mask.Dispose();
                    input = column.DetachFromDisposeScope();
                    mask = nextMask.DetachFromDisposeScope();
                }
                input.Dispose();
                mask.Dispose();
            }
            HostBlas.Enabled = configuredHead;
            foreach (var (part, ms) in sums)
            {
                if (!parts.TryGetValue(part, out var list)) parts[part] = list = new List<double>();
                list.Add(ms / (newTokens - 1));
            }
            // the real loop, the same shape: (prefill + decode) minus the prefill alone, per decode step
            var options = new GenerationOptions { MaxNewTokens = newTokens, MinNewTokens = newTokens };
            var one = new GenerationOptions { MaxNewTokens = 1, MinNewTokens = 1 };
            using var mask1 = ones_like(promptIds);
            var clock = Stopwatch.StartNew();
            using (Generator.Generate(model, promptIds, mask1, options)) { }
            double all = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            using (Generator.Generate(model, promptIds, mask1, one)) { }
            whole.Add((all - clock.Elapsed.TotalMilliseconds) / (newTokens - 1));
        }
        static double Median(List<double> xs) { var s = xs.Order().ToArray(); return s[s.Length / 2]; }
        var text = new StringBuilder();
        text.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"decode step profile, {promptIds.shape[0]} rows x ({promptIds.shape[1]} + {newTokens}), {get_num_threads()} threads, medians of {repeats} generations, ms per decode step:"));
        double total = 0;
        foreach (var (part, list) in parts.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            double m = Median(list);
            if (!part.StartsWith('(')) total += m;
            text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"  {part,-48} {m,8:F2}"));
        }
        text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"  {"sum of the parts",-48} {total,8:F2}"));
        text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"  {"Generator.Generate, per decode step",-48} {Median(whole),8:F2}"));
        return text.ToString();
    }
}
