using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Models;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Models;

/// <summary>The engine's models against what Hugging Face transformers computed on the same checkpoints, on the device
/// WT_DEVICE names (cpu by default; the comparisons are made on the CPU).</summary>
public class HfParityTests
{
    public static TheoryData<string> FixtureNames => new(Fixtures.ParityNames);

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void LogitsMatchTransformersWhereAttentionMaskIsOne(string name)
    {
        using var scope = NewDisposeScope();
        using var model = Fixtures.Load(name);
        var expected = Fixtures.Expected(name);
        using var noGrad = no_grad();
        var (ids, mask, _) = Fixtures.Inputs(expected);
        var logits = model.Logits(ids, mask).cpu();
        Assert.Equal(expected["logits"].shape, logits.shape);
        var real = expected["attention_mask"].to(float32).unsqueeze(-1);
        double maxDiff = ((logits - expected["logits"]).abs() * real).max().item<float>();
        Assert.True(maxDiff < 1e-4, $"{name}: max |logits - transformers| = {maxDiff}");
        // the comparison is not vacuous: the logits vary far more than the tolerance
        Assert.True(expected["logits"].std().item<float>() > 1e-2);
    }

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void ResponseLogProbsMatchTransformers(string name)
    {
        using var scope = NewDisposeScope();
        using var model = Fixtures.Load(name);
        var expected = Fixtures.Expected(name);
        using var noGrad = no_grad();
        var ids = expected["input_ids"];
        var (onIds, onMask, onResponse) = Fixtures.Inputs(expected);
        var result = ResponseLogProbs.ComputeWithTokens(model, onIds, onMask, onResponse);
        var sequence = ResponseLogProbs.Compute(model, onIds, onMask, onResponse).cpu();
        var want = expected["seq_logps"].to(float32);
        Assert.Equal(ScalarType.Float32, sequence.dtype);
        Assert.Equal(new long[] { ids.shape[0] }, sequence.shape);
        double maxDiff = (sequence - want).abs().max().item<float>();
        Assert.True(maxDiff < 1e-4, $"{name}: seq log-probs {string.Join(", ", sequence.data<float>().ToArray())} vs {string.Join(", ", want.data<float>().ToArray())}");
        var tokenLogps = result.TokenLogps.cpu();
        Assert.True((result.SequenceLogps.cpu() - sequence).abs().max().item<float>() < 1e-5);
        // per-token parts sum to the sequence values, sit only on response positions, and are counted
        Assert.True((tokenLogps.sum(1) - sequence).abs().max().item<float>() < 1e-4);
        var offResponse = expected["response_mask"].eq(0);
        Assert.Equal(0f, tokenLogps.masked_select(offResponse).abs().sum().item<float>());
        var counts = expected["response_mask"].narrow(1, 1, ids.shape[1] - 1).sum(1).to(int64);
        Assert.Equal(counts.data<long>().ToArray(), result.TokenCounts.cpu().data<long>().ToArray());

        // and from full logits, the slow way, in float64
        var logits = model.Logits(onIds, onMask).cpu().to(float64);
        var lp = logits.log_softmax(-1).narrow(1, 0, ids.shape[1] - 1)
            .gather(-1, ids.narrow(1, 1, ids.shape[1] - 1).unsqueeze(-1)).squeeze(-1);
        var slow = (lp * expected["response_mask"].narrow(1, 1, ids.shape[1] - 1).to(float64)).sum(1).to(float32);
        Assert.True((slow - sequence).abs().max().item<float>() < 1e-4);
    }

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void ResponseLogProbsAreDifferentiable(string name)
    {
        using var scope = NewDisposeScope();
        using var model = Fixtures.Load(name);
        var expected = Fixtures.Expected(name);
        var (ids, mask, response) = Fixtures.Inputs(expected);
        var sequence = ResponseLogProbs.Compute(model, ids, mask, response);
        sequence.sum().backward();
        var grads = model.parameters().Select(p => p.grad).ToList();
        Assert.All(grads, g => Assert.NotNull(g));
        Assert.True(grads.Sum(g => g!.abs().sum().item<float>()) > 0);
        Assert.True(model.OutputWeight.grad!.abs().sum().item<float>() > 0);
    }
}
