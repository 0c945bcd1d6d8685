using WeakTeacher.CudaKernels;
using TorchSharp;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Tokenization;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Generation;

/// <summary>
/// Batched continuation of left-padded prompts with a key/value cache, following Hugging Face generate():
/// greedy or temperature/top-k/top-p sampling, EOS suppressed before MinNewTokens, each sequence stopping at
/// its EOS (padding after it) or at MaxNewTokens, the loop ending when every sequence has stopped.
/// </summary>
public static class Generator
{
    /// <summary>
    /// Continues <paramref name="promptIds"/> [B, S] (int64, left-padded) whose real tokens are marked by
    /// <paramref name="promptMask"/> [B, S] (1 = token, 0 = padding). Runs under no_grad and inference mode,
    /// in eval mode (the model's training flag is restored afterwards).
    /// </summary>
    public static GenerationResult Generate(CausalLM model, Tensor promptIds, Tensor promptMask, GenerationOptions options)
        => Generate(model, promptIds, promptMask, options, generator: null);

    /// <summary>
    /// As <see cref="Generate(CausalLM, Tensor, Tensor, GenerationOptions)"/>, drawing samples from
    /// <paramref name="generator"/> (on the model's device) when given; otherwise from a generator seeded with
    /// <see cref="GenerationOptions.Seed"/>, or torch's default one when no seed is set.
    /// </summary>
    public static GenerationResult Generate(CausalLM model, Tensor promptIds, Tensor promptMask, GenerationOptions options,
        torch.Generator? generator)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        CheckPrompts(promptIds, promptMask);
        var config = model.Config;
        int[] eosIds = (options.EosTokenIds ?? config.EosTokenIds).Distinct().ToArray();
        foreach (int id in eosIds)
            if (id >= config.VocabSize)
                throw new ArgumentException($"EOS token id {id} is outside the model's vocabulary ({config.VocabSize}).", nameof(options.EosTokenIds));
        long pad = options.PadTokenId ?? config.PadTokenId ?? (eosIds.Length > 0 ? eosIds[0] : 0);

        int batch = (int)promptIds.shape[0];
        int promptLength = (int)promptIds.shape[1];
        int maxNew = options.MaxNewTokens;
        if (config.Family != ModelFamily.Llama && config.MaxPositionEmbeddings > 0)
        {
            // learned position embeddings end at MaxPositionEmbeddings; an index past it fails deep in native code
            long longest;
            using (var counts = promptMask.sum(1)) longest = counts.max().item<long>();
            if (longest + maxNew > config.MaxPositionEmbeddings)
                throw new ArgumentException(
                    $"A prompt of {longest} tokens plus MaxNewTokens={maxNew} exceeds the model's {config.MaxPositionEmbeddings} positions.",
                    nameof(promptIds));
        }

        var device = model.Device;
        var newTokens = new long[batch, maxNew];
        var lengths = new int[batch];
        var stoppedAtEos = new bool[batch];
        for (int r = 0; r < batch; r++)
            for (int t = 0; t < maxNew; t++) newTokens[r, t] = pad;
        int steps = 0;

        torch.Generator? ownGenerator = generator is null && options.DoSample && options.Seed is long seed
            ? new torch.Generator((ulong)seed, device) : null;
        var sampler = generator ?? ownGenerator;
        bool wasTraining = model.training;
        model.eval();
        KvCache? cache = null;
        Tensor? input = null, mask = null, eosIndex = null;
        try
        {
            using var noGrad = torch.no_grad();
            using var inference = torch.inference_mode();
            // the cache is fed the prompt, then every new token but the last: sized for them once
            cache = options.UseKvCache ? model.NewCache(promptLength + Math.Max(maxNew - 1, 0)) : null;
            input = promptIds.to(ScalarType.Int64, device, copy: true).DetachFromDisposeScope();
            mask = promptMask.to(ScalarType.Int64, device, copy: true).DetachFromDisposeScope();
            if (eosIds.Length > 0)
                eosIndex = torch.tensor(eosIds.Select(i => (long)i).ToArray(), device: device).DetachFromDisposeScope();
            int[] active = Enumerable.Range(0, batch).ToArray(); // original row of each batch row
            bool[] done = new bool[batch];                        // by batch row, when finished rows are kept

            for (int step = 0; step < maxNew; step++)
            {
                long[] next;
                Tensor nextMask, nextInput;
                using (var scope = NewDisposeScope())
                {
                    var hidden = model.ForwardHidden(input, mask, cache);          // [b, T, H]
                    var last = hidden.select(1, -1);                                 // left padding: the last column is real
                    // the skinny head product through OpenBLAS on the CPU where installed (oneMKL is slow at it on AMD)
                    var logits = HostBlas.Linear(last, model.OutputWeight).to(ScalarType.Float32);
                    var chosen = ChooseNext(logits, step, options, eosIndex, sampler);
                    next = chosen.cpu().data<long>().ToArray();
                    // a finished row that stays in the batch is fed padding, as Hugging Face does
                    for (int i = 0; i < next.Length; i++) if (done[i]) next[i] = pad;
                    var column = torch.tensor(next, device: device).unsqueeze(1);
                    nextInput = (cache is null ? torch.cat(new[] { input, column }, 1) : column).DetachFromDisposeScope();
                    nextMask = torch.cat(new[] { mask, torch.ones_like(column) }, 1).DetachFromDisposeScope();
                }
                input.Dispose();
                mask.Dispose();
                input = nextInput;
                mask = nextMask;
                steps = step + 1;

                var keep = new List<long>(active.Length);
                for (int i = 0; i < active.Length; i++)
                {
                    if (done[i]) continue;
                    int row = active[i];
                    newTokens[row, step] = next[i];
                    lengths[row]++;
                    if (Array.IndexOf(eosIds, (int)next[i]) >= 0) { stoppedAtEos[row] = true; done[i] = true; }
                    else keep.Add(i);
                }
                if (keep.Count == 0) break;
                if (options.DropFinished && keep.Count < active.Length)
                {
                    using var rows = torch.tensor(keep.ToArray(), device: device);
                    cache?.SelectRows(rows);
                    var keptInput = input.index_select(0, rows).DetachFromDisposeScope();
                    var keptMask = mask.index_select(0, rows).DetachFromDisposeScope();
                    input.Dispose();
                    mask.Dispose();
                    input = keptInput;
                    mask = keptMask;
                    active = keep.Select(i => active[(int)i]).ToArray();
                    done = new bool[active.Length];
                }
            }
        }
        finally
        {
            cache?.Dispose();
            input?.Dispose();
            mask?.Dispose();
            eosIndex?.Dispose();
            ownGenerator?.Dispose();
            if (wasTraining) model.train();
        }

        // built outside inference mode so that callers may use them in autograd (e.g. as training inputs)
        var flat = new long[batch * steps];
        var maskFlat = new long[batch * steps];
        var perRow = new long[batch][];
        for (int r = 0; r < batch; r++)
        {
            perRow[r] = new long[lengths[r]];
            for (int t = 0; t < steps; t++)
            {
                flat[r * steps + t] = newTokens[r, t];
                maskFlat[r * steps + t] = t < lengths[r] ? 1 : 0;
                if (t < lengths[r]) perRow[r][t] = newTokens[r, t];
            }
        }
        using var scopeOut = NewDisposeScope();
        var outDevice = promptIds.device;
        var generated = torch.tensor(flat, new long[] { batch, steps }, device: outDevice);
        var generatedMask = torch.tensor(maskFlat, new long[] { batch, steps }, device: outDevice);
        var sequences = torch.cat(new[] { promptIds.to(ScalarType.Int64), generated }, 1).MoveToOuterDisposeScope();
        var attention = torch.cat(new[] { promptMask.to(ScalarType.Int64), generatedMask }, 1).MoveToOuterDisposeScope();
        return new GenerationResult(sequences, attention, promptLength, perRow, stoppedAtEos);
    }

    /// <summary>
    /// Continues each of <paramref name="prompts"/> and returns the new text only (special tokens dropped).
    /// Prompts are tokenized (BOS first where the tokenizer adds one), grouped by length into batches of
    /// <paramref name="batchSize"/>, left-padded and generated; results come back in the prompts' order.
    /// Unset EOS/pad ids in <paramref name="options"/> come from the model's config, else the tokenizer.
    /// </summary>
    public static IReadOnlyList<string> GenerateText(CausalLM model, ITokenizer tokenizer, IReadOnlyList<string> prompts,
        GenerationOptions options, int batchSize)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(prompts);
        ArgumentNullException.ThrowIfNull(options);
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "batchSize must be at least 1.");
        options = options with
        {
            EosTokenIds = options.EosTokenIds ?? (model.Config.EosTokenIds.Count > 0 ? model.Config.EosTokenIds : new[] { tokenizer.EosTokenId }),
            PadTokenId = options.PadTokenId ?? model.Config.PadTokenId ?? tokenizer.PadTokenId,
        };
        options.Validate();
        var eos = new HashSet<long>(options.EosTokenIds!.Select(i => (long)i));

        var encoded = new List<int>[prompts.Count];
        for (int i = 0; i < prompts.Count; i++)
        {
            if (prompts[i] is null) throw new ArgumentException($"prompts[{i}] is null.", nameof(prompts));
            var ids = new List<int>();
            if (tokenizer.AddsBos && tokenizer.BosTokenId is int bos) ids.Add(bos);
            ids.AddRange(tokenizer.Encode(prompts[i]));
            if (ids.Count == 0)
                throw new ArgumentException($"prompts[{i}] is empty and the tokenizer adds no BOS token: there is nothing to continue.", nameof(prompts));
            encoded[i] = ids;
        }

        // similar lengths together: less padding to compute over
        var texts = new string[prompts.Count];
        using var generator = options.DoSample && options.Seed is long seed ? new torch.Generator((ulong)seed, model.Device) : null;
        foreach (int[] rows in Data.LengthBatches.Plan(encoded.Select(e => e.Count).ToArray(), batchSize))
        {
            int width = rows.Max(i => encoded[i].Count);
            var ids = new long[rows.Length * width];
            var mask = new long[rows.Length * width];
            for (int r = 0; r < rows.Length; r++)
            {
                var tokens = encoded[rows[r]];
                int offset = width - tokens.Count;
                for (int t = 0; t < width; t++)
                {
                    bool real = t >= offset;
                    ids[r * width + t] = real ? tokens[t - offset] : options.PadTokenId!.Value;
                    mask[r * width + t] = real ? 1 : 0;
                }
            }
            using var promptIds = torch.tensor(ids, new long[] { rows.Length, width }, device: model.Device);
            using var promptMask = torch.tensor(mask, new long[] { rows.Length, width }, device: model.Device);
            using var result = Generate(model, promptIds, promptMask, options, generator);
            for (int r = 0; r < rows.Length; r++)
            {
                var tokens = result.NewTokens[r];
                int n = tokens.Length > 0 && eos.Contains(tokens[^1]) ? tokens.Length - 1 : tokens.Length;
                texts[rows[r]] = tokenizer.Decode(tokens.Take(n).Select(t => (int)t), skipSpecialTokens: true);
            }
        }
        return texts;
    }

    /// <summary>The next token of each row [b] from float32 logits [b, V], as Hugging Face's logits processors do.</summary>
    internal static Tensor ChooseNext(Tensor logits, int step, GenerationOptions options, Tensor? eosIndex, torch.Generator? sampler)
    {
        if (step < options.MinNewTokens && eosIndex is not null)
            logits = logits.IndexFill(1, eosIndex, double.NegativeInfinity);
        if (!options.DoSample) return logits.argmax(-1);
        if (options.Temperature != 1.0) logits = logits.Div(options.Temperature);
        long vocab = logits.shape[^1];
        if (options.TopK > 0 && options.TopK < vocab)
        {
            var kth = logits.topk(options.TopK, dim: -1).values.narrow(-1, options.TopK - 1, 1);
            logits = logits.MaskedFill(logits < kth, double.NegativeInfinity);
        }
        if (options.TopP < 1.0)
        {
            // drop the low tail whose total probability is at most 1 - TopP; always keep the most likely token
            var (sorted, indices) = logits.sort(-1, descending: false);
            var cumulative = sorted.softmax(-1).cumsum(-1);
            var remove = cumulative.Le(1.0 - options.TopP);
            remove.select(-1, -1).FillInPlace(false);
            logits = logits.MaskedFill(remove.scatter(-1, indices, remove), double.NegativeInfinity);
        }
        var probs = logits.softmax(-1);
        return torch.multinomial(probs, 1, replacement: false, generator: sampler).squeeze(-1);
    }

    private static void CheckPrompts(Tensor promptIds, Tensor promptMask)
    {
        ArgumentNullException.ThrowIfNull(promptIds);
        ArgumentNullException.ThrowIfNull(promptMask);
        if (promptIds.dim() != 2 || promptIds.shape[0] < 1 || promptIds.shape[1] < 1)
            throw new ArgumentException($"promptIds must be [B, S] with B, S >= 1 (got [{string.Join(", ", promptIds.shape)}]).", nameof(promptIds));
        if (!promptMask.shape.SequenceEqual(promptIds.shape))
            throw new ArgumentException(
                $"promptMask must have promptIds' shape [{string.Join(", ", promptIds.shape)}] (got [{string.Join(", ", promptMask.shape)}]).",
                nameof(promptMask));
        if (promptIds.dtype is not (ScalarType.Int64 or ScalarType.Int32))
            throw new ArgumentException($"promptIds must hold integer token ids (got {promptIds.dtype}).", nameof(promptIds));
        using var lastColumn = promptMask.select(1, -1).to(ScalarType.Int64).cpu();
        var last = lastColumn.data<long>().ToArray();
        for (int r = 0; r < last.Length; r++)
            if (last[r] != 1)
                throw new ArgumentException(
                    $"promptMask row {r} ends in padding: prompts must be left-padded (real tokens at the end of each row).",
                    nameof(promptMask));
    }
}
