using System.Text.Json;

namespace WeakTeacher.Engine.Tokenization;

/// <summary>A setting's value and the file it came from (for error messages).</summary>
internal readonly record struct Sourced<T>(T Value, string File);

/// <summary>An added token as HF's added_tokens / added_tokens_decoder list it.</summary>
internal readonly record struct AddedToken(int Id, string Content, bool Special);

/// <summary>
/// Special-token settings of a checkpoint, read from tokenizer_config.json, special_tokens_map.json and added_tokens.json,
/// with ids from generation_config.json and config.json as the fallback (the order transformers uses).
/// </summary>
internal sealed class TokenizerSettings
{
    public const string TokenizerConfigFile = "tokenizer_config.json";
    public const string SpecialTokensMapFile = "special_tokens_map.json";
    public const string AddedTokensFile = "added_tokens.json";
    public const string ConfigFile = "config.json";
    public const string GenerationConfigFile = "generation_config.json";

    public Sourced<string>? BosToken, EosToken, UnkToken, PadToken;
    public readonly List<Sourced<string>> AdditionalSpecialTokens = new();
    public Sourced<bool>? AddBosToken;
    public bool AddPrefixSpace;
    public bool CleanUpTokenizationSpaces;
    /// <summary>tokenizer_config.json's added_tokens_decoder and added_tokens.json.</summary>
    public readonly List<Sourced<AddedToken>> AddedTokens = new();
    public Sourced<int>? BosTokenId, EosTokenId, PadTokenId;
    public string? ModelType;

    /// <summary>Reads the settings files of <paramref name="dir"/>; the raw bytes of the tokenizer's own ones go to <paramref name="tokenizerFiles"/> (they travel with Save).</summary>
    public static TokenizerSettings Read(string dir, IDictionary<string, byte[]> tokenizerFiles)
    {
        var s = new TokenizerSettings();
        // Model-level files first so that tokenizer files override them.
        foreach (var file in new[] { ConfigFile, GenerationConfigFile })
        {
            using var doc = TryParse(dir, file, null);
            if (doc is null) continue;
            var path = Path.Combine(dir, file);
            var root = RequireObject(doc, path);
            if (file == ConfigFile && root.TryGetProperty("model_type", out var mt) && mt.ValueKind == JsonValueKind.String)
                s.ModelType = mt.GetString();
            // generation_config.json wins over config.json (it is what generation uses).
            if (ReadId(root, "bos_token_id", path) is int b) s.BosTokenId = new(b, path);
            if (ReadId(root, "eos_token_id", path) is int e) s.EosTokenId = new(e, path);
            if (ReadId(root, "pad_token_id", path) is int p) s.PadTokenId = new(p, path);
        }

        using (var map = TryParse(dir, SpecialTokensMapFile, tokenizerFiles))
        {
            if (map is not null)
            {
                var path = Path.Combine(dir, SpecialTokensMapFile);
                s.ReadNamedTokens(RequireObject(map, path), path);
            }
        }

        using (var added = TryParse(dir, AddedTokensFile, tokenizerFiles))
        {
            if (added is not null)
            {
                var path = Path.Combine(dir, AddedTokensFile);
                foreach (var prop in RequireObject(added, path).EnumerateObject())
                {
                    if (prop.Value.ValueKind != JsonValueKind.Number || !prop.Value.TryGetInt32(out int id) || id < 0)
                        throw new TokenizerLoadException(path, $"token \"{prop.Name}\" must map to a non-negative integer id");
                    s.AddedTokens.Add(new(new AddedToken(id, prop.Name, false), path));
                }
            }
        }

        using (var cfg = TryParse(dir, TokenizerConfigFile, tokenizerFiles))
        {
            if (cfg is not null)
            {
                var path = Path.Combine(dir, TokenizerConfigFile);
                var root = RequireObject(cfg, path);
                // tokenizer_config.json is what from_pretrained reads first; its values win over special_tokens_map.json.
                s.ReadNamedTokens(root, path);
                if (ReadBool(root, "add_bos_token", path) is bool addBos) s.AddBosToken = new(addBos, path);
                s.AddPrefixSpace = ReadBool(root, "add_prefix_space", path) ?? false;
                s.CleanUpTokenizationSpaces = ReadBool(root, "clean_up_tokenization_spaces", path) ?? false;
                if (root.TryGetProperty("added_tokens_decoder", out var dec) && dec.ValueKind != JsonValueKind.Null)
                {
                    if (dec.ValueKind != JsonValueKind.Object)
                        throw new TokenizerLoadException(path, "\"added_tokens_decoder\" must be an object of id -> token");
                    foreach (var prop in dec.EnumerateObject())
                    {
                        if (!int.TryParse(prop.Name, out int id) || id < 0)
                            throw new TokenizerLoadException(path, $"added_tokens_decoder key \"{prop.Name}\" is not a non-negative integer id");
                        var content = ReadTokenValue(prop.Value, $"added_tokens_decoder[\"{prop.Name}\"]", path)
                            ?? throw new TokenizerLoadException(path, $"added_tokens_decoder[\"{prop.Name}\"] has no \"content\"");
                        bool special = prop.Value.ValueKind == JsonValueKind.Object
                            && prop.Value.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True;
                        s.AddedTokens.Add(new(new AddedToken(id, content, special), path));
                    }
                }
            }
        }
        return s;
    }

    private void ReadNamedTokens(JsonElement root, string path)
    {
        if (ReadToken(root, "bos_token", path) is string bos) BosToken = new(bos, path);
        if (ReadToken(root, "eos_token", path) is string eos) EosToken = new(eos, path);
        if (ReadToken(root, "unk_token", path) is string unk) UnkToken = new(unk, path);
        if (ReadToken(root, "pad_token", path) is string pad) PadToken = new(pad, path);
        if (root.TryGetProperty("additional_special_tokens", out var extra) && extra.ValueKind != JsonValueKind.Null)
        {
            if (extra.ValueKind != JsonValueKind.Array)
                throw new TokenizerLoadException(path, "\"additional_special_tokens\" must be a list");
            int i = 0;
            foreach (var item in extra.EnumerateArray())
            {
                var token = ReadTokenValue(item, $"additional_special_tokens[{i++}]", path);
                if (token is not null) AdditionalSpecialTokens.Add(new(token, path));
            }
        }
    }

    private static string? ReadToken(JsonElement root, string key, string path) =>
        root.TryGetProperty(key, out var v) ? ReadTokenValue(v, key, path) : null;

    /// <summary>A token given as "text", {"content": "text", ...} (AddedToken) or null.</summary>
    public static string? ReadTokenValue(JsonElement v, string key, string path)
    {
        switch (v.ValueKind)
        {
            case JsonValueKind.Null: return null;
            case JsonValueKind.String: return v.GetString();
            case JsonValueKind.Object:
                if (v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String) return c.GetString();
                throw new TokenizerLoadException(path, $"\"{key}\" is an object without a string \"content\"");
            default:
                throw new TokenizerLoadException(path, $"\"{key}\" must be a string, an object with \"content\", or null (found {v.ValueKind})");
        }
    }

    private static bool? ReadBool(JsonElement root, string key, string path)
    {
        if (!root.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new TokenizerLoadException(path, $"\"{key}\" must be true or false (found {v.ValueKind})"),
        };
    }

    /// <summary>An id given as an int or a list of ints (eos_token_id of Llama-3 style configs: the first one).</summary>
    private static int? ReadId(JsonElement root, string key, string path)
    {
        if (!root.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int id)) return id;
        if (v.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in v.EnumerateArray())
            {
                if (item.ValueKind == JsonValueKind.Number && item.TryGetInt32(out int first)) return first;
                break;
            }
            if (v.GetArrayLength() == 0) return null;
        }
        throw new TokenizerLoadException(path, $"\"{key}\" must be an integer or a list of integers");
    }

    /// <summary>Parses dir/file when it exists (null otherwise); keeps its bytes in <paramref name="keep"/> when given.</summary>
    public static JsonDocument? TryParse(string dir, string file, IDictionary<string, byte[]>? keep)
    {
        var path = Path.Combine(dir, file);
        if (!File.Exists(path)) return null;
        var bytes = ReadBytes(path);
        var doc = ParseJson(bytes, path);
        if (keep is not null) keep[file] = bytes;
        return doc;
    }

    public static byte[] ReadBytes(string path)
    {
        try { return File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new TokenizerLoadException(path, $"cannot read the file: {e.Message}", e);
        }
    }

    public static JsonDocument ParseJson(byte[] bytes, string path)
    {
        try
        {
            // Files written on Windows may start with a UTF-8 byte order mark, which the JSON reader rejects.
            var json = bytes.AsMemory();
            if (json.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF) json = json[3..];
            return JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new TokenizerLoadException(path, $"not valid JSON ({e.Message})", e);
        }
    }

    public static JsonElement RequireObject(JsonDocument doc, string path) =>
        doc.RootElement.ValueKind == JsonValueKind.Object
            ? doc.RootElement
            : throw new TokenizerLoadException(path, $"expected a JSON object at the top level, found {doc.RootElement.ValueKind}");
}
