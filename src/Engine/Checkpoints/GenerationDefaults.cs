using System.Text.Json;
using System.Text.Json.Nodes;
using WeakTeacher.Engine.Models;

namespace WeakTeacher.Engine.Checkpoints;

/// <summary>
/// A checkpoint's generation_config.json (or, without one, what config.json implies). Null means "not stated";
/// transformers then uses do_sample = false, temperature = 1, top_p = 1, top_k = 50, max_length = 20.
/// </summary>
public sealed record GenerationDefaults
{
    public IReadOnlyList<int> EosTokenIds { get; init; } = Array.Empty<int>();
    public int? PadTokenId { get; init; }
    public int? BosTokenId { get; init; }
    public int? MaxNewTokens { get; init; }
    public int? MaxLength { get; init; }
    public double? Temperature { get; init; }
    public double? TopP { get; init; }
    public int? TopK { get; init; }
    public bool? DoSample { get; init; }
    /// <summary>The file's JSON as read, so saving keeps fields this type does not model.</summary>
    public JsonObject? Source { get; init; }

    /// <summary>The token ids config.json states, as transformers derives a generation config from it.</summary>
    public static GenerationDefaults FromConfig(ModelConfig config) => new()
    {
        EosTokenIds = config.EosTokenIds,
        PadTokenId = config.PadTokenId,
        BosTokenId = config.BosTokenId,
    };

    /// <summary>Reads generation_config.json; token ids it leaves out come from <paramref name="config"/>.</summary>
    /// <exception cref="CheckpointException">malformed JSON or a field of the wrong type.</exception>
    public static GenerationDefaults Load(string path, ModelConfig? config = null)
    {
        if (!File.Exists(path)) throw new CheckpointException(path, "generation_config.json not found");
        JsonObject obj;
        try
        {
            obj = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new CheckpointException(path, "expected a JSON object at the top level");
        }
        catch (JsonException e)
        {
            throw new CheckpointException(path, $"malformed JSON: {e.Message}", e);
        }
        var r = new ModelConfig.FieldReader(obj, path);
        var eos = r.IntOrList("eos_token_id");
        return new GenerationDefaults
        {
            EosTokenIds = eos.Count > 0 || config is null ? eos : config.EosTokenIds,
            PadTokenId = r.Int("pad_token_id") ?? config?.PadTokenId,
            BosTokenId = r.Int("bos_token_id") ?? config?.BosTokenId,
            MaxNewTokens = r.Int("max_new_tokens"),
            MaxLength = r.Int("max_length"),
            Temperature = r.Double("temperature"),
            TopP = r.Double("top_p"),
            TopK = r.Int("top_k"),
            DoSample = r.Bool("do_sample"),
            Source = (JsonObject)obj.DeepClone(),
        };
    }

    /// <summary>generation_config.json: the original fields with the modelled ones written over them.</summary>
    public JsonObject ToJson()
    {
        var o = Source is null ? new JsonObject() : (JsonObject)Source.DeepClone();
        void Set(string name, JsonNode? value)
        {
            if (value is null) o.Remove(name);
            else o[name] = value;
        }
        Set("bos_token_id", BosTokenId);
        Set("pad_token_id", PadTokenId);
        Set("eos_token_id", EosTokenIds.Count switch
        {
            0 => null,
            1 => EosTokenIds[0],
            _ => new JsonArray(EosTokenIds.Select(id => (JsonNode?)id).ToArray()),
        });
        Set("max_new_tokens", MaxNewTokens);
        Set("max_length", MaxLength);
        Set("temperature", Temperature);
        Set("top_p", TopP);
        Set("top_k", TopK);
        Set("do_sample", DoSample);
        return o;
    }
}
