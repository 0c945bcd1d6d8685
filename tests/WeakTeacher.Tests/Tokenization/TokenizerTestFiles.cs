using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace WeakTeacher.Tests.Tokenization;

/// <summary>A temporary folder, deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("wt-tok-").FullName;
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public string Sub(string name) => Directory.CreateDirectory(System.IO.Path.Combine(Path, name)).FullName;
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}

/// <summary>
/// A tiny hand-made byte-level BPE (OPT id layout) written the ways checkpoints carry it. The byte alphabet is GPT-2's
/// bytes_to_unicode, re-derived here from its definition so that the engine's own table is checked, not reused.
/// </summary>
internal static class TinyBpe
{
    public static readonly string[] Specials = ["<s>", "<pad>", "</s>", "<unk>"];

    /// <summary>Merges in rank order; each adds the concatenation as the next id (from 260).</summary>
    public static readonly (string, string)[] Merges =
    [
        ("Ġ", "t"),     // 260 Ġt
        ("h", "e"),     // 261 he
        ("Ġt", "he"),   // 262 Ġthe
        ("l", "l"),     // 263 ll
        ("ll", "o"),    // 264 llo
        ("he", "llo"),  // 265 hello
        ("Ġ", "w"),     // 266 Ġw
        ("o", "r"),     // 267 or
        ("Ġw", "or"),   // 268 Ġwor
        ("Ġwor", "l"),  // 269 Ġworl
        ("Ġworl", "d"), // 270 Ġworld
    ];

    /// <summary>GPT-2's bytes_to_unicode in its list order: printable bytes first, the rest mapped to 256+n.</summary>
    public static readonly (byte Byte, char Char)[] Alphabet = BuildAlphabet();

    private static (byte, char)[] BuildAlphabet()
    {
        var bs = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range(0xA1, 0xAC - 0xA1 + 1)).Concat(Enumerable.Range(0xAE, 0xFF - 0xAE + 1)).ToList();
        var cs = bs.ToList();
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!bs.Contains(b)) { bs.Add(b); cs.Add(256 + n++); }
        return bs.Select((b, i) => ((byte)b, (char)cs[i])).ToArray();
    }

    public static Dictionary<string, int> Vocab()
    {
        var vocab = new Dictionary<string, int>();
        foreach (var s in Specials) vocab[s] = vocab.Count;
        foreach (var (_, c) in Alphabet) vocab[c.ToString()] = vocab.Count;
        foreach (var (a, b) in Merges) vocab[a + b] = vocab.Count;
        return vocab;
    }

    /// <summary>Id of the symbol of one byte (ids 4..259).</summary>
    public static int ByteId(byte b) => 4 + Array.FindIndex(Alphabet, x => x.Byte == b);
    public static int CharId(char asciiChar) => ByteId((byte)asciiChar);

    public static readonly JsonSerializerOptions Json = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static void WriteVocabAndMerges(string dir)
    {
        System.IO.File.WriteAllText(Path.Combine(dir, "vocab.json"), JsonSerializer.Serialize(Vocab(), Json));
        System.IO.File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\n" + string.Concat(Merges.Select(m => $"{m.Item1} {m.Item2}\n")));
    }

    /// <summary>OPT's tokenizer_config.json: &lt;/s&gt; is bos and eos, written as AddedToken objects like OPT's hub files.</summary>
    public static void WriteOptConfig(string dir, bool? addBos = true)
    {
        static JsonObject Added(string content) => new() { ["__type"] = "AddedToken", ["content"] = content, ["lstrip"] = false, ["normalized"] = true, ["rstrip"] = false, ["single_word"] = false };
        var cfg = new JsonObject
        {
            ["bos_token"] = Added("</s>"),
            ["eos_token"] = Added("</s>"),
            ["unk_token"] = Added("</s>"),
            ["pad_token"] = Added("<pad>"),
            ["add_prefix_space"] = false,
            ["errors"] = "replace",
        };
        if (addBos is bool b) cfg["add_bos_token"] = b;
        System.IO.File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), cfg.ToJsonString(Json));
    }

    /// <summary>The same model as tokenizer.json (HF tokenizers format), merges as "a b" strings or as ["a", "b"] pairs.</summary>
    public static void WriteTokenizerJson(string dir, bool mergesAsPairs, IEnumerable<(int Id, string Content, bool Special)>? extraAdded = null)
    {
        var added = new JsonArray();
        foreach (var (id, content, special) in Specials.Select((s, i) => (i, s, true)).Concat(extraAdded ?? []))
            added.Add(new JsonObject { ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = !special, ["special"] = special });
        var vocab = new JsonObject();
        foreach (var (k, v) in Vocab()) vocab[k] = v;
        var merges = new JsonArray(Merges.Select(m => mergesAsPairs ? (JsonNode)new JsonArray(m.Item1, m.Item2) : JsonValue.Create($"{m.Item1} {m.Item2}")).ToArray());
        var byteLevel = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = byteLevel.DeepClone(),
            ["post_processor"] = byteLevel.DeepClone(),
            ["decoder"] = byteLevel.DeepClone(),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = null,
                ["continuing_subword_prefix"] = "",
                ["end_of_word_suffix"] = "",
                ["fuse_unk"] = false,
                ["byte_fallback"] = false,
                ["ignore_merges"] = false,
                ["vocab"] = vocab,
                ["merges"] = merges,
            },
        };
        System.IO.File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString(Json));
    }
}

/// <summary>
/// Writes a SentencePiece ModelProto by hand (protobuf wire format): pieces (piece=1, score=2, type=3), TrainerSpec
/// (model_type=3, vocab_size=4, byte_fallback=35, unk/bos/eos/pad ids=40..43) and NormalizerSpec (name=1,
/// add_dummy_prefix=3, remove_extra_whitespaces=4, escape_whitespaces=5).
/// </summary>
internal sealed class SentencePieceModelWriter
{
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Byte = 6;
    public const int Unigram = 1, Bpe = 2;

    private readonly List<(string Piece, float Score, int Type)> _pieces = new();
    public int Count => _pieces.Count;

    public int Add(string piece, float score, int type = Normal)
    {
        _pieces.Add((piece, score, type));
        return _pieces.Count - 1;
    }

    /// <summary>Llama's layout: &lt;unk&gt;=0, &lt;s&gt;=1, &lt;/s&gt;=2, then the 256 byte pieces &lt;0x00&gt;..&lt;0xFF&gt; (ids 3..258).</summary>
    public static SentencePieceModelWriter LlamaLayout()
    {
        var w = new SentencePieceModelWriter();
        w.Add("<unk>", 0, Unknown);
        w.Add("<s>", 0, Control);
        w.Add("</s>", 0, Control);
        for (int b = 0; b < 256; b++) w.Add($"<0x{b:X2}>", 0, Byte);
        return w;
    }

    public byte[] Build(int modelType, bool byteFallback, bool addDummyPrefix = true)
    {
        var model = new List<byte>();
        foreach (var (piece, score, type) in _pieces)
        {
            var p = new List<byte>();
            WriteBytes(p, 1, Encoding.UTF8.GetBytes(piece));
            WriteFloat(p, 2, score);
            WriteVarintField(p, 3, type);
            WriteBytes(model, 1, p.ToArray());
        }
        var trainer = new List<byte>();
        WriteVarintField(trainer, 3, modelType);
        WriteVarintField(trainer, 4, _pieces.Count);
        WriteVarintField(trainer, 35, byteFallback ? 1 : 0);
        WriteVarintField(trainer, 40, 0);
        WriteVarintField(trainer, 41, 1);
        WriteVarintField(trainer, 42, 2);
        WriteVarintField(trainer, 43, -1);
        WriteBytes(model, 2, trainer.ToArray());
        var normalizer = new List<byte>();
        WriteBytes(normalizer, 1, Encoding.UTF8.GetBytes("identity"));
        WriteVarintField(normalizer, 3, addDummyPrefix ? 1 : 0);
        WriteVarintField(normalizer, 4, 0);
        WriteVarintField(normalizer, 5, 1);
        WriteBytes(model, 3, normalizer.ToArray());
        return model.ToArray();
    }

    private static void WriteVarint(List<byte> b, ulong v)
    {
        while (v >= 0x80) { b.Add((byte)(v | 0x80)); v >>= 7; }
        b.Add((byte)v);
    }
    private static void WriteTag(List<byte> b, int field, int wire) => WriteVarint(b, (ulong)((field << 3) | wire));
    private static void WriteVarintField(List<byte> b, int field, long value) { WriteTag(b, field, 0); WriteVarint(b, (ulong)value); }
    private static void WriteFloat(List<byte> b, int field, float value) { WriteTag(b, field, 5); b.AddRange(BitConverter.GetBytes(value)); }
    private static void WriteBytes(List<byte> b, int field, byte[] data) { WriteTag(b, field, 2); WriteVarint(b, (ulong)data.Length); b.AddRange(data); }
}
