using System.Text.Json;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>generations-NAME.jsonl of an evaluation: one {"prompt", "response", "gold_reward"} per held-out prompt.</summary>
internal static class Generations
{
    public static void Write(string path, IReadOnlyList<string> prompts, IReadOnlyList<string> responses, IReadOnlyList<double> scores)
    {
        AtomicFile.Write(path, stream =>
        {
            using var writer = new Utf8JsonWriter(stream);
            for (int i = 0; i < prompts.Count; i++)
            {
                writer.WriteStartObject();
                writer.WriteString("prompt", prompts[i]);
                writer.WriteString("response", responses[i]);
                writer.WriteNumber("gold_reward", scores[i]);
                writer.WriteEndObject();
                writer.Flush();
                stream.WriteByte((byte)'\n');
                writer.Reset();
            }
            return 0;
        });
    }

    /// <summary>The responses of a finished file (a resumed evaluation does not regenerate), else null.</summary>
    public static IReadOnlyList<string>? ReadIfComplete(string path, int expected)
    {
        if (!File.Exists(path)) return null;
        var responses = File.ReadLines(path).Where(l => l.Length > 0)
            .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("response").GetString() ?? "").ToList();
        return responses.Count == expected ? responses : null;
    }
}
