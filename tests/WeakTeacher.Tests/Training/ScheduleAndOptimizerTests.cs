using TorchSharp;
using WeakTeacher.Engine.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

public class ScheduleTests
{
    [Fact]
    public void LinearWarmupThenDecay()
    {
        // 10 steps, 2 warm-up: 0, 0.5, then (10 - s) / 8
        Assert.Equal(0.0, LearningRateSchedule.At("linear", 1.0, 0, 2, 10), 12);
        Assert.Equal(0.5, LearningRateSchedule.At("linear", 1.0, 1, 2, 10), 12);
        Assert.Equal(1.0, LearningRateSchedule.At("linear", 1.0, 2, 2, 10), 12);
        Assert.Equal(0.5, LearningRateSchedule.At("linear", 1.0, 6, 2, 10), 12);
        Assert.Equal(0.125, LearningRateSchedule.At("linear", 1.0, 9, 2, 10), 12);
        Assert.Equal(0.0, LearningRateSchedule.At("linear", 1.0, 10, 2, 10), 12);
    }

    [Fact]
    public void CosineDecay()
    {
        Assert.Equal(2e-5, LearningRateSchedule.At("cosine", 2e-5, 2, 2, 10), 15);
        // halfway through the decay: 0.5 (1 + cos(pi/2)) = 0.5
        Assert.Equal(1e-5, LearningRateSchedule.At("cosine", 2e-5, 6, 2, 10), 15);
        double quarter = 0.5 * (1 + Math.Cos(Math.PI * 0.25));
        Assert.Equal(2e-5 * quarter, LearningRateSchedule.At("cosine", 2e-5, 4, 2, 10), 15);
        Assert.Equal(0.0, LearningRateSchedule.At("cosine", 2e-5, 10, 2, 10), 15);
    }

    [Fact]
    public void ConstantAndWarmupSteps()
    {
        Assert.Equal(0.25, LearningRateSchedule.At("constant", 1.0, 1, 4, 10), 12);
        Assert.Equal(1.0, LearningRateSchedule.At("constant", 1.0, 9, 4, 10), 12);
        Assert.Equal(3, LearningRateSchedule.WarmupSteps(new SftConfig { WarmupRatio = 0.1 }, 25)); // ceil(2.5)
        Assert.Equal(7, LearningRateSchedule.WarmupSteps(new SftConfig { WarmupRatio = 0.1, WarmupSteps = 7 }, 25));
        Assert.Throws<ArgumentException>(() => LearningRateSchedule.At("polynomial", 1.0, 1, 0, 10));
    }
}

public class OptimizerTests
{
    [Fact]
    public void ClippingScalesToMaxNormAndReportsTheNormBefore()
    {
        using var model = TrainingTestKit.Opt(3);
        using var optimizer = TrainingOptimizer.Create(model, new SftConfig());
        using (no_grad())
            foreach (var (_, p) in optimizer.Parameters)
                p.grad = full_like(p, 0.5);
        long n = optimizer.Parameters.Sum(p => p.Parameter.numel());
        double expected = Math.Sqrt(n * 0.25);
        double norm = optimizer.ClipGradients(1.0);
        Assert.Equal(expected, norm, 3);
        double after = Math.Sqrt(optimizer.Parameters.Sum(p => p.Parameter.grad!.square().sum().item<float>()));
        Assert.Equal(1.0, after, 4);
        // below the limit nothing changes
        Assert.Equal(1.0, optimizer.ClipGradients(10.0), 4);
        Assert.Equal(1.0, Math.Sqrt(optimizer.Parameters.Sum(p => p.Parameter.grad!.square().sum().item<float>())), 4);
    }

    [Fact]
    public void BiasesAndNormsHaveNoWeightDecay()
    {
        using var model = TrainingTestKit.Opt(3);
        using var optimizer = TrainingOptimizer.Create(model, new SftConfig { WeightDecay = 0.1 });
        Assert.Contains(optimizer.NoDecayParameters, n => n.EndsWith("self_attn.q_proj.bias"));
        Assert.Contains(optimizer.NoDecayParameters, n => n.Contains("layer_norm"));
        Assert.DoesNotContain(optimizer.NoDecayParameters, n => n.EndsWith("q_proj.weight"));
        Assert.DoesNotContain(optimizer.NoDecayParameters, n => n.EndsWith("embed_tokens.weight"));
    }

    [Theory]
    [InlineData("opt")]
    [InlineData("opt-350m-style")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void WeightDecayGroupsByRankAreTransformersGroupsForEveryFamily(string fixture)
    {
        using var model = WeakTeacher.Tests.Models.Fixtures.Load(fixture);
        using var optimizer = TrainingOptimizer.Create(model, new SftConfig { WeightDecay = 0.1 });
        // transformers' Trainer.get_decay_parameter_names: no decay for "bias" and for the parameters of norm layers
        // (OPT/GPT-2 LayerNorm: layer_norm, ln_1/ln_2/ln_f; Llama RMSNorm: *_layernorm, norm)
        var transformersNoDecay = model.named_parameters().Select(p => p.name)
            .Where(n => n.EndsWith("bias", StringComparison.Ordinal) || n.Contains("norm", StringComparison.Ordinal) || n.Contains(".ln_", StringComparison.Ordinal))
            .ToHashSet();
        Assert.NotEmpty(transformersNoDecay);
        Assert.Equal(transformersNoDecay.Order(), optimizer.NoDecayParameters.Order());
    }

    [Fact]
    public void OnlyTrainableParametersAreOptimised()
    {
        using var model = TrainingTestKit.Opt(3);
        LoraAdapters.Attach(model, new LoraConfig { Rank = 2, TargetModules = new[] { "q_proj", "v_proj" } }, seed: 3);
        using var optimizer = TrainingOptimizer.Create(model, new DpoConfig());
        Assert.Equal(2 * 2 * 2, optimizer.Parameters.Count); // 2 layers x (q, v) x (A, B)
        Assert.All(optimizer.Parameters, p => Assert.True(LoraAdapters.IsAdapterParameter(p.Name)));
    }
}
