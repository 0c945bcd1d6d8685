using System.Text.RegularExpressions;
using System.Text.Json;

namespace WeakTeacher.Engine.Tokenization;

/// <summary>A byte-level BPE model as read from vocab.json + merges.txt or tokenizer.json.</summary>
internal sealed class ByteLevelModel
{
    public required Dictionary<string, int> Vocab;
    public required List<(string Left, string Right)> Merges;
    public required string PreTokenizerPattern;
    public required string SourceFile;
    public string? MergesSource;
    public bool AddPrefixSpace;
    public string? UnkToken;
    public int? TemplateBosId;
    public List<Sourced<AddedToken>> AddedTokens = new();
}

/// <summary>Reads the parts of a tokenizer.json (HF tokenizers' format) that a byte-level BPE needs.</summary>
internal static class TokenizerJson
{
    /// <summary>
    /// The byte-level BPE in <paramref name="root"/>, or null when it is not one and <paramref name="fallbackAvailable"/>
    /// (tokenizer.model is there to use instead).
    /// </summary>
    public static ByteLevelModel? Parse(JsonElement root, string path, bool fallbackAvailable)
    {
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new TokenizerLoadException(path, "no \"model\" object");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "BPE";
        bool byteLevel = HasByteLevel(root, "pre_tokenizer") || HasByteLevel(root, "decoder");
        if (type != "BPE" || !byteLevel)
        {
            if (fallbackAvailable) return null;
            throw new TokenizerLoadException(path, type != "BPE"
                ? $"model type \"{type}\" is not supported (only byte-level BPE, or a SentencePiece {HfTokenizer.SentencePieceFile})"
                : $"a BPE model without a ByteLevel pre-tokenizer is not supported here; provide the checkpoint's {HfTokenizer.SentencePieceFile}");
        }

        if (root.TryGetProperty("normalizer", out var norm) && norm.ValueKind != JsonValueKind.Null
            && !(TypeOf(norm) == "Sequence" && norm.TryGetProperty("normalizers", out var ns) && ns.ValueKind == JsonValueKind.Array && ns.GetArrayLength() == 0))
            throw new TokenizerLoadException(path, $"normalizer \"{TypeOf(norm)}\" is not supported (byte-level BPE tokenizers have none)");
        if (model.TryGetProperty("ignore_merges", out var im) && im.ValueKind == JsonValueKind.True)
            throw new TokenizerLoadException(path, "model.ignore_merges=true (Llama-3 style whole-word lookup) is not supported");
        foreach (var key in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0)
                throw new TokenizerLoadException(path, $"model.{key} is not supported for a byte-level BPE");

        if (!model.TryGetProperty("vocab", out var vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
            throw new TokenizerLoadException(path, "model.vocab must be an object of token -> id");
        var vocab = ReadVocab(vocabEl, path, "model.vocab");
        var merges = new List<(string, string)>();
        if (model.TryGetProperty("merges", out var mergesEl) && mergesEl.ValueKind != JsonValueKind.Null)
        {
            if (mergesEl.ValueKind != JsonValueKind.Array) throw new TokenizerLoadException(path, "model.merges must be a list");
            int i = 0;
            foreach (var m in mergesEl.EnumerateArray())
            {
                merges.Add(ReadMerge(m, i, path));
                i++;
            }
        }

        var (pattern, addPrefixSpace) = ReadPreTokenizer(root, path);
        var result = new ByteLevelModel
        {
            Vocab = vocab,
            Merges = merges,
            PreTokenizerPattern = pattern,
            AddPrefixSpace = addPrefixSpace,
            SourceFile = path,
            MergesSource = path,
            UnkToken = model.TryGetProperty("unk_token", out var unk) && unk.ValueKind == JsonValueKind.String ? unk.GetString() : null,
        };

        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind != JsonValueKind.Null)
        {
            if (added.ValueKind != JsonValueKind.Array) throw new TokenizerLoadException(path, "added_tokens must be a list");
            int i = 0;
            foreach (var a in added.EnumerateArray())
            {
                if (a.ValueKind != JsonValueKind.Object
                    || !a.TryGetProperty("id", out var idEl) || idEl.ValueKind != JsonValueKind.Number || !idEl.TryGetInt32(out int id) || id < 0
                    || !a.TryGetProperty("content", out var c) || c.ValueKind != JsonValueKind.String)
                    throw new TokenizerLoadException(path, $"added_tokens[{i}] needs a non-negative integer \"id\" and a string \"content\"");
                bool special = a.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True;
                result.AddedTokens.Add(new(new AddedToken(id, c.GetString()!, special), path));
                i++;
            }
        }
        result.TemplateBosId = ReadTemplateBos(root, path, result);
        return result;
    }

    public static Dictionary<string, int> ReadVocab(JsonElement obj, string path, string where)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var prop in obj.EnumerateObject())
        {
            if (prop.Value.ValueKind != JsonValueKind.Number || !prop.Value.TryGetInt32(out int id) || id < 0)
                throw new TokenizerLoadException(path, $"{(where.Length > 0 ? where + ": " : "")}token \"{HfTokenizer.Truncate(prop.Name)}\" must map to a non-negative integer id");
            vocab[prop.Name] = id;
        }
        if (vocab.Count == 0) throw new TokenizerLoadException(path, $"{(where.Length > 0 ? where + " is" : "the vocabulary is")} empty");
        return vocab;
    }

    /// <summary>A merge as "a b" (tokenizers before 0.20) or ["a", "b"] (newer).</summary>
    private static (string, string) ReadMerge(JsonElement m, int index, string path)
    {
        if (m.ValueKind == JsonValueKind.String)
        {
            var parts = m.GetString()!.Split(' ');
            if (parts.Length == 2 && parts[0].Length > 0 && parts[1].Length > 0) return (parts[0], parts[1]);
        }
        else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2
                 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
        {
            string a = m[0].GetString()!, b = m[1].GetString()!;
            if (a.Length > 0 && b.Length > 0)
            {
                // Microsoft.ML.Tokenizers takes merges as "a b" strings; byte-level tokens never hold a space ('Ġ' stands for it).
                if (a.Contains(' ') || b.Contains(' '))
                    throw new TokenizerLoadException(path, $"model.merges[{index}] has a token containing a space, which a byte-level BPE cannot have");
                return (a, b);
            }
        }
        throw new TokenizerLoadException(path, $"model.merges[{index}] must be \"a b\" or [\"a\", \"b\"], found {HfTokenizer.Truncate(m.GetRawText())}");
    }

    private static string? TypeOf(JsonElement e) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;

    private static bool HasByteLevel(JsonElement root, string key)
    {
        if (!root.TryGetProperty(key, out var e) || e.ValueKind != JsonValueKind.Object) return false;
        if (TypeOf(e) == "ByteLevel") return true;
        foreach (var listKey in new[] { "pretokenizers", "decoders" })
            if (e.TryGetProperty(listKey, out var list) && list.ValueKind == JsonValueKind.Array)
                foreach (var item in list.EnumerateArray())
                    if (TypeOf(item) == "ByteLevel") return true;
        return false;
    }

    /// <summary>The split regex and add_prefix_space of a ByteLevel pre-tokenizer, alone or after one Split in a Sequence.</summary>
    private static (string Pattern, bool AddPrefixSpace) ReadPreTokenizer(JsonElement root, string path)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pre) || pre.ValueKind == JsonValueKind.Null)
            return (@"[\s\S]+", false); // byte-level decoder without pre-tokenizer: the whole text is one piece
        var steps = new List<JsonElement>();
        if (TypeOf(pre) == "Sequence" && pre.TryGetProperty("pretokenizers", out var list) && list.ValueKind == JsonValueKind.Array)
            steps.AddRange(list.EnumerateArray());
        else
            steps.Add(pre);

        string? pattern = null;
        bool addPrefixSpace = false;
        foreach (var step in steps)
        {
            switch (TypeOf(step))
            {
                case "ByteLevel":
                    addPrefixSpace = step.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True;
                    bool useRegex = !step.TryGetProperty("use_regex", out var ur) || ur.ValueKind != JsonValueKind.False;
                    if (useRegex)
                    {
                        if (pattern is not null) throw new TokenizerLoadException(path, "pre_tokenizer splits with two regexes; only one is supported");
                        pattern = ByteLevel.Gpt2Pattern;
                    }
                    break;
                case "Split":
                    if (pattern is not null) throw new TokenizerLoadException(path, "pre_tokenizer splits with two regexes; only one is supported");
                    string behavior = step.TryGetProperty("behavior", out var b) && b.ValueKind == JsonValueKind.String ? b.GetString()! : "";
                    bool invert = step.TryGetProperty("invert", out var inv) && inv.ValueKind == JsonValueKind.True;
                    if (behavior != "Isolated" || invert)
                        throw new TokenizerLoadException(path, $"pre_tokenizer Split with behavior \"{behavior}\"{(invert ? " and invert" : "")} is not supported (only Isolated)");
                    if (!step.TryGetProperty("pattern", out var p) || p.ValueKind != JsonValueKind.Object)
                        throw new TokenizerLoadException(path, "pre_tokenizer Split has no pattern");
                    if (p.TryGetProperty("Regex", out var rx) && rx.ValueKind == JsonValueKind.String) pattern = rx.GetString()!;
                    else if (p.TryGetProperty("String", out var str) && str.ValueKind == JsonValueKind.String) pattern = Regex.Escape(str.GetString()!);
                    else throw new TokenizerLoadException(path, "pre_tokenizer Split pattern must have \"Regex\" or \"String\"");
                    break;
                default:
                    throw new TokenizerLoadException(path, $"pre_tokenizer \"{TypeOf(step)}\" is not supported (ByteLevel and Split only)");
            }
        }
        return (pattern ?? @"[\s\S]+", addPrefixSpace);
    }

    /// <summary>The token a post_processor puts in front of a single sequence (Llama-3's template, RoBERTa's &lt;s&gt;), or null.</summary>
    private static int? ReadTemplateBos(JsonElement root, string path, ByteLevelModel model)
    {
        if (!root.TryGetProperty("post_processor", out var post) || post.ValueKind != JsonValueKind.Object) return null;
        var processors = new List<JsonElement>();
        if (TypeOf(post) == "Sequence" && post.TryGetProperty("processors", out var list) && list.ValueKind == JsonValueKind.Array)
            processors.AddRange(list.EnumerateArray());
        else
            processors.Add(post);

        int? Lookup(string token)
        {
            foreach (var (a, _) in model.AddedTokens) if (a.Content == token) return a.Id;
            if (model.Vocab.TryGetValue(token, out int id)) return id;
            throw new TokenizerLoadException(path, $"post_processor adds \"{token}\", which is not in the vocabulary");
        }

        foreach (var p in processors)
        {
            switch (TypeOf(p))
            {
                case "TemplateProcessing":
                    if (!p.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array || single.GetArrayLength() == 0)
                        return null;
                    var first = single[0];
                    if (!first.TryGetProperty("SpecialToken", out var st)) return null;
                    var name = st.TryGetProperty("id", out var idEl) && idEl.ValueKind == JsonValueKind.String ? idEl.GetString()! : null;
                    if (name is null) throw new TokenizerLoadException(path, "post_processor template SpecialToken has no \"id\"");
                    // The template's own table maps the name to ids; fall back to the vocabulary.
                    if (p.TryGetProperty("special_tokens", out var table) && table.ValueKind == JsonValueKind.Object
                        && table.TryGetProperty(name, out var entry) && entry.TryGetProperty("ids", out var ids)
                        && ids.ValueKind == JsonValueKind.Array && ids.GetArrayLength() == 1 && ids[0].TryGetInt32(out int tid))
                        return tid;
                    return Lookup(name);
                case "RobertaProcessing":
                case "BertProcessing":
                    if (p.TryGetProperty("cls", out var cls) && cls.ValueKind == JsonValueKind.Array && cls.GetArrayLength() == 2
                        && cls[1].TryGetInt32(out int clsId))
                        return clsId;
                    return null;
            }
        }
        return null;
    }
}
