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

    /// <summary>torch.optim.AdamW's update (Loshchilov and Hutter 2019, algorithm 2, as torch writes it) in float64 on the host.</summary>
    private static void ReferenceAdamW(double[] p, double[] m, double[] v, double[] g, int step, double lr, double wd, double b1, double b2, double eps)
    {
        double c1 = 1 - Math.Pow(b1, step), c2 = 1 - Math.Pow(b2, step);
        for (int k = 0; k < p.Length; k++)
        {
            p[k] *= 1 - lr * wd;
            m[k] = b1 * m[k] + (1 - b1) * g[k];
            v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k];
            p[k] -= lr / c1 * m[k] / (Math.Sqrt(v[k]) / Math.Sqrt(c2) + eps);
        }
    }

    private static double[] Values(Tensor t) => t.to(ScalarType.Float64).contiguous().data<double>().ToArray();

    /// <summary>Gradients of step <paramref name="step"/>: fixed pseudo-random values, some large and some tiny.</summary>
    private static void SetGradients(TrainingOptimizer optimizer, int step)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var generator = new torch.Generator((ulong)(100 + step));
        foreach (var (_, p) in optimizer.Parameters)
            p.grad = (randn(p.shape, generator: generator) * (step % 2 == 0 ? 3.0 : 0.01)).DetachFromDisposeScope();
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(0.1)]
    public void StepsAreTorchAdamWUpdateOverSeveralSteps(double weightDecay)
    {
        using var model = TrainingTestKit.Opt(3);
        var config = new SftConfig { WeightDecay = weightDecay, LearningRate = 1e-2, AdamBeta2 = 0.99 };
        using var optimizer = TrainingOptimizer.Create(model, config);
        Assert.False(optimizer.StateAllocated);   // nothing held before the first step
        var expected = optimizer.Parameters.Select(p => (P: Values(p.Parameter), M: new double[p.Parameter.numel()], V: new double[p.Parameter.numel()])).ToArray();
        for (int step = 1; step <= 4; step++)
        {
            SetGradients(optimizer, step);
            for (int i = 0; i < expected.Length; i++)
            {
                var (name, parameter) = optimizer.Parameters[i];
                double wd = optimizer.NoDecayParameters.Contains(name) ? 0 : weightDecay;
                using var grad = parameter.grad!;
                ReferenceAdamW(expected[i].P, expected[i].M, expected[i].V, Values(grad), step, config.LearningRate, wd, config.AdamBeta1, config.AdamBeta2, config.AdamEpsilon);
            }
            optimizer.Step();
            Assert.True(optimizer.StateAllocated);
            for (int i = 0; i < expected.Length; i++)
            {
                var actual = Values(optimizer.Parameters[i].Parameter);
                for (int k = 0; k < actual.Length; k++)
                    Assert.True(Math.Abs(actual[k] - expected[i].P[k]) <= 2e-6 + 2e-5 * Math.Abs(expected[i].P[k]),
                        $"step {step}, {optimizer.Parameters[i].Name}[{k}]: {actual[k]} against torch's {expected[i].P[k]}");
            }
        }
        var (tensors, steps) = optimizer.StateTensors();
        Assert.All(steps.Values, s => Assert.Equal(4, s));
        for (int i = 0; i < expected.Length; i++)
        {
            var avg = Values(tensors[optimizer.Parameters[i].Name + ".exp_avg"]);
            for (int k = 0; k < avg.Length; k++) Assert.True(Math.Abs(avg[k] - expected[i].M[k]) <= 1e-6 + 1e-5 * Math.Abs(expected[i].M[k]));
        }
    }

    [Fact]
    public void ResumedFromSavedStateTheUpdatesAreTheUninterruptedOnes()
    {
        var config = new SftConfig { WeightDecay = 0.1, LearningRate = 1e-2 };
        using var dir = new WeakTeacher.Tests.Models.Fixtures.TempDir();
        string path = Path.Combine(dir.Path, "optimizer.safetensors");
        using var straight = TrainingTestKit.Opt(3);
        using (var first = TrainingOptimizer.Create(straight, config))
        {
            for (int step = 1; step <= 2; step++) { SetGradients(first, step); first.Step(); }
            first.Save(path);
            for (int step = 3; step <= 4; step++) { SetGradients(first, step); first.Step(); }
        }
        // replay: a fresh model, steps 1-2, save and reload into a new optimizer, then steps 3-4
        using var replay = TrainingTestKit.Opt(3);
        using (var before = TrainingOptimizer.Create(replay, config))
            for (int step = 1; step <= 2; step++) { SetGradients(before, step); before.Step(); }
        using var after = TrainingOptimizer.Create(replay, config);
        Assert.False(after.StateAllocated);
        after.Load(path);
        Assert.True(after.StateAllocated);
        for (int step = 3; step <= 4; step++) { SetGradients(after, step); after.Step(); }
        var straightParameters = straight.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, parameter) in replay.named_parameters())
            Assert.True(parameter.eq(straightParameters[name]).all().item<bool>(), $"{name} differs after the resume");
    }
}
