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
        var expected = Fixtures.Expected(name);
        var prompt = expected["gen_input_ids"];          // [2, 6], row 0 left-padded by 2
        var promptMask = expected["gen_attention_mask"];
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

    private static void AssertClose(Tensor want, Tensor got, string what)
    {
        double diff = (want - got).abs().max().item<float>();
        Assert.True(diff < 1e-4, $"{what}: max |cached - full| = {diff}");
    }
}
