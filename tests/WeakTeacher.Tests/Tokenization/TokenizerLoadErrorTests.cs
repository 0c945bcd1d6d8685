using System.Text.Json.Nodes;
using WeakTeacher.Engine.Tokenization;
using Xunit;

namespace WeakTeacher.Tests.Tokenization;

public class TokenizerLoadErrorTests
{
    private static TokenizerLoadException LoadFails(TempDir dir, string file, string expectedInMessage)
    {
        var e = Assert.Throws<TokenizerLoadException>(() => HfTokenizer.Load(dir.Path));
        Assert.Equal(file, Path.GetFileName(e.FilePath));
        Assert.Contains(file, e.Message);
        Assert.Contains(expectedInMessage, e.Message);
        return e;
    }

    private static TempDir OptFolder()
    {
        var dir = new TempDir();
        TinyBpe.WriteVocabAndMerges(dir.Path);
        TinyBpe.WriteOptConfig(dir.Path);
        return dir;
    }

    [Fact]
    public void EmptyFolderSaysWhichFilesWereLookedFor()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<TokenizerLoadException>(() => HfTokenizer.Load(dir.Path));
        Assert.Equal(dir.Path, e.FilePath);
        foreach (var name in new[] { "tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model" })
            Assert.Contains(name, e.Message);
    }

    [Fact]
    public void MissingFolderIsNamed()
    {
        using var dir = new TempDir();
        var missing = Path.Combine(dir.Path, "nope");
        var e = Assert.Throws<TokenizerLoadException>(() => HfTokenizer.Load(missing));
        Assert.Contains("does not exist", e.Message);
        Assert.Equal(missing, e.FilePath);
    }

    [Fact]
    public void VocabWithoutMergesNamesTheMissingFile()
    {
        using var dir = OptFolder();
        File.Delete(dir.File("merges.txt"));
        LoadFails(dir, "merges.txt", "missing");
    }

    [Fact]
    public void MalformedVocabJsonIsNamed()
    {
        using var dir = OptFolder();
        File.WriteAllText(dir.File("vocab.json"), """{"a": 1, "b": """);
        LoadFails(dir, "vocab.json", "not valid JSON");
        File.WriteAllText(dir.File("vocab.json"), """{"a": 1, "b": "two"}""");
        LoadFails(dir, "vocab.json", "\"b\"");
        File.WriteAllText(dir.File("vocab.json"), """["a", "b"]""");
        LoadFails(dir, "vocab.json", "JSON object");
    }

    [Fact]
    public void MalformedMergesTxtIsNamedWithItsLine()
    {
        using var dir = OptFolder();
        File.WriteAllText(dir.File("merges.txt"), "#version: 0.2\nĠ t\nh e x\n");
        LoadFails(dir, "merges.txt", "line 3");
        // A merge of tokens the vocabulary lacks: transformers refuses it too.
        File.WriteAllText(dir.File("merges.txt"), "#version: 0.2\nĠ t\nq z\n");
        LoadFails(dir, "merges.txt", "\"qz\"");
    }

    [Fact]
    public void MalformedTokenizerJsonIsNamed()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("tokenizer.json"), "{ not json");
        LoadFails(dir, "tokenizer.json", "not valid JSON");

        File.WriteAllText(dir.File("tokenizer.json"), """{"version": "1.0", "added_tokens": []}""");
        LoadFails(dir, "tokenizer.json", "\"model\"");

        TinyBpe.WriteTokenizerJson(dir.Path, mergesAsPairs: true);
        var root = JsonNode.Parse(File.ReadAllText(dir.File("tokenizer.json")))!.AsObject();
        root["model"]!["merges"]!.AsArray().Add(new JsonArray("a", "b", "c"));
        File.WriteAllText(dir.File("tokenizer.json"), root.ToJsonString());
        LoadFails(dir, "tokenizer.json", "model.merges[11]");

        root["model"]!["merges"]!.AsArray().RemoveAt(11);
        root["model"]!["type"] = "WordPiece";
        File.WriteAllText(dir.File("tokenizer.json"), root.ToJsonString());
        LoadFails(dir, "tokenizer.json", "WordPiece");

        root["model"]!["type"] = "BPE";
        root["added_tokens"]!.AsArray().Add(new JsonObject { ["content"] = "<x>" });
        File.WriteAllText(dir.File("tokenizer.json"), root.ToJsonString());
        LoadFails(dir, "tokenizer.json", "added_tokens[4]");
    }

    [Fact]
    public void MalformedOrInconsistentTokenizerConfigIsNamed()
    {
        using var dir = OptFolder();
        File.WriteAllText(dir.File("tokenizer_config.json"), "{\"eos_token\": ");
        LoadFails(dir, "tokenizer_config.json", "not valid JSON");
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"eos_token": "<|im_end|>"}""");
        LoadFails(dir, "tokenizer_config.json", "<|im_end|>");
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"eos_token": 5}""");
        LoadFails(dir, "tokenizer_config.json", "eos_token");
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"eos_token": "</s>", "add_bos_token": "yes"}""");
        LoadFails(dir, "tokenizer_config.json", "add_bos_token");
    }

    [Fact]
    public void ConfigIdsOutsideTheVocabularyAreNamed()
    {
        using var dir = new TempDir();
        TinyBpe.WriteVocabAndMerges(dir.Path);
        File.WriteAllText(dir.File("config.json"), """{"model_type": "opt", "eos_token_id": 70000}""");
        LoadFails(dir, "config.json", "70000");
    }

    [Fact]
    public void DamagedSentencePieceModelIsNamed()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("tokenizer.model"), [0x0A, 0xFF, 0xFF, 0xFF, 0x0F, 0x01, 0x02]);
        LoadFails(dir, "tokenizer.model", "SentencePiece");
        File.WriteAllBytes(dir.File("tokenizer.model"), "this is not a protobuf"u8.ToArray());
        LoadFails(dir, "tokenizer.model", "SentencePiece");
    }
}
