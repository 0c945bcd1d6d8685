using System.IO.Compression;
using System.Text.Encodings.Web;
using System.Text.Json;
using Parquet.Schema;
using Parquet.Serialization;

namespace WeakTeacher.Engine.Data;

/// <summary>
/// Writes labelled pairs as a preference file in the input's own format (HH transcripts, explicit strings,
/// conversational message lists, or prompt/response_a/response_b/label), with per-row extra fields, as JSONL,
/// JSONL.gz or Parquet (from the file name). Writes are atomic: a temporary file beside the target, then a rename.
/// </summary>
public static class PreferenceDataWriter
{
    /// <summary>
    /// Writes <paramref name="rows"/> to <paramref name="path"/>. <paramref name="format"/> Auto keeps the first row's
    /// source format (explicit for pairs made in code). Returns the number of rows written.
    /// </summary>
    public static int WriteLabelled(string path, IEnumerable<LabelledRow> rows, DataFormat format = DataFormat.Auto)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(rows);
        var kind = DataFiles.KindFromExtension(path);
        DataFormat resolved = format;
        IEnumerable<(string Name, object? Value)[]> Records()
        {
            long index = 0;
            foreach (var row in rows)
            {
                if (resolved == DataFormat.Auto) resolved = row.Pair.Source?.Format ?? DataFormat.Explicit;
                yield return ToRecord(row, resolved, index++);
            }
        }
        return AtomicFile.Write(path, stream => kind == DataFileKind.Parquet
            ? WriteParquet(stream, Records())
            : WriteJsonLines(kind == DataFileKind.JsonlGzip ? new GZipStream(stream, CompressionLevel.Optimal, leaveOpen: true) : stream, Records()));
    }

    /// <summary>Writes preference pairs (chosen = first response) in their source format or <paramref name="format"/>.</summary>
    public static int WritePreferences(string path, IEnumerable<PreferenceExample> pairs, DataFormat format = DataFormat.Auto) =>
        WriteLabelled(path, pairs.Select(p => new LabelledRow(new UnlabelledPair(null, p.Prompt, p.Chosen, p.Rejected, 0) { Source = p.Source }, 0)), format);

    private static (string Name, object? Value)[] ToRecord(LabelledRow row, DataFormat format, long index)
    {
        if (row.ChosenIndex is not (0 or 1))
            throw new ArgumentException($"row {index}: chosen index must be 0 (A) or 1 (B), not {row.ChosenIndex}", nameof(row));
        var pair = row.Pair;
        var source = pair.Source;
        var prompt = source?.Prompt ?? new PromptSource(PromptKind.Plain, pair.Prompt, new[] { new ChatMessage("user", pair.Prompt) });
        var a = source?.ResponseA ?? pair.ResponseA;
        var b = source?.ResponseB ?? pair.ResponseB;
        var (chosen, rejected) = row.ChosenIndex == 0 ? (a, b) : (b, a);
        var fields = new List<(string, object?)>();
        if (pair.Id is not null) fields.Add(("id", pair.Id));
        switch (format)
        {
            case DataFormat.HhRlhf:
            {
                var transcript = prompt.Kind == PromptKind.HhTranscript && prompt.Text is not null ? prompt.Text : PromptTemplate.Hh.Render(prompt);
                fields.Add(("chosen", transcript + PromptTemplate.Hh.FormatResponse(transcript, chosen)));
                fields.Add(("rejected", transcript + PromptTemplate.Hh.FormatResponse(transcript, rejected)));
                break;
            }
            case DataFormat.Explicit:
                fields.Add(("prompt", prompt.Kind == PromptKind.Conversation ? PromptTemplate.Raw.Render(prompt) : prompt.Text));
                fields.Add(("chosen", chosen));
                fields.Add(("rejected", rejected));
                break;
            case DataFormat.Conversational:
            {
                var layout = source?.Layout is null or ConversationLayout.None ? ConversationLayout.Replies : source.Layout;
                switch (layout)
                {
                    case ConversationLayout.Replies:
                        fields.Add(("prompt", prompt.Kind == PromptKind.Conversation ? Messages(prompt.Messages) : prompt.Text));
                        fields.Add(("chosen", Messages(new[] { new ChatMessage("assistant", chosen) })));
                        fields.Add(("rejected", Messages(new[] { new ChatMessage("assistant", rejected) })));
                        break;
                    default:
                        if (layout == ConversationLayout.PromptTextWithFullConversation)
                            fields.Add(("prompt", prompt.Text ?? PromptTemplate.Raw.Render(prompt)));
                        fields.Add(("chosen", Messages(prompt.Messages.Append(new ChatMessage("assistant", chosen)))));
                        fields.Add(("rejected", Messages(prompt.Messages.Append(new ChatMessage("assistant", rejected)))));
                        break;
                }
                break;
            }
            case DataFormat.Unlabelled:
                fields.Add(("prompt", prompt.Kind == PromptKind.Conversation && prompt.Text is null ? Messages(prompt.Messages) : prompt.Text));
                fields.Add(("response_a", a));
                fields.Add(("response_b", b));
                fields.Add(("label", (long)row.ChosenIndex));
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(format), format, "no writer for this format");
        }
        if (row.Extra is not null)
            foreach (var (name, value) in row.Extra)
            {
                if (fields.Any(f => f.Item1 == name))
                    throw new ArgumentException($"row {index}: extra field '{name}' clashes with a field of the {format} format");
                fields.Add((name, Normalize(name, value, index)));
            }
        return fields.ToArray();
    }

    private static List<Dictionary<string, object>> Messages(IEnumerable<ChatMessage> messages) =>
        messages.Select(m => new Dictionary<string, object> { ["role"] = m.Role, ["content"] = m.Content }).ToList();

    private static object? Normalize(string name, object? value, long index) => value switch
    {
        null => null,
        double d when !double.IsFinite(d) => throw new ArgumentException($"row {index}: extra field '{name}' is {d}, which JSON and the readers cannot hold"),
        float f when !float.IsFinite(f) => throw new ArgumentException($"row {index}: extra field '{name}' is {f}, which JSON and the readers cannot hold"),
        double or string or bool or long => value,
        float f => (double)f,
        int i => (long)i,
        _ => throw new ArgumentException($"row {index}: extra field '{name}' has type {value.GetType().Name}; use double, float, int, long, bool or string"),
    };


    private static int WriteJsonLines(Stream stream, IEnumerable<(string Name, object? Value)[]> records)
    {
        int count = 0;
        var options = new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, SkipValidation = false };
        try
        {
            using var json = new Utf8JsonWriter(stream, options);
            foreach (var record in records)
            {
                json.Reset();
                json.WriteStartObject();
                foreach (var (name, value) in record)
                {
                    json.WritePropertyName(name);
                    WriteValue(json, value);
                }
                json.WriteEndObject();
                json.Flush();
                stream.WriteByte((byte)'\n');
                count++;
            }
        }
        finally
        {
            if (stream is GZipStream) stream.Dispose();
        }
        return count;
    }

    private static void WriteValue(Utf8JsonWriter json, object? value)
    {
        switch (value)
        {
            case null: json.WriteNullValue(); break;
            case string s: json.WriteStringValue(s); break;
            case double d: json.WriteNumberValue(d); break;
            case long l: json.WriteNumberValue(l); break;
            case bool b: json.WriteBooleanValue(b); break;
            case List<Dictionary<string, object>> messages:
                json.WriteStartArray();
                foreach (var message in messages)
                {
                    json.WriteStartObject();
                    json.WriteString("role", (string)message["role"]);
                    json.WriteString("content", (string)message["content"]);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
                break;
            default: throw new InvalidOperationException($"no JSON form for {value.GetType().Name}");
        }
    }

    private static Field ColumnField(string name, Type? type)
    {
        if (type is null || type == typeof(string)) return new DataField<string>(name, true);
        if (type == typeof(double)) return new DataField<double?>(name);
        if (type == typeof(long)) return new DataField<long?>(name);
        if (type == typeof(bool)) return new DataField<bool?>(name);
        return new ListField(name, new StructField("element", new DataField<string>("role"), new DataField<string>("content")));
    }

    private static int WriteParquet(Stream stream, IEnumerable<(string Name, object? Value)[]> records)
    {
        // Parquet needs the schema before the first row: rows are gathered, and each column's type is its first
        // non-null value's (integers widen to double when a column mixes them).
        var rows = records.ToList();
        var columns = new List<string>();
        var types = new Dictionary<string, Type?>();
        foreach (var record in rows)
            foreach (var (name, value) in record)
            {
                if (!types.TryGetValue(name, out var known)) { columns.Add(name); types[name] = null; known = null; }
                if (value is null) continue;
                var type = value.GetType();
                if (known is null) types[name] = type;
                else if (known != type)
                {
                    if ((known == typeof(long) && type == typeof(double)) || (known == typeof(double) && type == typeof(long)))
                        types[name] = typeof(double);
                    else
                        throw new ArgumentException($"field '{name}' holds both {known.Name} and {type.Name} values; a Parquet column needs one type");
                }
            }
        var fields = columns.Select(name => ColumnField(name, types[name])).ToArray();
        var data = new List<IDictionary<string, object?>>(rows.Count);
        foreach (var record in rows)
        {
            var dictionary = new Dictionary<string, object?>(columns.Count);
            foreach (var name in columns) dictionary[name] = null;
            foreach (var (name, value) in record)
                dictionary[name] = value is long l && types[name] == typeof(double) ? (double)l : value;
            data.Add(dictionary);
        }
        ParquetSerializer.SerializeUntypedAsync(data, new ParquetSchema(fields), stream).GetAwaiter().GetResult();
        return rows.Count;
    }
}
