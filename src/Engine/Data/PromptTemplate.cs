using System.Text;

namespace WeakTeacher.Engine.Data;

/// <summary>
/// Turns a prompt (a plain string, an HH transcript or a message list) into the context text a model is trained and
/// sampled on. Each turn is rendered from a format with a "{content}" slot; the prompt ends with the user turn's
/// format, which already holds the cue for the assistant to answer.
/// Named templates: "paper" ("Question: {prompt}\n\nAnswer: ", the paper's official code), "hh"
/// ("\n\nHuman: {prompt}\n\nAssistant:", HH transcripts kept as they are) and "raw" (the prompt unchanged).
/// </summary>
public sealed class PromptTemplate
{
    public const string ContentSlot = "{content}";

    /// <summary>The paper's official format: "Question: {prompt}\n\nAnswer: ".</summary>
    public static PromptTemplate Paper { get; } =
        new("paper", "Question: {content}\n\nAnswer: ", "{content}\n\n", "{content}\n\n", normalizeResponseSpacing: true);

    /// <summary>Anthropic HH: "\n\nHuman: {prompt}\n\nAssistant:"; HH transcripts are kept as they are.</summary>
    public static PromptTemplate Hh { get; } =
        new("hh", "\n\nHuman: {content}\n\nAssistant:", " {content}", "{content}", normalizeResponseSpacing: true);

    /// <summary>The prompt unchanged (TRL's behaviour for plain-text data); responses are not touched either.</summary>
    public static PromptTemplate Raw { get; } =
        new("raw", "{content}", "{content}", "{content}") { isRaw = true };

    private bool isRaw;

    /// <summary>
    /// A template from per-role formats, each holding one "{content}" slot. With
    /// <paramref name="normalizeResponseSpacing"/>, <see cref="FormatResponse"/> puts exactly one space between prompt
    /// and response (for text formats such as "Answer: "); chat formats with special markers leave it off.
    /// </summary>
    public PromptTemplate(string name, string userFormat, string assistantFormat, string systemFormat = "{content}\n\n",
        bool normalizeResponseSpacing = false)
    {
        NormalizesResponseSpacing = normalizeResponseSpacing;
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        foreach (var (format, role) in new[] { (userFormat, "user"), (assistantFormat, "assistant"), (systemFormat, "system") })
            if (format is null || !format.Contains(ContentSlot, StringComparison.Ordinal))
                throw new ArgumentException($"the {role} format of template '{name}' needs a {ContentSlot} slot");
        Name = name;
        UserFormat = userFormat;
        AssistantFormat = assistantFormat;
        SystemFormat = systemFormat;
    }

    public string Name { get; }
    public string UserFormat { get; }
    public string AssistantFormat { get; }
    public string SystemFormat { get; }
    public bool NormalizesResponseSpacing { get; }

    /// <summary>The named template: "paper", "hh" or "raw" (case-insensitive).</summary>
    public static PromptTemplate Get(string name) => name.ToLowerInvariant() switch
    {
        "paper" => Paper,
        "hh" => Hh,
        "raw" => Raw,
        _ => throw new ArgumentException($"unknown prompt template '{name}' (known: paper, hh, raw)", nameof(name)),
    };

    /// <summary>Templated context for a single-turn plain prompt.</summary>
    public string Render(string prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        return isRaw ? prompt : Fill(UserFormat, prompt);
    }

    /// <summary>
    /// Templated context for a prompt string as a file holds it (an evaluation prompt, a pair's prompt): an HH
    /// transcript is rendered from its turns (kept byte for byte by "hh" and "raw", never wrapped a second time), any
    /// other text as a single-turn plain prompt. The data reader classifies prompt strings the same way.
    /// </summary>
    public string RenderText(string prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        return IsHhTranscript(prompt)
            ? Render(new PromptSource(PromptKind.HhTranscript, prompt, ParseHhTranscript(prompt)))
            : Render(prompt);
    }

    /// <summary>Templated context for a prompt as read from a file.</summary>
    public string Render(PromptSource prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        switch (prompt.Kind)
        {
            case PromptKind.Plain:
                return Render(prompt.Text ?? throw new ArgumentException("a plain prompt needs its text"));
            case PromptKind.HhTranscript:
                // HH transcripts are already in HH form: "hh" and "raw" keep them byte for byte.
                if (isRaw || ReferenceEquals(this, Hh)) return prompt.Text ?? Hh.Render(prompt.Messages);
                return Render(prompt.Messages);
            default:
                return Render(prompt.Messages);
        }
    }

    /// <summary>
    /// Templated context for a conversation ending with a user turn. "raw" gives a single user message's content
    /// unchanged and renders longer conversations in HH style (a bare join would lose who said what).
    /// </summary>
    public string Render(IReadOnlyList<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0) throw new ArgumentException("the prompt has no messages");
        if (!string.Equals(messages[^1].Role, "user", StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"the prompt's last message must be a user turn, not '{messages[^1].Role}'");
        if (isRaw)
            return messages.Count == 1 ? messages[0].Content : Hh.Render(messages);
        var text = new StringBuilder();
        foreach (var message in messages)
        {
            var format = message.Role.ToLowerInvariant() switch
            {
                "user" or "human" => UserFormat,
                "assistant" or "gpt" => AssistantFormat,
                "system" => SystemFormat,
                _ => throw new ArgumentException($"unknown message role '{message.Role}' (known: system, user, assistant)"),
            };
            text.Append(Fill(format, message.Content));
        }
        return text.ToString();
    }

    /// <summary>
    /// The response as it follows <paramref name="renderedPrompt"/>: exactly one space between a prompt that ends in
    /// a space or a word ("Answer: " / "Assistant:") and the response, so HH's " reply" and a bare "reply" tokenise the
    /// same under "paper" and "hh". "raw" and templates without <see cref="NormalizesResponseSpacing"/> leave it untouched.
    /// </summary>
    public string FormatResponse(string renderedPrompt, string response)
    {
        ArgumentNullException.ThrowIfNull(renderedPrompt);
        ArgumentNullException.ThrowIfNull(response);
        if (isRaw || !NormalizesResponseSpacing || renderedPrompt.Length == 0 || response.Length == 0) return response;
        var last = renderedPrompt[^1];
        if (last == ' ') return response.TrimStart(' ');
        if (!char.IsWhiteSpace(last) && !char.IsWhiteSpace(response[0])) return " " + response;
        return response;
    }

    /// <summary>
    /// The pair templated for another model, from its source row (a pair made in code, with no source, has its
    /// prompt taken as a plain prompt).
    /// </summary>
    public PreferenceExample Apply(PreferenceExample example)
    {
        ArgumentNullException.ThrowIfNull(example);
        var (prompt, first, second) = Apply(example.Source, example.Prompt, example.Chosen, example.Rejected);
        return example with { Prompt = prompt, Chosen = first, Rejected = second };
    }

    /// <summary>The unlabelled pair templated for another model (see <see cref="Apply(PreferenceExample)"/>).</summary>
    public UnlabelledPair Apply(UnlabelledPair pair)
    {
        ArgumentNullException.ThrowIfNull(pair);
        var (prompt, first, second) = Apply(pair.Source, pair.Prompt, pair.ResponseA, pair.ResponseB);
        return pair with { Prompt = prompt, ResponseA = first, ResponseB = second };
    }

    private (string Prompt, string First, string Second) Apply(SourceRow? source, string prompt, string first, string second)
    {
        var rendered = source is null ? Render(prompt) : Render(source.Prompt);
        return (rendered, FormatResponse(rendered, source?.ResponseA ?? first), FormatResponse(rendered, source?.ResponseB ?? second));
    }

    public override string ToString() => Name;

    private static string Fill(string format, string content) => format.Replace(ContentSlot, content, StringComparison.Ordinal);

    internal const string HumanMarker = "\n\nHuman:";
    internal const string AssistantMarker = "\n\nAssistant:";

    /// <summary>
    /// The turns of an HH transcript ("\n\nHuman: q\n\nAssistant: a\n\nHuman: q2\n\nAssistant:"); the final empty
    /// assistant cue is dropped so the list ends with the user turn to answer. Text before the first marker becomes a
    /// system message.
    /// </summary>
    public static IReadOnlyList<ChatMessage> ParseHhTranscript(string transcript)
    {
        ArgumentNullException.ThrowIfNull(transcript);
        if (transcript.StartsWith("Human:", StringComparison.Ordinal)) transcript = "\n\n" + transcript;
        var messages = new List<ChatMessage>();
        int position = 0;
        string? role = null;
        int contentStart = 0;
        while (true)
        {
            int human = transcript.IndexOf(HumanMarker, position, StringComparison.Ordinal);
            int assistant = transcript.IndexOf(AssistantMarker, position, StringComparison.Ordinal);
            int next = human < 0 ? assistant : assistant < 0 ? human : Math.Min(human, assistant);
            var end = next < 0 ? transcript.Length : next;
            var content = transcript[contentStart..end];
            if (role is null)
            {
                if (content.Trim().Length > 0) messages.Add(new ChatMessage("system", content.Trim()));
            }
            else
            {
                content = content.StartsWith(' ') ? content[1..] : content;
                if (next >= 0 || content.Length > 0 || role == "user")
                    messages.Add(new ChatMessage(role, content));
            }
            if (next < 0) break;
            role = next == human ? "user" : "assistant";
            position = next + (next == human ? HumanMarker.Length : AssistantMarker.Length);
            contentStart = position;
        }
        // The transcript's last "\n\nAssistant:" is the cue to answer, not a turn.
        if (messages.Count > 0 && messages[^1].Role == "assistant" && messages[^1].Content.Length == 0)
            messages.RemoveAt(messages.Count - 1);
        return messages;
    }

    /// <summary>True when <paramref name="prompt"/> is an HH transcript ending at the assistant cue.</summary>
    public static bool IsHhTranscript(string prompt) =>
        (prompt.StartsWith(HumanMarker, StringComparison.Ordinal) || prompt.StartsWith("Human:", StringComparison.Ordinal))
        && prompt.TrimEnd().EndsWith(AssistantMarker, StringComparison.Ordinal);
}
