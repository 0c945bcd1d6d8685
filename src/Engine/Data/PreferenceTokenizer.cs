using WeakTeacher.Engine.Tokenization;

namespace WeakTeacher.Engine.Data;

/// <summary>Which end of a too-long prompt survives truncation (TRL's <c>truncation_mode</c>).</summary>
public enum TruncationMode
{
    /// <summary>Keep the prompt's end (the turn being answered); TRL's default.</summary>
    KeepEnd,
    /// <summary>Keep the prompt's start.</summary>
    KeepStart,
}

/// <summary>Length limits as TRL's DPOConfig: <c>max_length</c>, <c>max_prompt_length</c>, <c>truncation_mode</c>.</summary>
public sealed record TokenizationOptions
{
    /// <summary>The one default of max_length for every path (training, labelling, reward scoring, the host).</summary>
    public const int DefaultMaxLength = 512;
    /// <summary>The one default of max_prompt_length for every path.</summary>
    public const int DefaultMaxPromptLength = 256;

    public int MaxLength { get; init; } = DefaultMaxLength;
    public int MaxPromptLength { get; init; } = DefaultMaxPromptLength;
    public TruncationMode TruncationMode { get; init; } = TruncationMode.KeepEnd;

    internal void Validate()
    {
        if (MaxPromptLength <= 0) throw new ArgumentOutOfRangeException(nameof(MaxPromptLength), MaxPromptLength, "max prompt length must be positive");
        if (MaxLength <= MaxPromptLength)
            throw new ArgumentOutOfRangeException(nameof(MaxLength), MaxLength, $"max length must exceed the max prompt length ({MaxPromptLength})");
    }
}

/// <summary>Token ids of one preference pair: the shared prompt (with BOS) and each response (with EOS).</summary>
public sealed record TokenizedPair(int[] PromptIds, int[] ChosenIds, int[] RejectedIds)
{
    public int ChosenLength => PromptIds.Length + ChosenIds.Length;
    public int RejectedLength => PromptIds.Length + RejectedIds.Length;
    /// <summary>The longer side: the width the pair needs in a padded batch.</summary>
    public int LongerLength => Math.Max(ChosenLength, RejectedLength);
}

/// <summary>Token ids of one prompt (with BOS) and one response (with EOS), for SFT or scoring.</summary>
public sealed record TokenizedSequence(int[] PromptIds, int[] ResponseIds)
{
    public int Length => PromptIds.Length + ResponseIds.Length;
}

/// <summary>
/// Tokenises and truncates as TRL's DPOTrainer.tokenize_row (TRL 0.8-0.11): BOS in front of the prompt when the
/// tokenizer adds one (unless already there), EOS after each response (unless already there); then, when prompt +
/// longer response exceeds <see cref="TokenizationOptions.MaxLength"/>, the prompt is cut to
/// <see cref="TokenizationOptions.MaxPromptLength"/> (keeping its end by default, so a cut may drop BOS as TRL's
/// does); if still too long, both responses are cut to MaxLength - MaxPromptLength (which may drop EOS).
/// Prompt and response are encoded separately, so the response tokens are exactly those a model would generate
/// after the prompt.
/// </summary>
public sealed class PreferenceTokenizer
{
    private readonly ITokenizer tokenizer;

    public PreferenceTokenizer(ITokenizer tokenizer, TokenizationOptions? options = null)
    {
        this.tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Options = options ?? new TokenizationOptions();
        Options.Validate();
    }

    public TokenizationOptions Options { get; }
    public ITokenizer Tokenizer => tokenizer;

    public TokenizedPair Tokenize(PreferenceExample example) => Tokenize(example.Prompt, example.Chosen, example.Rejected);

    public TokenizedPair Tokenize(string prompt, string chosen, string rejected)
    {
        var promptIds = EncodePrompt(prompt);
        var chosenIds = EncodeResponse(chosen);
        var rejectedIds = EncodeResponse(rejected);
        Truncate(ref promptIds, ref chosenIds, ref rejectedIds);
        return new TokenizedPair(promptIds, chosenIds, rejectedIds);
    }

    public TokenizedSequence Tokenize(SftExample example) => TokenizeSequence(example.Prompt, example.Response);

    /// <summary>One (prompt, response) sequence under the same rules, the response being its own "longer response".</summary>
    public TokenizedSequence TokenizeSequence(string prompt, string response)
    {
        var promptIds = EncodePrompt(prompt);
        var responseIds = EncodeResponse(response);
        var unused = responseIds;
        Truncate(ref promptIds, ref responseIds, ref unused);
        return new TokenizedSequence(promptIds, responseIds);
    }

    /// <summary>Prompt ids as a model sees them before its response: BOS (when the tokenizer adds one) + text.</summary>
    public int[] EncodePrompt(string prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        var ids = tokenizer.Encode(prompt);
        bool addBos = tokenizer.AddsBos && tokenizer.BosTokenId is int bos && (ids.Count == 0 || ids[0] != bos);
        var result = new int[ids.Count + (addBos ? 1 : 0)];
        if (addBos) result[0] = tokenizer.BosTokenId!.Value;
        for (int i = 0; i < ids.Count; i++) result[i + (addBos ? 1 : 0)] = ids[i];
        return result;
    }

    /// <summary>Response ids: the text followed by EOS (unless it already ends with it).</summary>
    public int[] EncodeResponse(string response)
    {
        ArgumentNullException.ThrowIfNull(response);
        var ids = tokenizer.Encode(response);
        bool addEos = ids.Count == 0 || ids[^1] != tokenizer.EosTokenId;
        var result = new int[ids.Count + (addEos ? 1 : 0)];
        for (int i = 0; i < ids.Count; i++) result[i] = ids[i];
        if (addEos) result[^1] = tokenizer.EosTokenId;
        return result;
    }

    private void Truncate(ref int[] prompt, ref int[] first, ref int[] second)
    {
        int maxLength = Options.MaxLength, maxPrompt = Options.MaxPromptLength;
        int longer = Math.Max(first.Length, second.Length);
        if (prompt.Length + longer > maxLength && prompt.Length > maxPrompt)
            prompt = Options.TruncationMode == TruncationMode.KeepEnd ? prompt[^maxPrompt..] : prompt[..maxPrompt];
        if (prompt.Length + longer > maxLength)
        {
            int keep = maxLength - maxPrompt;
            if (first.Length > keep) first = first[..keep];
            if (second.Length > keep) second = second[..keep];
        }
    }
}
