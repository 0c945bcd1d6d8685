using WeakTeacher.Engine.Checkpoints;

namespace WeakTeacher.Engine.Generation;

/// <summary>
/// How to continue prompts, with Hugging Face generate()'s meanings: greedy when <see cref="DoSample"/> is
/// false, else sampling from softmax(logits / Temperature) restricted by TopK and TopP (applied in that order).
/// </summary>
public sealed record GenerationOptions
{
    /// <summary>transformers' GenerationConfig default top_k.</summary>
    public const int HfDefaultTopK = 50;

    /// <summary>Most tokens to add per sequence.</summary>
    public int MaxNewTokens { get; init; } = 64;

    /// <summary>EOS is suppressed (its logits set to -inf) until this many new tokens exist.</summary>
    public int MinNewTokens { get; init; }

    /// <summary>Sample (true) or take the arg-max (false, greedy).</summary>
    public bool DoSample { get; init; }

    /// <summary>Divides the logits before sampling; must be positive and finite.</summary>
    public double Temperature { get; init; } = 1.0;

    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches TopP; in (0, 1].</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary>Keep only the TopK most likely tokens; 0 = no limit.</summary>
    public int TopK { get; init; }

    /// <summary>Seed of a private torch generator, so sampling is reproducible; null uses torch's default generator.</summary>
    public long? Seed { get; init; }

    /// <summary>Token ids that end a sequence; null = the model's config (eos_token_id).</summary>
    public IReadOnlyList<int>? EosTokenIds { get; init; }

    /// <summary>Written after a sequence's EOS; null = the model's pad_token_id, else its first EOS id.</summary>
    public int? PadTokenId { get; init; }

    /// <summary>Incremental decoding with a key/value cache (false recomputes the whole sequence each step).</summary>
    public bool UseKvCache { get; init; } = true;

    /// <summary>
    /// Removes finished sequences from the batch (and the cache) instead of feeding them padding; the output
    /// is the same, the remaining steps are cheaper.
    /// </summary>
    public bool DropFinished { get; init; } = true;

    /// <summary>
    /// Options as a checkpoint's generation_config.json states them, with transformers' defaults for what it leaves
    /// out (greedy, temperature 1, top-p 1, top-k 50 when sampling). MaxNewTokens comes from max_new_tokens, else
    /// <paramref name="maxNewTokens"/> (max_length counts the prompt, so it is not used).
    /// </summary>
    public static GenerationOptions FromDefaults(GenerationDefaults defaults, int maxNewTokens = 64) => new()
    {
        MaxNewTokens = defaults.MaxNewTokens ?? maxNewTokens,
        DoSample = defaults.DoSample ?? false,
        Temperature = defaults.Temperature ?? 1.0,
        TopP = defaults.TopP ?? 1.0,
        TopK = defaults.TopK ?? HfDefaultTopK,
        EosTokenIds = defaults.EosTokenIds.Count > 0 ? defaults.EosTokenIds : null,
        PadTokenId = defaults.PadTokenId,
    };

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first option with a bad value.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 1) throw Bad(nameof(MaxNewTokens), MaxNewTokens, "must be at least 1");
        if (MinNewTokens < 0 || MinNewTokens > MaxNewTokens)
            throw Bad(nameof(MinNewTokens), MinNewTokens, $"must be between 0 and MaxNewTokens ({MaxNewTokens})");
        if (!(Temperature > 0) || double.IsInfinity(Temperature))
            throw Bad(nameof(Temperature), Temperature, "must be positive and finite");
        if (!(TopP > 0 && TopP <= 1)) throw Bad(nameof(TopP), TopP, "must be in (0, 1]");
        if (TopK < 0) throw Bad(nameof(TopK), TopK, "must be 0 (no limit) or positive");
        if (PadTokenId is int pad && pad < 0) throw Bad(nameof(PadTokenId), pad, "must not be negative");
        if (EosTokenIds is { } eos && eos.Any(id => id < 0))
            throw Bad(nameof(EosTokenIds), string.Join(",", eos), "must not contain negative ids");
    }

    private static ArgumentException Bad(string option, object value, string rule)
        => new($"GenerationOptions.{option} {rule} (got {value}).", option);
}
