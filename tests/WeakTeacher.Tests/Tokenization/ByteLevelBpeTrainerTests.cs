using System.Diagnostics;
using System.Text;
using System.Text.Json;
using WeakTeacher.Engine.Tokenization;
using Xunit;

namespace WeakTeacher.Tests.Tokenization;

public class ByteLevelBpeTrainerTests
{
    /// <summary>Short English sentences from a seeded generator: the shape of the project's synthetic task corpus.</summary>
    internal static List<string> SyntheticCorpus(int sentences, int seed)
    {
        string[] subjects = ["the cat", "a dog", "my friend", "the teacher", "our model", "the student", "a small bird", "the old man"];
        string[] verbs = ["sees", "likes", "writes", "reads", "answers", "prefers", "helps", "follows"];
        string[] objects = ["the answer", "a long letter", "the red ball", "three questions", "the chosen reply", "a better response", "the rules", "some books"];
        string[] tails = [".", "!", " today.", " again?", ", quietly.", " in 2024.", " – twice.", "\n"];
        var rng = new Random(seed);
        var corpus = new List<string>(sentences);
        for (int i = 0; i < sentences; i++)
        {
            var s = $"{subjects[rng.Next(subjects.Length)]} {verbs[rng.Next(verbs.Length)]} {objects[rng.Next(objects.Length)]}{tails[rng.Next(tails.Length)]}";
            corpus.Add(i % 2 == 0 ? char.ToUpperInvariant(s[0]) + s[1..] : s);
        }
        return corpus;
    }

    private static string[] MergeLines(string dir) =>
        File.ReadAllLines(Path.Combine(dir, "merges.txt")).Skip(1).ToArray();

    [Fact]
    public void LearnsTheHandDerivedMergesWithDeterministicTies()
    {
        using var dir = new TempDir();
        // Pre-tokens: "low" x1, " low" x2, " lower", " lowest". (l,o) and (o,w) both occur 5 times: the tie goes to the
        // smaller ids, (l,o). Then lo+w (5), Ġ+low (4), Ġlow+e (2); every other pair occurs once (< min frequency 2).
        var tok = ByteLevelBpeTrainer.Train(["low low low lower lowest"], 1000, ByteLevelBpeTrainer.OptSpecialTokens, dir.Path);
        Assert.Equal(["l o", "lo w", "Ġ low", "Ġlow e"], MergeLines(dir.Path));
        Assert.Equal(4 + 256 + 4, tok.VocabSize);
        // lo=260, low=261, Ġlow=262, Ġlowe=263; byte symbols keep their ids.
        Assert.Equal([261, 263, TinyBpe.CharId('r'), 263, TinyBpe.CharId('s'), TinyBpe.CharId('t')], tok.Encode("low lower lowest"));
    }

    [Fact]
    public void OverlappingPairsAreCountedOncePerMerge()
    {
        using var dir = new TempDir();
        // "aaa" x3: (a,a) occurs 6 times -> "aa"; the word becomes [aa, a], so (aa,a) occurs 3 times -> "aaa".
        ByteLevelBpeTrainer.Train(["aaa", "aaa", "aaa"], 1000, ByteLevelBpeTrainer.OptSpecialTokens, dir.Path);
        Assert.Equal(["a a", "aa a"], MergeLines(dir.Path));
        using var dir2 = new TempDir();
        // "aaaa" x3: (a,a) occurs 9 times (overlapping) -> [aa, aa]; (aa,aa) 3 times -> "aaaa".
        ByteLevelBpeTrainer.Train(["aaaa", "aaaa", "aaaa"], 1000, ByteLevelBpeTrainer.OptSpecialTokens, dir2.Path);
        Assert.Equal(["a a", "aa aa"], MergeLines(dir2.Path));
    }

    [Fact]
    public void WritesOptLayoutThatLoadsBack()
    {
        using var dir = new TempDir();
        var tok = ByteLevelBpeTrainer.Train(SyntheticCorpus(500, 1), 400, ByteLevelBpeTrainer.OptSpecialTokens, dir.Path);
        Assert.Equal(400, tok.VocabSize);
        Assert.Equal((0, 1, 2, 3), (tok.TokenToId("<s>"), tok.TokenToId("<pad>"), tok.TokenToId("</s>"), tok.TokenToId("<unk>")));
        Assert.True(tok.AddsBos);
        Assert.Equal((2, 2, 1, 3), (tok.BosTokenId, tok.EosTokenId, tok.PadTokenId, tok.UnkTokenId));
        Assert.Equal(4, tok.TokenToId("!"));   // the byte alphabet follows, in GPT-2's order
        Assert.Equal(4 + 188, tok.TokenToId("Ā")); // byte 0x00, the first after the 188 printable bytes

        using var cfg = JsonDocument.Parse(File.ReadAllText(dir.File("tokenizer_config.json")));
        Assert.True(cfg.RootElement.GetProperty("add_bos_token").GetBoolean());
        Assert.Equal("</s>", cfg.RootElement.GetProperty("bos_token").GetString());
        Assert.Equal("<pad>", cfg.RootElement.GetProperty("pad_token").GetString());
        Assert.Equal("<s>", cfg.RootElement.GetProperty("added_tokens_decoder").GetProperty("0").GetProperty("content").GetString());
        using var map = JsonDocument.Parse(File.ReadAllText(dir.File("special_tokens_map.json")));
        Assert.Equal("</s>", map.RootElement.GetProperty("eos_token").GetString());
        Assert.StartsWith("#version: 0.2\n", File.ReadAllText(dir.File("merges.txt")));
        Assert.EndsWith("\n", File.ReadAllText(dir.File("merges.txt")));
    }

    [Fact]
    public void RoundTripsUnicodeText()
    {
        using var dir = new TempDir();
        var corpus = SyntheticCorpus(800, 2);
        corpus.Add("Café naïve façade — déjà vu 😀\n\nnew  lines");
        var tok = ByteLevelBpeTrainer.Train(corpus, 500, ByteLevelBpeTrainer.OptSpecialTokens, dir.Path);
        string[] texts =
        [
            "Café naïve façade — déjà vu 😀", "  two leading spaces", " one leading space", "new\nline\n\nand\r\nwindows\n",
            "tab\tseparated\t", "emoji 👩‍👩‍👧 family, 🇫🇷 flag", "日本語のテキスト", "trailing spaces   ", "Ünïcödé ÀÉÎÕÜ ß", "",
        ];
        foreach (var text in texts)
        {
            var ids = tok.Encode(text);
            Assert.All(ids, id => Assert.InRange(id, 4, tok.VocabSize - 1));
            Assert.Equal(text, tok.Decode(ids));
        }
    }

    [Fact]
    public void SameCorpusGivesSameFilesWhateverItsOrder()
    {
        using var dir = new TempDir();
        var corpus = SyntheticCorpus(600, 3);
        var a = dir.Sub("a");
        var b = dir.Sub("b");
        ByteLevelBpeTrainer.Train(corpus, 450, ByteLevelBpeTrainer.OptSpecialTokens, a);
        var shuffled = corpus.ToArray();
        new Random(7).Shuffle(shuffled);
        ByteLevelBpeTrainer.Train(shuffled, 450, ByteLevelBpeTrainer.OptSpecialTokens, b);
        foreach (var name in new[] { "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(a, name)), File.ReadAllBytes(Path.Combine(b, name)));
    }

    [Fact]
    public void MergesReduceTokenCount()
    {
        using var dir = new TempDir();
        var corpus = SyntheticCorpus(1000, 4);
        var small = ByteLevelBpeTrainer.Train(corpus, 4 + 256 + 20, ByteLevelBpeTrainer.OptSpecialTokens, dir.Sub("small"));
        var large = ByteLevelBpeTrainer.Train(corpus, 600, ByteLevelBpeTrainer.OptSpecialTokens, dir.Sub("large"));
        var text = string.Join(" ", SyntheticCorpus(200, 5));
        int bytes = Encoding.UTF8.GetByteCount(text);
        int smallCount = small.Encode(text).Count, largeCount = large.Encode(text).Count;
        Assert.True(smallCount < bytes, $"{smallCount} tokens for {bytes} bytes");
        Assert.True(largeCount < smallCount, $"{largeCount} tokens with 600 vocab vs {smallCount} with 280");
        Assert.True(largeCount * 3 < bytes, $"{largeCount} tokens for {bytes} bytes");
    }

    [Fact]
    public void SavedTrainedTokenizerLoadsWithIdenticalIds()
    {
        using var dir = new TempDir();
        var tok = ByteLevelBpeTrainer.Train(SyntheticCorpus(400, 6), 350, ByteLevelBpeTrainer.OptSpecialTokens, dir.Sub("trained"));
        var saved = dir.Sub("saved");
        tok.Save(saved);
        foreach (var name in new[] { "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json" })
            Assert.True(File.Exists(Path.Combine(saved, name)), name);
        var back = HfTokenizer.Load(saved);
        foreach (var text in SyntheticCorpus(50, 7).Append("Naïve 😀 text\n"))
            Assert.Equal(tok.Encode(text), back.Encode(text));
    }

    [Fact]
    public void TrainsTwoThousandTokensOnMegabytesQuickly()
    {
        using var dir = new TempDir();
        var corpus = SyntheticCorpus(20000, 8);
        var rng = new Random(9);
        // Add rarer words so that the merges do not run out before 2k tokens.
        for (int i = 0; i < 20000; i++)
            corpus.Add(string.Concat(Enumerable.Range(0, 6).Select(_ => " " + new string((char)('a' + rng.Next(26)), 1) + (char)('a' + rng.Next(26)) + (char)('a' + rng.Next(8)))));
        long bytes = corpus.Sum(s => (long)Encoding.UTF8.GetByteCount(s));
        var watch = Stopwatch.StartNew();
        var tok = ByteLevelBpeTrainer.Train(corpus, 2000, ByteLevelBpeTrainer.OptSpecialTokens, dir.Path);
        watch.Stop();
        Assert.Equal(2000, tok.VocabSize);
        Assert.True(bytes > 1_000_000, $"{bytes} bytes");
        // Generous bound for a shared CI core; it takes about a second or two.
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(15), $"training took {watch.Elapsed}");
    }

    [Fact]
    public void RejectsBadArguments()
    {
        using var dir = new TempDir();
        Assert.Throws<ArgumentOutOfRangeException>(() => ByteLevelBpeTrainer.Train(["x"], 100, ByteLevelBpeTrainer.OptSpecialTokens, dir.Path));
        Assert.Throws<ArgumentException>(() => ByteLevelBpeTrainer.Train(["x"], 300, ["<s>", "<s>"], dir.Path));
        Assert.Throws<ArgumentException>(() => ByteLevelBpeTrainer.Train(["x"], 300, ["<s>"], dir.Path));
    }
}
