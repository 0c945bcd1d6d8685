using WeakTeacher.Engine.Tokenization;
using Xunit;

namespace WeakTeacher.Tests.Tokenization;

public class SentencePieceTokenizerTests
{
    // Llama layout (unk, <s>, </s>, 256 byte pieces = ids 0..258), then merged pieces scored by merge priority, then characters.
    private const int HelloPiece = 263, SpaceW = 264, Or = 265, Space = 266, L = 269, D = 273;

    private static byte[] LlamaStyleBpeModel()
    {
        var w = SentencePieceModelWriter.LlamaLayout();
        string[] merged = ["▁h", "ll", "▁he", "llo", "▁hello", "▁w", "or"]; // ids 259..265, higher score merges first
        for (int i = 0; i < merged.Length; i++) w.Add(merged[i], -i);
        foreach (var c in new[] { "▁", "e", "h", "l", "o", "w", "r", "d" }) w.Add(c, -100 - w.Count); // ids 266..273
        return w.Build(SentencePieceModelWriter.Bpe, byteFallback: true);
    }

    [Fact]
    public void EncodesWithScoreOrderedMergesAndByteFallback()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("tokenizer.model"), LlamaStyleBpeModel());
        var tok = HfTokenizer.Load(dir.Path);
        Assert.Equal(TokenizerKind.SentencePiece, tok.Kind);
        Assert.Equal(274, tok.VocabSize);
        // "▁hello▁world": ▁h, ll, ▁he, llo, ▁hello, ▁w, or by score; "l" and "d" stay single.
        Assert.Equal([HelloPiece, SpaceW, Or, L, D], tok.Encode("hello world"));
        // The dummy prefix adds one ▁ in front; a leading space gives a second one.
        Assert.Equal([Space, HelloPiece], tok.Encode(" hello"));
        // é and the newline have no piece: their UTF-8 bytes as <0xXX> pieces (id 3 + byte).
        Assert.Equal([259, 3 + 0xC3, 3 + 0xA9, 262, 3 + 0x0A], tok.Encode("héllo\n"));
        // "▁hd": only ▁h is a piece.
        Assert.Equal([259, D], tok.Encode("hd"));
    }

    [Fact]
    public void LlamaDefaultsPrependBosAndRoundTrip()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("tokenizer.model"), LlamaStyleBpeModel());
        var tok = HfTokenizer.Load(dir.Path);
        Assert.True(tok.AddsBos);
        Assert.Equal(1, tok.BosTokenId);
        Assert.Equal(2, tok.EosTokenId);
        Assert.Equal(2, tok.PadTokenId);
        Assert.Equal(0, tok.UnkTokenId);
        Assert.DoesNotContain(1, tok.Encode("hello"));
        // The model's control tokens are matched whole in the text, as transformers' LlamaTokenizer does.
        Assert.Equal([HelloPiece, 2], tok.Encode("hello</s>"));
        foreach (var text in new[] { "hello world", "héllo wörld 😀\n", "  two spaces" })
            Assert.Equal(text, tok.Decode(tok.Encode(text)));
        Assert.Equal("hello world", tok.Decode([1, HelloPiece, SpaceW, Or, L, D, 2]));
        Assert.Contains("</s>", tok.Decode([HelloPiece, 2], skipSpecialTokens: false));
    }

    [Fact]
    public void TokenizerConfigOverridesTheModelDefaults()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("tokenizer.model"), LlamaStyleBpeModel());
        File.WriteAllText(dir.File("tokenizer_config.json"), """
            {"add_bos_token": false, "bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>", "pad_token": "<unk>",
             "added_tokens_decoder": {"0": {"content": "<unk>", "special": true}, "1": {"content": "<s>", "special": true}, "2": {"content": "</s>", "special": true}}}
            """);
        var tok = HfTokenizer.Load(dir.Path);
        Assert.False(tok.AddsBos);
        Assert.Null(tok.BosTokenId);
        Assert.Equal(0, tok.PadTokenId);
        // Special tokens in the text are matched whole.
        Assert.Contains(2, tok.Encode("hello</s>"));
    }

    [Fact]
    public void SentencePieceStyleTokenizerJsonDefersToTokenizerModel()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("tokenizer.model"), LlamaStyleBpeModel());
        // Llama's fast tokenizer.json: a BPE model with byte_fallback and a Metaspace-like normalizer, not byte-level.
        File.WriteAllText(dir.File("tokenizer.json"), """
            {"version": "1.0", "added_tokens": [], "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
             "pre_tokenizer": null, "post_processor": null, "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}]},
             "model": {"type": "BPE", "byte_fallback": true, "vocab": {"<unk>": 0}, "merges": []}}
            """);
        var tok = HfTokenizer.Load(dir.Path);
        Assert.Equal(TokenizerKind.SentencePiece, tok.Kind);
        Assert.Equal([HelloPiece, SpaceW, Or, L, D], tok.Encode("hello world"));
        var saved = dir.Sub("saved");
        tok.Save(saved);
        Assert.Equal(File.ReadAllBytes(dir.File("tokenizer.model")), File.ReadAllBytes(Path.Combine(saved, "tokenizer.model")));
        Assert.True(File.Exists(Path.Combine(saved, "tokenizer.json")));
        Assert.Equal(tok.Encode("héllo world"), HfTokenizer.Load(saved).Encode("héllo world"));
    }

    [Fact]
    public void UnigramModelPicksTheBestScoringSegmentation()
    {
        using var dir = new TempDir();
        var w = SentencePieceModelWriter.LlamaLayout();
        int hello = w.Add("▁hello", -2f);
        w.Add("▁hel", -1.5f);
        w.Add("lo", -1.5f);
        foreach (var c in new[] { "▁", "h", "e", "l", "o" }) w.Add(c, -5f);
        File.WriteAllBytes(dir.File("tokenizer.model"), w.Build(SentencePieceModelWriter.Unigram, byteFallback: true));
        var tok = HfTokenizer.Load(dir.Path);
        // ▁hello (-2) beats ▁hel + lo (-3) and any split into characters.
        Assert.Equal([hello], tok.Encode("hello"));
        Assert.Equal("hello", tok.Decode(tok.Encode("hello")));
    }
}
