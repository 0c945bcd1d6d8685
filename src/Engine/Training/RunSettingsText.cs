using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// Settings as flat name -> value text (snake_case paths such as "lora.rank", "loss_type[1]"), their fingerprint, and
/// the sentence naming what differs between two of them. Training resume and finished pipeline stages both use it.
/// </summary>
public static class RunSettingsText
{
    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>Every public property of <paramref name="value"/> (serialised as its runtime type), flattened.</summary>
    public static SortedDictionary<string, string> Flatten(object value)
    {
        ArgumentNullException.ThrowIfNull(value);
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        Walk(JsonSerializer.SerializeToNode(value, value.GetType(), Json), "", result);
        return result;
    }

    private static void Walk(JsonNode? node, string path, SortedDictionary<string, string> into)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (key, child) in o) Walk(child, path.Length == 0 ? key : path + "." + key, into);
                break;
            case JsonArray a:
                into[path + ".count"] = a.Count.ToString(CultureInfo.InvariantCulture);
                for (int i = 0; i < a.Count; i++) Walk(a[i], $"{path}[{i}]", into);
                break;
            case null:
                into[path] = "null";
                break;
            default:
                into[path] = node.ToJsonString();
                break;
        }
    }

    /// <summary>SHA-256 over the names and values.</summary>
    public static string Fingerprint(IReadOnlyDictionary<string, string> settings)
    {
        using var hash = new Hashing.Builder();
        foreach (var (name, value) in settings.OrderBy(kv => kv.Key, StringComparer.Ordinal)) hash.Add(name).Add(value);
        return hash.Hex();
    }

    /// <summary>"beta was 0.1, now 0.2; loss_type[0] was ..." for the settings that differ (at most five named).</summary>
    public static string Describe(IReadOnlyDictionary<string, string> before, IReadOnlyDictionary<string, string> now)
    {
        var names = before.Keys.Union(now.Keys).OrderBy(k => k, StringComparer.Ordinal)
            .Where(k => !before.TryGetValue(k, out var a) || !now.TryGetValue(k, out var b) || a != b).ToList();
        if (names.Count == 0) return "the same settings, yet a different fingerprint";
        var text = new StringBuilder();
        foreach (var name in names.Take(5))
        {
            if (text.Length > 0) text.Append("; ");
            text.Append(name).Append(" was ").Append(before.TryGetValue(name, out var a) ? a : "unset")
                .Append(", now ").Append(now.TryGetValue(name, out var b) ? b : "unset");
        }
        if (names.Count > 5) text.Append($" (and {names.Count - 5} more)");
        return text.ToString();
    }
}
