using System.Text.Json.Nodes;
using WeakTeacher.Engine.Tokenization;
using Xunit;

namespace WeakTeacher.Tests.Tokenization;

public class HfTokenizerByteLevelTests
{
    private static readonly string[] Texts =
    [
        "hello world", "the hello", " the", "  the", "hello\n\nworld", "the</s>hello", "héllo wörld 😀", "", "world!? 42 tabs\there",
    ];

    private static HfTokenizer LoadOptStyle(TempDir dir)
    {
        TinyBpe.WriteVocabAndMerges(dir.Path);
        TinyBpe.WriteOptConfig(dir.Path);
        return HfTokenizer.Load(dir.Path);
    }

    [Fact]
    public void EncodeGivesTheIdsOfTheHandDerivedMerges()
    {
        using var dir = new TempDir();
        var tok = LoadOptStyle(dir);
        int Id(char c) => TinyBpe.CharId(c);
        // "hello" -> he, ll, llo, hello (ranks 2, 4, 5, 6); " world" -> Ġw, or, Ġwor, Ġworl, Ġworld.
        Assert.Equal([265, 270], tok.Encode("hello world"));
        // "the" has no "t he" merge: t + he. " hello" has no "Ġ he" merge: Ġ + hello.
        Assert.Equal([Id('t'), 261, Id(' '), 265], tok.Encode("the hello"));
        Assert.Equal([262], tok.Encode(" the"));
        // GPT-2's regex gives the first of two spaces its own piece: "  the" -> " " + " the".
        Assert.Equal([Id(' '), 262], tok.Encode("  the"));
        // "\n\n" before a word splits into two pieces; "world" without a leading space only gets "or".
        Assert.Equal([265, Id('\n'), Id('\n'), Id('w'), 267, Id('l'), Id('d')], tok.Encode("hello\n\nworld"));
        // Special tokens in the text are matched whole, not byte-encoded.
        Assert.Equal([Id('t'), 261, 2, 265], tok.Encode("the</s>hello"));
        // é is two UTF-8 bytes, each its own byte symbol.
        Assert.Equal([Id('h'), TinyBpe.ByteId(0xC3), TinyBpe.ByteId(0xA9), 264], tok.Encode("héllo"));
        Assert.Empty(tok.Encode(""));
        Assert.Equal(tok.Encode("hello world"), tok.Encode("xhello world".AsSpan(1)));
    }

    [Fact]
    public void OptStyleConfigPrependsEosAsBos()
    {
        using var dir = new TempDir();
        var tok = LoadOptStyle(dir);
        Assert.Equal(TokenizerKind.ByteLevelBpe, tok.Kind);
        Assert.True(tok.AddsBos);
        Assert.Equal(2, tok.BosTokenId);
        Assert.Equal(2, tok.EosTokenId);
        Assert.Equal(1, tok.PadTokenId);
        Assert.Equal(2, tok.UnkTokenId);
        Assert.Equal(271, tok.VocabSize);
        // Encode never adds the bos itself: callers do, from AddsBos/BosTokenId.
        Assert.DoesNotContain(2, tok.Encode("hello"));
    }

    [Fact]
    public void OptModelTypeAloneMeansBosFromConfigJsonIds()
    {
        using var dir = new TempDir();
        TinyBpe.WriteVocabAndMerges(dir.Path);
        File.WriteAllText(dir.File("config.json"), """{"model_type": "opt", "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}""");
        var tok = HfTokenizer.Load(dir.Path);
        Assert.True(tok.AddsBos);
        Assert.Equal(2, tok.BosTokenId);
        Assert.Equal(2, tok.EosTokenId);
        Assert.Equal(1, tok.PadTokenId);
    }

    [Fact]
    public void Gpt2StyleAddsNothingAndPadFallsBackToEos()
    {
        using var dir = new TempDir();
        TinyBpe.WriteVocabAndMerges(dir.Path);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "add_prefix_space": false}""");
        var tok = HfTokenizer.Load(dir.Path);
        Assert.False(tok.AddsBos);
        Assert.Null(tok.BosTokenId);
        Assert.Equal("</s>", tok.BosToken);
        Assert.Equal(2, tok.EosTokenId);
        Assert.Equal(2, tok.PadTokenId);
    }

    [Fact]
    public void EosIdListInGenerationConfigTakesTheFirst()
    {
        using var dir = new TempDir();
        TinyBpe.WriteVocabAndMerges(dir.Path);
        File.WriteAllText(dir.File("config.json"), """{"model_type": "gpt2", "eos_token_id": 0}""");
        File.WriteAllText(dir.File("generation_config.json"), """{"eos_token_id": [3, 2], "pad_token_id": null}""");
        var tok = HfTokenizer.Load(dir.Path);
        Assert.Equal(3, tok.EosTokenId);
        Assert.Equal(3, tok.PadTokenId);
        Assert.False(tok.AddsBos);
    }

    [Fact]
    public void SpecialTokensMapIsReadWhenTokenizerConfigIsAbsent()
    {
        using var dir = new TempDir();
        TinyBpe.WriteVocabAndMerges(dir.Path);
        File.WriteAllText(dir.File("special_tokens_map.json"), """{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}""");
        var tok = HfTokenizer.Load(dir.Path);
        Assert.Equal(2, tok.EosTokenId);
        Assert.Equal(1, tok.PadTokenId);
        Assert.Equal(3, tok.UnkTokenId);
        Assert.Equal("<s>", tok.BosToken);
        Assert.False(tok.AddsBos);
    }

    [Fact]
    public void AddPrefixSpaceInTokenizerConfigIsHonoured()
    {
        using var dir = new TempDir();
        TinyBpe.WriteVocabAndMerges(dir.Path);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"eos_token": "</s>", "add_prefix_space": true}""");
        var tok = HfTokenizer.Load(dir.Path);
        Assert.Equal([262], tok.Encode("the"));
        Assert.Equal([262], tok.Encode(" the"));
    }

    [Fact]
    public void DecodeSkipsSpecialTokensOnlyWhenAsked()
    {
        using var dir = new TempDir();
        var tok = LoadOptStyle(dir);
        int[] ids = [2, .. tok.Encode("the</s>hello world"), 1, 1];
        Assert.Equal("thehello world", tok.Decode(ids));
        Assert.Equal("</s>the</s>hello world<pad><pad>", tok.Decode(ids, skipSpecialTokens: false));
        // A cut inside a multi-byte character decodes to U+FFFD; ids past the vocabulary (padded embedding rows) to nothing.
        Assert.Equal("h\uFFFD", tok.Decode([TinyBpe.CharId('h'), TinyBpe.ByteId(0xC3)]));
        Assert.Equal("hello", tok.Decode([265, 5000, -1]));
    }

    [Fact]
    public void EncodeDecodeRoundTripsUnicode()
    {
        using var dir = new TempDir();
        var tok = LoadOptStyle(dir);
        foreach (var text in Texts.Where(t => !t.Contains("</s>")))
            Assert.Equal(text, tok.Decode(tok.Encode(text)));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TokenizerJsonGivesTheSameIdsAsVocabAndMerges(bool mergesAsPairs)
    {
        using var dir = new TempDir();
        var slow = LoadOptStyle(dir);
        var fastDir = dir.Sub("fast");
        TinyBpe.WriteTokenizerJson(fastDir, mergesAsPairs);
        TinyBpe.WriteOptConfig(fastDir);
        var fast = HfTokenizer.Load(fastDir);
        Assert.Equal(TokenizerKind.ByteLevelBpe, fast.Kind);
        foreach (var text in Texts)
            Assert.Equal(slow.Encode(text), fast.Encode(text));
        Assert.Equal((slow.AddsBos, slow.BosTokenId, slow.EosTokenId, slow.PadTokenId, slow.VocabSize),
            (fast.AddsBos, fast.BosTokenId, fast.EosTokenId, fast.PadTokenId, fast.VocabSize));
    }

    [Fact]
    public void TokenizerJsonAddedTokensAreSplitOutAndKeptByDecodeWhenNotSpecial()
    {
        using var dir = new TempDir();
        TinyBpe.WriteTokenizerJson(dir.Path, mergesAsPairs: true, extraAdded: [(271, "<|sep|>", false), (272, "<|tool|>", true)]);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"eos_token": "</s>"}""");
        var tok = HfTokenizer.Load(dir.Path);
        Assert.Equal(273, tok.VocabSize);
        var ids = tok.Encode("hello<|sep|> world<|tool|>");
        Assert.Equal([265, 271, 270, 272], ids);
        Assert.Equal("hello<|sep|> world", tok.Decode(ids));
        Assert.Equal("hello<|sep|> world<|tool|>", tok.Decode(ids, skipSpecialTokens: false));
    }

    [Fact]
    public void TokenizerJsonTemplateWithLeadingSpecialTokenMeansBos()
    {
        using var dir = new TempDir();
        TinyBpe.WriteTokenizerJson(dir.Path, mergesAsPairs: false);
        var root = JsonNode.Parse(File.ReadAllText(dir.File("tokenizer.json")))!.AsObject();
        root["post_processor"] = JsonNode.Parse("""
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}}
            """);
        File.WriteAllText(dir.File("tokenizer.json"), root.ToJsonString());
        File.WriteAllText(dir.File("generation_config.json"), """{"eos_token_id": 2}""");
        var tok = HfTokenizer.Load(dir.Path);
        Assert.True(tok.AddsBos);
        Assert.Equal(0, tok.BosTokenId);
        Assert.Equal(2, tok.EosTokenId);
    }

    [Fact]
    public void SaveThenLoadGivesIdenticalFilesAndIds()
    {
        using var dir = new TempDir();
        var tok = LoadOptStyle(dir);
        var saved = dir.Sub("saved");
        tok.Save(saved);
        foreach (var name in new[] { "vocab.json", "merges.txt", "tokenizer_config.json" })
            Assert.Equal(File.ReadAllBytes(dir.File(name)), File.ReadAllBytes(Path.Combine(saved, name)));
        var back = HfTokenizer.Load(saved);
        foreach (var text in Texts)
            Assert.Equal(tok.Encode(text), back.Encode(text));
        Assert.Equal((tok.AddsBos, tok.BosTokenId, tok.EosTokenId, tok.PadTokenId), (back.AddsBos, back.BosTokenId, back.EosTokenId, back.PadTokenId));

        // Saving into the folder it came from rewrites the same bytes.
        tok.Save(dir.Path);
        Assert.Equal(File.ReadAllBytes(dir.File("vocab.json")), File.ReadAllBytes(Path.Combine(saved, "vocab.json")));
    }
}
