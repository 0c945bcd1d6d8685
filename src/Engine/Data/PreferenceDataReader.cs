using System.Text.Json;

namespace WeakTeacher.Engine.Data;

/// <summary>
/// Streams preference and pair files (JSONL, JSONL.gz, Parquet) in the formats people already have: Anthropic
/// HH-RLHF transcripts, explicit prompt/chosen/rejected strings, conversational message lists (UltraFeedback-binarized
/// and TRL layouts) and unlabelled prompt/response_a/response_b pairs. The format is told from the first row unless
/// <see cref="DataReadOptions.Format"/> forces it. A row that cannot be used throws <see cref="DataFormatException"/>
/// naming file, line/row and field, or is skipped and counted in the <see cref="DataReadReport"/> when
/// <see cref="DataReadOptions.SkipInvalidRows"/> is set.
/// </summary>
public static class PreferenceDataReader
{
    /// <summary>
    /// Preference pairs, prompts templated by <see cref="DataReadOptions.Template"/>. Unlabelled files serve when every
    /// row has a label (0 = response_a chosen).
    /// </summary>
    public static IEnumerable<PreferenceExample> ReadPreferences(string path, DataReadOptions? options = null, DataReadReport? report = null)
    {
        options ??= new DataReadOptions();
        foreach (var row in ReadParsed(path, options, report, requireLabel: true))
        {
            var source = row.Label == 0 ? row.Source : row.Source with { ResponseA = row.Source.ResponseB, ResponseB = row.Source.ResponseA };
            var prompt = options.Template.Render(source.Prompt);
            yield return new PreferenceExample(
                prompt,
                options.Template.FormatResponse(prompt, source.ResponseA),
                options.Template.FormatResponse(prompt, source.ResponseB)) { Source = source };
        }
    }

    /// <summary>
    /// Unlabelled pairs. A labelled file is read with its label kept aside in <see cref="UnlabelledPair.HumanLabel"/>;
    /// the A/B order follows <see cref="DataReadOptions.PairOrder"/> (a seeded swap per row by default, deterministic
    /// from <see cref="DataReadOptions.Seed"/> and the row's ordinal in the file, whatever the container).
    /// </summary>
    public static IEnumerable<UnlabelledPair> ReadUnlabelled(string path, DataReadOptions? options = null, DataReadReport? report = null)
    {
        options ??= new DataReadOptions();
        foreach (var row in ReadParsed(path, options, report, requireLabel: false))
        {
            var source = row.Source;
            var label = row.Label;
            if (source.Format != DataFormat.Unlabelled && options.PairOrder == UnlabelledOrder.SeededSwap
                && SeededRandom.Bit(options.Seed, row.Ordinal))
            {
                source = source with { ResponseA = source.ResponseB, ResponseB = source.ResponseA };
                label = 1 - label;
            }
            var prompt = options.Template.Render(source.Prompt);
            yield return new UnlabelledPair(
                row.Id, prompt,
                options.Template.FormatResponse(prompt, source.ResponseA),
                options.Template.FormatResponse(prompt, source.ResponseB),
                label) { Source = source };
        }
    }

    /// <summary>SFT examples on the chosen response of each preference pair.</summary>
    public static IEnumerable<SftExample> ReadSft(string path, DataReadOptions? options = null, DataReadReport? report = null) =>
        ReadPreferences(path, options, report).Select(p => p.ToSft());

    /// <summary>The format of the file's first row, without reading further.</summary>
    public static DataFormat DetectFormat(string path)
    {
        foreach (var raw in DataFiles.ReadRows(path))
        {
            if (raw.ParseError is not null) throw new DataFormatException(path, raw.Location, null, raw.ParseError);
            return Detect(path, raw);
        }
        throw new DataFormatException(path, "line 1", null, "the file has no rows");
    }

    internal sealed record ParsedRow(SourceRow Source, string? Id, int? Label, long Ordinal = 0);

    private static IEnumerable<ParsedRow> ReadParsed(string path, DataReadOptions options, DataReadReport? report, bool requireLabel)
    {
        ArgumentNullException.ThrowIfNull(path);
        report ??= new DataReadReport();
        report.Path = path;
        var format = options.Format;
        report.Format = format;
        foreach (var raw in DataFiles.ReadRows(path))
        {
            ParsedRow? parsed = null;
            try
            {
                if (raw.ParseError is not null) throw new DataFormatException(path, raw.Location, null, raw.ParseError);
                if (format == DataFormat.Auto)
                {
                    format = Detect(path, raw);
                    report.Format = format;
                }
                parsed = Parse(path, raw, format) with { Ordinal = raw.Ordinal };
                if (requireLabel && parsed.Label is null)
                    throw new DataFormatException(path, raw.Location, "label",
                        "this pair has no label (label/preferred), so it cannot be read as a preference; read it as unlabelled");
            }
            catch (DataFormatException e) when (options.SkipInvalidRows)
            {
                report.Skip(e.Message, options.MaxSkippedReasons);
                continue;
            }
            report.RowsRead++;
            yield return parsed;
        }
    }

    private static readonly string[] IdFields = { "id", "prompt_id" };

    private static DataFormat Detect(string path, RawRow raw)
    {
        var row = raw.Value;
        if (Has(row, "response_a") || Has(row, "response_b")) return DataFormat.Unlabelled;
        if (Has(row, "chosen") || Has(row, "rejected"))
        {
            var chosen = Has(row, "chosen") ? row.GetProperty("chosen") : row.GetProperty("rejected");
            if (chosen.ValueKind == JsonValueKind.Array) return DataFormat.Conversational;
            return Has(row, "prompt") ? DataFormat.Explicit : DataFormat.HhRlhf;
        }
        var names = string.Join(", ", row.EnumerateObject().Select(p => p.Name));
        throw new DataFormatException(path, raw.Location, null,
            $"cannot tell the format from fields [{names}]: expected chosen/rejected (HH-RLHF), prompt/chosen/rejected " +
            "(strings or message lists) or prompt/response_a/response_b");
    }

    private static ParsedRow Parse(string path, RawRow raw, DataFormat format)
    {
        var reader = new FieldReader(path, raw);
        var id = reader.OptionalId(IdFields);
        switch (format)
        {
            case DataFormat.HhRlhf:
            {
                var chosen = reader.String("chosen");
                var rejected = reader.String("rejected");
                var (prompt, chosenResponse, rejectedResponse) = SplitHh(reader, chosen, rejected);
                var source = new PromptSource(PromptKind.HhTranscript, prompt, reader.Guard("chosen", () => PromptTemplate.ParseHhTranscript(prompt)));
                return new ParsedRow(new SourceRow(format, path, raw.Row, source, chosenResponse, rejectedResponse), id, 0);
            }
            case DataFormat.Explicit:
            {
                var prompt = PlainPrompt(reader, reader.String("prompt"));
                var chosen = reader.String("chosen");
                var rejected = reader.String("rejected");
                return new ParsedRow(new SourceRow(format, path, raw.Row, prompt, chosen, rejected), id, 0);
            }
            case DataFormat.Conversational:
                return ParseConversational(reader, id, format);
            case DataFormat.Unlabelled:
            {
                var prompt = reader.Kind("prompt") == JsonValueKind.Array
                    ? ConversationPrompt(reader, reader.Messages("prompt"), "prompt", null)
                    : PlainPrompt(reader, reader.String("prompt"));
                var a = reader.String("response_a");
                var b = reader.String("response_b");
                var layout = reader.Kind("prompt") == JsonValueKind.Array ? ConversationLayout.Replies : ConversationLayout.None;
                return new ParsedRow(new SourceRow(format, path, raw.Row, prompt, a, b, layout), id, reader.OptionalLabel());
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(format), format, "no reader for this format");
        }
    }

    /// <summary>
    /// HH prompt split as TRL's hh-rlhf processing: the prompt is the shared start of chosen and rejected, cut back to
    /// (and including) the last "\n\nAssistant:" inside it; each response is the rest of its transcript.
    /// </summary>
    internal static (string Prompt, string Chosen, string Rejected) SplitHh(FieldReader reader, string chosen, string rejected)
    {
        int shared = chosen.AsSpan().CommonPrefixLength(rejected);
        int cue = chosen.AsSpan(0, shared).LastIndexOf(PromptTemplate.AssistantMarker.AsSpan(), StringComparison.Ordinal);
        if (cue < 0)
            throw reader.Error("chosen", "chosen and rejected share no \"\\n\\nAssistant:\" turn, so the HH prompt cannot be split off");
        int end = cue + PromptTemplate.AssistantMarker.Length;
        var chosenResponse = chosen[end..];
        var rejectedResponse = rejected[end..];
        if (chosenResponse.Trim().Length == 0) throw reader.Error("chosen", "the response after the last shared Assistant turn is empty");
        if (rejectedResponse.Trim().Length == 0) throw reader.Error("rejected", "the response after the last shared Assistant turn is empty");
        return (chosen[..end], chosenResponse, rejectedResponse);
    }

    private static PromptSource PlainPrompt(FieldReader reader, string prompt)
    {
        if (PromptTemplate.IsHhTranscript(prompt))
            return new PromptSource(PromptKind.HhTranscript, prompt, reader.Guard("prompt", () => PromptTemplate.ParseHhTranscript(prompt)));
        return new PromptSource(PromptKind.Plain, prompt, new[] { new ChatMessage("user", prompt) });
    }

    private static PromptSource ConversationPrompt(FieldReader reader, IReadOnlyList<ChatMessage> messages, string field, string? text)
    {
        if (messages.Count == 0) throw reader.Error(field, "the prompt has no messages");
        if (!string.Equals(messages[^1].Role, "user", StringComparison.OrdinalIgnoreCase))
            throw reader.Error(field, $"the prompt must end with a user message, not '{messages[^1].Role}'");
        return new PromptSource(PromptKind.Conversation, text, messages);
    }

    private static ParsedRow ParseConversational(FieldReader reader, string? id, DataFormat format)
    {
        var chosen = reader.Messages("chosen");
        var rejected = reader.Messages("rejected");
        var promptKind = reader.Kind("prompt");
        PromptSource prompt;
        ConversationLayout layout;
        int strip;
        if (promptKind == JsonValueKind.Array)
        {
            prompt = ConversationPrompt(reader, reader.Messages("prompt"), "prompt", null);
            // TRL's explicit-prompt layout holds only replies; some files repeat the prompt turns in chosen/rejected.
            strip = StartsWith(chosen, prompt.Messages) && StartsWith(rejected, prompt.Messages) ? prompt.Messages.Count : 0;
            layout = ConversationLayout.Replies;
        }
        else
        {
            string? promptText = promptKind is JsonValueKind.Undefined or JsonValueKind.Null ? null : reader.String("prompt");
            // The prompt is the shared start of both conversations, cut back to its last user turn (TRL's extract_prompt).
            int shared = 0;
            while (shared < chosen.Count && shared < rejected.Count && chosen[shared] == rejected[shared]) shared++;
            while (shared > 0 && !string.Equals(chosen[shared - 1].Role, "user", StringComparison.OrdinalIgnoreCase)) shared--;
            if (shared > 0)
            {
                prompt = ConversationPrompt(reader, chosen.Take(shared).ToArray(), "chosen", promptText);
                layout = promptText is null ? ConversationLayout.ImplicitPrompt : ConversationLayout.PromptTextWithFullConversation;
            }
            else if (promptText is not null)
            {
                // A string prompt with reply-only lists.
                prompt = PlainPrompt(reader, promptText);
                layout = ConversationLayout.Replies;
            }
            else
            {
                throw reader.Error("chosen", "chosen and rejected share no user turn and there is no prompt field, so the prompt cannot be split off");
            }
            strip = shared;
        }
        var chosenReply = Reply(reader, chosen, strip, "chosen");
        var rejectedReply = Reply(reader, rejected, strip, "rejected");
        return new ParsedRow(new SourceRow(format, reader.Path, reader.Row.Row, prompt, chosenReply, rejectedReply, layout), id, 0);
    }

    private static bool StartsWith(IReadOnlyList<ChatMessage> conversation, IReadOnlyList<ChatMessage> prefix)
    {
        if (prefix.Count >= conversation.Count) return false;
        for (int i = 0; i < prefix.Count; i++)
            if (conversation[i] != prefix[i]) return false;
        return true;
    }

    private static string Reply(FieldReader reader, IReadOnlyList<ChatMessage> conversation, int skip, string field)
    {
        int count = conversation.Count - skip;
        if (count != 1)
            throw reader.Error(field, $"expected exactly one assistant message after the prompt, found {count}");
        var reply = conversation[skip];
        if (!string.Equals(reply.Role, "assistant", StringComparison.OrdinalIgnoreCase))
            throw reader.Error($"{field}[{skip}].role", $"expected the reply to be an assistant message, not '{reply.Role}'");
        return reply.Content;
    }

    private static bool Has(JsonElement row, string name) =>
        row.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null;

    /// <summary>Typed access to a row's fields; every failure names the file, line/row and field.</summary>
    internal sealed class FieldReader(string path, RawRow row)
    {
        public string Path => path;
        public RawRow Row => row;

        public DataFormatException Error(string? field, string problem) => new(path, row.Location, field, problem);

        public JsonValueKind Kind(string field) =>
            row.Value.TryGetProperty(field, out var value) ? value.ValueKind : JsonValueKind.Undefined;

        public string String(string field)
        {
            if (!row.Value.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null)
                throw Error(field, "missing (or null)");
            if (value.ValueKind != JsonValueKind.String)
                throw Error(field, $"expected a string, found {Describe(value.ValueKind)}");
            var text = value.GetString()!;
            if (text.Trim().Length == 0) throw Error(field, "empty text");
            return text;
        }

        public IReadOnlyList<ChatMessage> Messages(string field)
        {
            if (!row.Value.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null)
                throw Error(field, "missing (or null)");
            if (value.ValueKind != JsonValueKind.Array)
                throw Error(field, $"expected a list of {{role, content}} messages, found {Describe(value.ValueKind)}");
            var messages = new List<ChatMessage>(value.GetArrayLength());
            int index = 0;
            foreach (var item in value.EnumerateArray())
            {
                var at = $"{field}[{index}]";
                if (item.ValueKind != JsonValueKind.Object) throw Error(at, $"expected a {{role, content}} message, found {Describe(item.ValueKind)}");
                if (!item.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String || role.GetString()!.Length == 0)
                    throw Error($"{at}.role", "missing, or not a non-empty string");
                if (!item.TryGetProperty("content", out var content) || content.ValueKind == JsonValueKind.Null)
                    throw Error($"{at}.content", "missing (or null)");
                if (content.ValueKind != JsonValueKind.String)
                    throw Error($"{at}.content", $"expected a string, found {Describe(content.ValueKind)}");
                var text = content.GetString()!;
                if (text.Trim().Length == 0) throw Error($"{at}.content", "empty text");
                messages.Add(new ChatMessage(role.GetString()!, text));
                index++;
            }
            if (messages.Count == 0) throw Error(field, "empty message list");
            return messages;
        }

        public string? OptionalId(string[] fields)
        {
            foreach (var field in fields)
            {
                if (!row.Value.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null) continue;
                return value.ValueKind switch
                {
                    JsonValueKind.String => value.GetString(),
                    JsonValueKind.Number => value.GetRawText(),
                    _ => throw Error(field, $"expected a string or number id, found {Describe(value.ValueKind)}"),
                };
            }
            return null;
        }

        /// <summary>The human label of an unlabelled row: 0 = A preferred, 1 = B, null = none.</summary>
        public int? OptionalLabel()
        {
            foreach (var field in new[] { "label", "preferred" })
            {
                if (!row.Value.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null) continue;
                switch (value.ValueKind)
                {
                    case JsonValueKind.Number when value.TryGetDouble(out var number) && (number == 0 || number == 1):
                        return (int)number;
                    case JsonValueKind.String:
                        switch (value.GetString()!.Trim().ToLowerInvariant())
                        {
                            case "a" or "response_a" or "0": return 0;
                            case "b" or "response_b" or "1": return 1;
                        }
                        break;
                }
                throw Error(field, $"expected 0/1 or \"a\"/\"b\" (0 = response_a preferred), found {value.GetRawText()}");
            }
            return null;
        }

        public T Guard<T>(string field, Func<T> parse)
        {
            try { return parse(); }
            catch (ArgumentException e) { throw Error(field, e.Message); }
        }

        private static string Describe(JsonValueKind kind) => kind switch
        {
            JsonValueKind.String => "a string",
            JsonValueKind.Number => "a number",
            JsonValueKind.Array => "a list",
            JsonValueKind.Object => "an object",
            JsonValueKind.True or JsonValueKind.False => "a boolean",
            _ => kind.ToString(),
        };
    }
}
