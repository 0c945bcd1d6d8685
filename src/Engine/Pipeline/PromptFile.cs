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
        int line = 0;
        while (reader.ReadLine() is { } text)
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            try
            {
                using var doc = JsonDocument.Parse(text);
                if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("prompt", out var prompt))
                    throw new DataFormatException(path, $"line {line}", "prompt", "missing");
                if (prompt.ValueKind != JsonValueKind.String || string.IsNullOrWhiteSpace(prompt.GetString()))
                    throw new DataFormatException(path, $"line {line}", "prompt", "must be a non-empty string");
                prompts.Add(prompt.GetString()!);
            }
            catch (JsonException e)
            {
                throw new DataFormatException(path, $"line {line}", null, $"not valid JSON ({e.Message})");
            }
        }
        if (prompts.Count == 0) throw new InvalidDataException($"{path}: no prompts.");
        return prompts;
    }
}
