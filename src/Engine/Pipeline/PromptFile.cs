using System.IO.Compression;
using System.Text.Json;
using WeakTeacher.Engine.Data;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>Held-out evaluation prompts: JSONL (or .jsonl.gz) with a "prompt" string per line; raw questions, untemplated.</summary>
public static class PromptFile
{
    public static IReadOnlyList<string> Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Prompt file '{path}' does not exist.", path);
        using var file = File.OpenRead(path);
        using Stream stream = path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) ? new GZipStream(file, CompressionMode.Decompress) : file;
        using var reader = new StreamReader(stream);
        var prompts = new List<string>();
        long line = 0;
        while (reader.ReadLine() is { } text)
            if (ParseLine(text, path, ++line) is { } prompt) prompts.Add(prompt);
        if (prompts.Count == 0) throw new InvalidDataException($"{path}: no prompts.");
        return prompts;
    }

    /// <summary>The prompt of one line ({"prompt": "..."}, other fields ignored), or null for a blank line.</summary>
    /// <exception cref="DataFormatException">the line is not a JSON object with a non-empty "prompt" string.</exception>
    public static string? ParseLine(string text, string path, long line)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        string location = $"line {line}";
        try
        {
            using var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new DataFormatException(path, location, null, $"expected a JSON object, found {doc.RootElement.ValueKind}");
            if (!doc.RootElement.TryGetProperty("prompt", out var prompt) || prompt.ValueKind == JsonValueKind.Null)
                throw new DataFormatException(path, location, "prompt", "missing (or null)");
            if (prompt.ValueKind != JsonValueKind.String)
                throw new DataFormatException(path, location, "prompt", $"expected a string, found {prompt.ValueKind}");
            string value = prompt.GetString()!;
            if (value.Trim().Length == 0) throw new DataFormatException(path, location, "prompt", "empty text");
            return value;
        }
        catch (JsonException e)
        {
            throw new DataFormatException(path, location, null, $"not valid JSON: {e.Message}");
        }
    }
}
