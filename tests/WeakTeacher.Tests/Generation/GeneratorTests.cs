using TorchSharp;
using WeakTeacher.Engine.Generation;
using WeakTeacher.Engine.Tokenization;
using Xunit;
using static TorchSharp.torch;
using Generator = WeakTeacher.Engine.Generation.Generator;

namespace WeakTeacher.Tests.Generation;

/// <summary>Generation mechanics on <see cref="ScriptedLM"/>, whose correct continuations are known by hand.</summary>
public class GeneratorTests
{
    private const int Pad = 0;

    private static Tensor Ids(long[,] rows) => tensor(rows);

    // row 0: one real token (3) after two pads -> stride 1 + 3 % 3 = 1; row 1: 4 5 6 -> stride 1 + 4 % 3 = 2
    private static (Tensor Ids, Tensor Mask) Prompts()
        => (Ids(new long[,] { { Pad, Pad, 3 }, { 4, 5, 6 } }), Ids(new long[,] { { 0, 0, 1 }, { 1, 1, 1 } }));

    private static long[] Row(Tensor t, int row) => t[row].data<long>().ToArray();

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Fact]
    public void GreedyFollowsTheModelAndKeepsThePrompt()
    {
        using var model = new ScriptedLM();
        var (ids, mask) = Prompts();
        using var result = Generator.Generate(model, ids, mask, new GenerationOptions { MaxNewTokens = 5 });
        Assert.Equal(new long[] { Pad, Pad, 3, 4, 5, 6, 7, 8 }, Row(result.Sequences, 0));
        Assert.Equal(new long[] { 4, 5, 6, 8, 10, 12, 14, 0 }, Row(result.Sequences, 1));
        Assert.Equal(3, result.PromptLength);
        Assert.Equal(5, result.NumNewColumns);
        Assert.Equal(new long[] { 0, 0, 1, 1, 1, 1, 1, 1 }, Row(result.AttentionMask, 0));
        Assert.Equal(new[] { false, false }, result.StoppedAtEos);
    }

    [Theory]
    [InlineData(true, true)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(false, false)]
    public void StopsEachSequenceAtEosAndPadsAfterIt(bool useCache, bool dropFinished)
    {
        using var model = new ScriptedLM(eos: new[] { 7 }, pad: Pad);
        var (ids, mask) = Prompts();
        var options = new GenerationOptions { MaxNewTokens = 8, UseKvCache = useCache, DropFinished = dropFinished };
        using var result = Generator.Generate(model, ids, mask, options);
        // row 0 reaches 7 (EOS) on its 4th token; row 1 steps by 2 through even tokens and never does
        Assert.Equal(new long[] { Pad, Pad, 3, 4, 5, 6, 7, Pad, Pad, Pad, Pad }, Row(result.Sequences, 0));
        Assert.Equal(new long[] { 4, 5, 6, 8, 10, 12, 14, 0, 2, 4, 6 }, Row(result.Sequences, 1));
        Assert.Equal(new long[] { 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0 }, Row(result.AttentionMask, 0));
        Assert.Equal(new long[] { 4, 5, 6, 7 }, result.NewTokens[0]);
        Assert.Equal(8, result.NewTokens[1].Length);
        Assert.Equal(new[] { true, false }, result.StoppedAtEos);
    }

    [Fact]
    public void EndsEarlyWhenEverySequenceHasStopped()
    {
        using var model = new ScriptedLM(eos: new[] { 7, 12 });
        var (ids, mask) = Prompts();
        using var result = Generator.Generate(model, ids, mask, new GenerationOptions { MaxNewTokens = 50 });
        // row 1 stops at 12 after 3 tokens, row 0 at 7 after 4: four columns, as Hugging Face returns
        Assert.Equal(3 + 4, result.Sequences.shape[1]);
        Assert.Equal(new long[] { 4, 5, 6, 8, 10, 12, Pad }, Row(result.Sequences, 1));
        Assert.Equal(new long[] { Pad, Pad, 3, 4, 5, 6, 7 }, Row(result.Sequences, 0));
    }

    [Fact]
    public void MinNewTokensSuppressesEosUntilReached()
    {
        using var model = new ScriptedLM(eos: new[] { 7 });
        var (ids, mask) = Prompts();
        using var result = Generator.Generate(model, ids, mask, new GenerationOptions { MaxNewTokens = 8, MinNewTokens = 5 });
        // the 4th token would be 7 (EOS) but is banned, so the runner-up 6 + 2 = 8 comes instead
        Assert.Equal(new long[] { 4, 5, 6, 8, 9, 10, 11, 12 }, result.NewTokens[0]);
        Assert.False(result.StoppedAtEos[0]);

        using var late = Generator.Generate(model, ids, mask, new GenerationOptions { MaxNewTokens = 8, MinNewTokens = 3 });
        Assert.Equal(new long[] { 4, 5, 6, 7 }, late.NewTokens[0]); // EOS allowed from the 4th token on
    }

    [Fact]
    public void CachedAndRecomputedGenerationAgree()
    {
        using var model = new ScriptedLM(eos: new[] { 9 });
        var ids = Ids(new long[,] { { Pad, Pad, Pad, 3 }, { Pad, 5, 1, 2 }, { 4, 5, 6, 8 } });
        var mask = Ids(new long[,] { { 0, 0, 0, 1 }, { 0, 1, 1, 1 }, { 1, 1, 1, 1 } });
        using var cached = Generator.Generate(model, ids, mask, new GenerationOptions { MaxNewTokens = 9 });
        using var recomputed = Generator.Generate(model, ids, mask, new GenerationOptions { MaxNewTokens = 9, UseKvCache = false });
        Assert.True(Same(cached.Sequences, recomputed.Sequences));
        Assert.True(Same(cached.AttentionMask, recomputed.AttentionMask));
        Assert.Contains(true, cached.StoppedAtEos); // rows were dropped from the cache along the way
    }

    [Fact]
    public void SamplingWithASeedIsReproducible()
    {
        using var model = new ScriptedLM(vocab: 32, flat: true);
        var (ids, mask) = Prompts();
        var options = new GenerationOptions { MaxNewTokens = 24, DoSample = true, Temperature = 0.7, TopP = 0.95, TopK = 20, Seed = 1234 };
        using var first = Generator.Generate(model, ids, mask, options);
        using var second = Generator.Generate(model, ids, mask, options);
        using var other = Generator.Generate(model, ids, mask, options with { Seed = 4321 });
        Assert.True(Same(first.Sequences, second.Sequences));
        Assert.False(Same(first.Sequences, other.Sequences));
        // a broad distribution: sampling really happens (greedy would repeat one pattern)
        Assert.True(first.NewTokens[1].Distinct().Count() > 5);
    }

    [Theory]
    [InlineData(1, 1.0)]      // top-k 1 keeps only the arg-max
    [InlineData(0, 1e-6)]     // a tiny nucleus keeps only the most likely token
    public void SamplingRestrictedToOneTokenEqualsGreedy(int topK, double topP)
    {
        using var model = new ScriptedLM(vocab: 32, flat: true);
        var (ids, mask) = Prompts();
        using var greedy = Generator.Generate(model, ids, mask, new GenerationOptions { MaxNewTokens = 10 });
        using var sampled = Generator.Generate(model, ids, mask,
            new GenerationOptions { MaxNewTokens = 10, DoSample = true, TopK = topK, TopP = topP, Seed = 7 });
        Assert.True(Same(greedy.Sequences, sampled.Sequences));
    }

    [Fact]
    public void TopKLimitsTheTokensSampled()
    {
        using var model = new ScriptedLM(vocab: 32, flat: true);
        var ids = Ids(new long[,] { { 3 } });
        var mask = Ids(new long[,] { { 1 } });
        var seen = new HashSet<long>();
        for (int seed = 0; seed < 40; seed++)
        {
            using var r = Generator.Generate(model, ids, mask,
                new GenerationOptions { MaxNewTokens = 1, DoSample = true, TopK = 3, Temperature = 5, Seed = seed });
            seen.Add(r.NewTokens[0][0]);
        }
        // flat scores rise with the token id: the three largest are 29, 30, 31
        Assert.Subset(new HashSet<long> { 29, 30, 31 }, seen);
        Assert.True(seen.Count >= 2);
    }

    [Theory]
    [InlineData("Temperature", 0.0)]
    [InlineData("Temperature", -1.0)]
    [InlineData("Temperature", double.NaN)]
    [InlineData("Temperature", double.PositiveInfinity)]
    [InlineData("TopP", 0.0)]
    [InlineData("TopP", 1.5)]
    [InlineData("TopP", double.NaN)]
    [InlineData("TopK", -1.0)]
    [InlineData("MaxNewTokens", 0.0)]
    [InlineData("MinNewTokens", 9.0)]
    public void BadOptionsAreRejectedByName(string option, double value)
    {
        var options = option switch
        {
            "Temperature" => new GenerationOptions { DoSample = true, Temperature = value },
            "TopP" => new GenerationOptions { DoSample = true, TopP = value },
            "TopK" => new GenerationOptions { DoSample = true, TopK = (int)value },
            "MaxNewTokens" => new GenerationOptions { MaxNewTokens = (int)value },
            _ => new GenerationOptions { MaxNewTokens = 8, MinNewTokens = (int)value },
        };
        using var model = new ScriptedLM();
        var (ids, mask) = Prompts();
        var e = Assert.ThrowsAny<ArgumentException>(() => Generator.Generate(model, ids, mask, options));
        Assert.Equal(option, e.ParamName);
        Assert.Contains("GenerationOptions." + option, e.Message);
    }

    [Fact]
    public void RightPaddedPromptsAreRejected()
    {
        using var model = new ScriptedLM();
        var ids = Ids(new long[,] { { 3, 4, Pad } });
        var mask = Ids(new long[,] { { 1, 1, 0 } });
        var e = Assert.Throws<ArgumentException>(() => Generator.Generate(model, ids, mask, new GenerationOptions()));
        Assert.Equal("promptMask", e.ParamName);
        Assert.Contains("left-padded", e.Message);
    }

    [Fact]
    public void ResultsCanFeedTrainingAndTheTrainingFlagIsRestored()
    {
        using var model = new ScriptedLM();
        model.train();
        var (ids, mask) = Prompts();
        using var result = Generator.Generate(model, ids, mask, new GenerationOptions { MaxNewTokens = 3 });
        Assert.True(model.training);
        // generation ran in inference mode, but its outputs must still be usable where autograd records
        var table = randn(16, 4, requires_grad: true);
        table.index_select(0, result.Sequences.flatten()).sum().backward();
        Assert.NotNull(table.grad);
        Assert.False(result.Sequences.requires_grad);
    }

    [Fact]
    public void GenerateTextReturnsOnlyTheNewTextInPromptOrder()
    {
        using var model = new ScriptedLM(eos: new[] { CharTokenizer.Eos }, pad: CharTokenizer.Pad);
        var tokenizer = new CharTokenizer();
        // BOS 1 first in each: stride 1 + 1 % 3 = 2. "d"=3 -> 5 7 9 11; "fgh" ends in 7 -> 9 11 13 15;
        // "m"=12 -> 14, 0, 2 = EOS: "o" then the pad (special, dropped) and the stop
        string[] prompts = { "d", "fgh", "m" };
        var options = new GenerationOptions { MaxNewTokens = 4 };
        var expected = new[] { "fhjl", "jlnp", "o" };
        Assert.Equal(expected, Generator.GenerateText(model, tokenizer, prompts, options, batchSize: 2));
        Assert.Equal(expected, Generator.GenerateText(model, tokenizer, prompts, options, batchSize: 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => Generator.GenerateText(model, tokenizer, prompts, options, batchSize: 0));
    }

    /// <summary>Letters d..p are ids 3..15; 0 pad, 1 BOS, 2 EOS.</summary>
    private sealed class CharTokenizer : ITokenizer
    {
        public const int Pad = 0, Bos = 1, Eos = 2;
        public int VocabSize => 16;
        public int? BosTokenId => Bos;
        public int EosTokenId => Eos;
        public int PadTokenId => Pad;
        public bool AddsBos => true;
        public IReadOnlyList<int> Encode(string text) => text.Select(c => c - 'a').ToArray();
        public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
            => new(ids.Where(i => !skipSpecialTokens || i > Eos).Select(i => (char)('a' + i)).ToArray());
    }
}

public class GenerationOptionsTests
{
    [Fact]
    public void FromDefaultsUsesTheCheckpointAndTransformersDefaults()
    {
        var stated = new WeakTeacher.Engine.Checkpoints.GenerationDefaults
        {
            EosTokenIds = new[] { 2, 7 }, PadTokenId = 1, DoSample = true, TopP = 0.9, MaxNewTokens = 30,
        };
        var options = GenerationOptions.FromDefaults(stated);
        Assert.Equal(new[] { 2, 7 }, options.EosTokenIds);
        Assert.Equal(1, options.PadTokenId);
        Assert.True(options.DoSample);
        Assert.Equal(0.9, options.TopP);
        Assert.Equal(50, options.TopK);       // transformers' default top_k
        Assert.Equal(1.0, options.Temperature);
        Assert.Equal(30, options.MaxNewTokens);
        Assert.Equal(16, GenerationOptions.FromDefaults(new WeakTeacher.Engine.Checkpoints.GenerationDefaults(), 16).MaxNewTokens);
        Assert.Null(GenerationOptions.FromDefaults(new WeakTeacher.Engine.Checkpoints.GenerationDefaults()).EosTokenIds);
    }
}
