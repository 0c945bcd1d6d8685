using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Training;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>
/// What a finished (sub-)stage was made from, by name: every field of its request or trainer config that changes the
/// result, with input files and model folders by content (SHA-256), not by path. Stored with the result; a rerun whose
/// settings differ redoes the stage and records which setting differed.
/// </summary>
internal static class StageFingerprint
{
    /// <summary>Fields that do not change a result: logging, checkpoint cadence, cache placement, device.</summary>
    private static readonly HashSet<string> Ignored = new(StringComparer.Ordinal)
    {
        "save_steps", "save_total_limit", "logging_steps", "reference_cache_dir", "device",
    };

    /// <summary>The settings of <paramref name="request"/>; the values at <paramref name="inputPaths"/> (field names, or
    /// a "name." prefix for a map of paths) are replaced by the content identity of the file or folder they name.</summary>
    public static SortedDictionary<string, string> Of(object request, params string[] inputPaths)
    {
        var settings = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, value) in RunSettingsText.Flatten(request))
        {
            if (name.Split('.', '[').Any(Ignored.Contains) || TrainingConfig.IsOmittedDefault(name, value)) continue;
            bool isPath = inputPaths.Any(p => p.EndsWith('.') ? name.StartsWith(p, StringComparison.Ordinal) : name == p);
            settings[name] = isPath ? ContentIdentity(System.Text.Json.JsonSerializer.Deserialize<string>(value) ?? "") : value;
        }
        return settings;
    }

    /// <summary>A trainer config, the model it starts from and its examples' texts.</summary>
    public static SortedDictionary<string, string> OfTraining(TrainingConfig config, string baseModelDir, IEnumerable<IEnumerable<string>> examples)
    {
        var settings = Of(config);
        settings["base_model"] = ContentIdentity(baseModelDir);
        using var hash = new Hashing.Builder();
        long n = 0;
        foreach (var texts in examples)
        {
            foreach (var t in texts) hash.Add(t);
            n++;
        }
        settings["examples"] = hash.Add(n).Hex();
        return settings;
    }

    /// <summary>SHA-256 of a file; of a folder, over the names and contents of its top-level .json and .safetensors
    /// files (weights, config, tokenizer, stage results); "synthetic" and missing paths stand for themselves.</summary>
    public static string ContentIdentity(string path)
    {
        if (File.Exists(path)) return Hashing.FileSha256(path);
        if (!Directory.Exists(path)) return path;
        using var hash = new Hashing.Builder();
        foreach (var file in Directory.GetFiles(path).Where(f => f.EndsWith(".json", StringComparison.Ordinal) || f.EndsWith(".safetensors", StringComparison.Ordinal))
                     .OrderBy(f => f, StringComparer.Ordinal))
            hash.Add(Path.GetFileName(file)).Add(Hashing.FileSha256(file));
        return hash.Hex();
    }

    /// <summary>Null when <paramref name="stored"/> matches <paramref name="now"/>, else the sentence naming the difference.</summary>
    public static string? Mismatch(IReadOnlyDictionary<string, string>? stored, IReadOnlyDictionary<string, string> now)
    {
        if (stored is null) return "the result was written without its settings (an older version)";
        return RunSettingsText.Fingerprint(stored) == RunSettingsText.Fingerprint(now) ? null : RunSettingsText.Describe(stored, now);
    }
}
