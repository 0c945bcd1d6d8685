using WeakTeacher.Engine.Checkpoints;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Models;

/// <summary>Incremental decoding with the key/value cache on left-padded batches.</summary>
public class KvCacheTests
{
    public static TheoryData<string> FixtureNames => new(Fixtures.Names);

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void CachedDecodingMatchesFullForwardOnLeftPaddedInput(string name)
    {
        using var scope = NewDisposeScope();
        using var model = PretrainedModel.Load(Fixtures.Dir(name));
        var (prompt, promptMask) = GenerationPrompt(name);   // [2, 6], row 0 left-padded by 2
        using var noGrad = no_grad();
        var extra = tensor(new long[,] { { 17, 230, 45, 301 }, { 99, 5, 410, 77 } });
        var ids = cat(new[] { prompt, extra }, 1);
        var mask = cat(new[] { promptMask, ones_like(extra) }, 1);
        var full = model.Logits(ids, mask);               // [2, 10, V]

        using var cache = model.NewCache();
        var step = model.Logits(prompt, promptMask, cache);
        Assert.Equal(prompt.shape[1], cache.Length);
        AssertClose(full.narrow(1, prompt.shape[1] - 1, 1), step.narrow(1, prompt.shape[1] - 1, 1), name);
        for (int i = 0; i < extra.shape[1]; i++)
        {
            long seen = prompt.shape[1] + i + 1;
            step = model.Logits(extra.narrow(1, i, 1), mask.narrow(1, 0, seen), cache);
            Assert.Equal(seen, cache.Length);
            AssertClose(full.narrow(1, seen - 1, 1), step, $"{name} step {i}");
        }
    }

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void AReservedCacheIsAllocatedOnceAndDecodesAsAGrownOne(string name)
    {
        using var scope = NewDisposeScope();
        using var model = PretrainedModel.Load(Fixtures.Dir(name));
        var (prompt, promptMask) = GenerationPrompt(name);
        using var noGrad = no_grad();
        // more positions than the unreserved cache's first buffer (prompt + 32), so that one grows and this one must not
        const int extra = 40;
        var tokens = randint(1, model.Config.VocabSize, [prompt.shape[0], extra], generator: new Generator(7));
        var mask = cat(new[] { promptMask, ones_like(tokens) }, 1);
        long reserved = prompt.shape[1] + extra;
        using var grown = model.NewCache();
        using var sized = model.NewCache(reserved);
        AssertClose(model.Logits(prompt, promptMask, grown), model.Logits(prompt, promptMask, sized), $"{name} prompt");
        Assert.Equal(reserved, sized.Capacity);
        for (int i = 0; i < extra; i++)
        {
            var stepMask = mask.narrow(1, 0, prompt.shape[1] + i + 1);
            var token = tokens.narrow(1, i, 1);
            AssertClose(model.Logits(token, stepMask, grown), model.Logits(token, stepMask, sized), $"{name} step {i}");
            Assert.Equal(reserved, sized.Capacity);
            Assert.Equal(prompt.shape[1] + i + 1, sized.Length);
        }
        Assert.True(grown.Capacity > reserved, $"{name}: the unreserved cache was expected to grow past {reserved} (capacity {grown.Capacity})");
        // past the reservation it grows as an unreserved one does
        model.Logits(tokens.narrow(1, 0, 1), cat(new[] { mask, ones_like(tokens.narrow(1, 0, 1)) }, 1), sized);
        Assert.Equal(2 * reserved, sized.Capacity);
    }

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void CachedGreedyDecodingReproducesTransformersGenerate(string name)
    {
        using var scope = NewDisposeScope();
        using var model = PretrainedModel.Load(Fixtures.Dir(name));
        var expected = Fixtures.Expected(name);
        var ids = expected["gen_input_ids"];
        var mask = expected["gen_attention_mask"];
        var want = expected["gen_output"];
        long newTokens = want.shape[1] - ids.shape[1];
        using var noGrad = no_grad();
        using var cache = model.NewCache();
        var output = ids;
        var next = ids;
        for (int i = 0; i < newTokens; i++)
        {
            var logits = model.Logits(next, mask, cache);
            next = logits.select(1, logits.shape[1] - 1).argmax(-1).unsqueeze(1);
            output = cat(new[] { output, next }, 1);
            mask = cat(new[] { mask, ones_like(next) }, 1);
        }
        Assert.Equal(want.data<long>().ToArray(), output.data<long>().ToArray());
    }

    /// <summary>The fixture's left-padded generation prompt and its attention mask, as transformers saw them.</summary>
    private static (Tensor Ids, Tensor Mask) GenerationPrompt(string name)
    {
        var expected = Fixtures.Expected(name);
        return (expected["gen_input_ids"], expected["gen_attention_mask"]);
    }

    private static void AssertClose(Tensor want, Tensor got, string what)
    {
        double diff = (want - got).abs().max().item<float>();
        Assert.True(diff < 1e-4, $"{what}: max |cached - full| = {diff}");
    }
}
