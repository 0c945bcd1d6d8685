namespace WeakTeacher.Engine.Data;

/// <summary>The layouts of preference and pair files that the readers understand.</summary>
public enum DataFormat
{
    /// <summary>Tell the format from the first row.</summary>
    Auto,
    /// <summary>Anthropic HH-RLHF: <c>chosen</c>/<c>rejected</c> full "\n\nHuman: ... \n\nAssistant: ..." transcripts.</summary>
    HhRlhf,
    /// <summary><c>prompt</c>, <c>chosen</c>, <c>rejected</c> as plain strings.</summary>
    Explicit,
    /// <summary><c>chosen</c>/<c>rejected</c> (and optionally <c>prompt</c>) as lists of {role, content} messages.</summary>
    Conversational,
    /// <summary><c>prompt</c>, <c>response_a</c>, <c>response_b</c>, optional <c>label</c>/<c>preferred</c>.</summary>
    Unlabelled,
}

/// <summary>How a conversational row laid out its prompt, so a writer can give the same layout back.</summary>
public enum ConversationLayout
{
    /// <summary>Not a conversational row.</summary>
    None,
    /// <summary><c>prompt</c> (a message list or a string); <c>chosen</c>/<c>rejected</c> hold only the reply (TRL's explicit-prompt layout).</summary>
    Replies,
    /// <summary>No <c>prompt</c>; <c>chosen</c>/<c>rejected</c> hold the whole conversation (TRL's implicit-prompt layout).</summary>
    ImplicitPrompt,
    /// <summary><c>prompt</c> is a string and <c>chosen</c>/<c>rejected</c> hold the whole conversation (UltraFeedback-binarized).</summary>
    PromptTextWithFullConversation,
}

/// <summary>How a labelled file is turned into unlabelled pairs.</summary>
public enum UnlabelledOrder
{
    /// <summary>A/B order swapped per row by a seeded draw, so position carries no label information.</summary>
    SeededSwap,
    /// <summary>Response A is always the human-chosen one.</summary>
    ChosenFirst,
}

/// <summary>One chat message.</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>What kind of text a prompt was in its file.</summary>
public enum PromptKind
{
    /// <summary>A bare question/instruction.</summary>
    Plain,
    /// <summary>An HH "\n\nHuman: ... \n\nAssistant:" transcript, ending at the assistant turn to answer.</summary>
    HhTranscript,
    /// <summary>A list of chat messages ending with a user turn.</summary>
    Conversation,
}

/// <summary>
/// A prompt as it was in the file, before any template: <see cref="Text"/> is the file's prompt string (null where the
/// file had none) and <see cref="Messages"/> the same prompt as a conversation, so it can be templated per model.
/// </summary>
public sealed record PromptSource(PromptKind Kind, string? Text, IReadOnlyList<ChatMessage> Messages);

/// <summary>
/// A row as read from its file (untemplated), kept so a labelled file can be written back in the input's own format.
/// <see cref="ResponseA"/>/<see cref="ResponseB"/> are the file's texts of the record's first and second response
/// (chosen/rejected for a <see cref="PreferenceExample"/>, A/B after any swap for an <see cref="UnlabelledPair"/>).
/// </summary>
public sealed record SourceRow(
    DataFormat Format,
    string File,
    long Row,
    PromptSource Prompt,
    string ResponseA,
    string ResponseB,
    ConversationLayout Layout = ConversationLayout.None);

/// <summary>
/// A preference pair ready for tokenisation: <see cref="Prompt"/> is the fully templated context and
/// <see cref="Chosen"/>/<see cref="Rejected"/> the response texts that follow it.
/// </summary>
public sealed record PreferenceExample(string Prompt, string Chosen, string Rejected)
{
    /// <summary>The row as it was in its file; null for pairs made in code.</summary>
    public SourceRow? Source { get; init; }

    /// <summary>The prompt as a conversation (for re-templating per model).</summary>
    public IReadOnlyList<ChatMessage>? PromptMessages => Source?.Prompt.Messages;

    /// <summary>The SFT example on the chosen response.</summary>
    public SftExample ToSft() => new(Prompt, Chosen);
}

/// <summary>
/// Two responses to one prompt with no label the model may see. <see cref="HumanLabel"/> is kept aside to measure
/// agreement: 0 = A preferred, 1 = B preferred, null = none.
/// </summary>
public sealed record UnlabelledPair(string? Id, string Prompt, string ResponseA, string ResponseB, int? HumanLabel)
{
    /// <summary>The row as it was in its file; null for pairs made in code.</summary>
    public SourceRow? Source { get; init; }

    /// <summary>The prompt as a conversation (for re-templating per model).</summary>
    public IReadOnlyList<ChatMessage>? PromptMessages => Source?.Prompt.Messages;

    /// <summary>The preference pair with response <paramref name="chosenIndex"/> (0 = A, 1 = B) chosen.</summary>
    public PreferenceExample ToPreference(int chosenIndex)
    {
        if (chosenIndex is not (0 or 1))
            throw new ArgumentOutOfRangeException(nameof(chosenIndex), chosenIndex, "chosen index must be 0 (A) or 1 (B)");
        return chosenIndex == 0
            ? new PreferenceExample(Prompt, ResponseA, ResponseB) { Source = Source }
            : new PreferenceExample(Prompt, ResponseB, ResponseA)
            {
                Source = Source is null ? null : Source with { ResponseA = Source.ResponseB, ResponseB = Source.ResponseA },
            };
    }
}

/// <summary>A supervised fine-tuning example; the loss is taken on <see cref="Response"/> only.</summary>
public sealed record SftExample(string Prompt, string Response);

/// <summary>
/// An unlabelled pair with the label a teacher gave it (<see cref="ChosenIndex"/>: 0 = A, 1 = B), plus per-row
/// fields to write beside it (for example "reward_a", "reward_b", "margin"). Extra values may be
/// double, float, int, long, bool, string or null.
/// </summary>
public sealed record LabelledRow(UnlabelledPair Pair, int ChosenIndex)
{
    public IReadOnlyDictionary<string, object?>? Extra { get; init; }
}
