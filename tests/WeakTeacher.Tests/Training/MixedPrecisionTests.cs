using TorchSharp;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

/// <summary>bf16 mixed precision (<see cref="MixedPrecision"/>) on CPU libtorch, which runs bfloat16 matmuls.</summary>
[Collection(TrainingCollection.Name)]
public class MixedPrecisionTests
{
    private static readonly CharTokenizer Tok = TrainingTestKit.Tokenizer;

    /// <summary>Stated tolerance: a bf16 run's per-step DPO loss within 0.01 of the fp32 run's (ln 2 = 0.693 at step 1;
    /// measured on CPU: at most 0.0026 apart with full fine-tuning, 0.0046 with LoRA, over 10 steps).</summary>
    private const double LossTolerance = 0.01;

    private static DpoConfig Config(TrainingPrecision precision, LoraConfig? lora) => new()
    {
        BatchSize = 4, MaxSteps = 10, LearningRate = lora is null ? 2e-2 : 5e-2, WarmupRatio = 0, Lora = lora, Precision = precision,
    };

    private static (TrainResult Result, Dictionary<string, Tensor> Weights, List<ScalarType> ComputeTypes) Train(DpoConfig config, string dir)
    {
        var examples = TrainingTestKit.XPreferences(16, 3);
        torch.manual_seed(5);
        using var policy = TrainingTestKit.Opt(61);
        var reference = ReferenceModel.FromFactory("ref-61", () => TrainingTestKit.Opt(61));
        var seen = new List<ScalarType>();
        var progress = new SyncProgress<JobProgress>(_ => seen.Add(policy.DType));
        var result = new DpoTrainer(policy, Tok, config, reference).Train(examples, dir, progress, TestContext.Current.CancellationToken);
        return (result, TrainingTestKit.Snapshot(policy), seen);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Bf16DpoLossCurveTracksFp32(bool lora)
    {
        var adapter = lora ? new LoraConfig { Rank = 4, Alpha = 8, Dropout = 0, TargetModules = ["q_proj", "v_proj", "fc1"] } : null;
        using var dir = new TempDir();
        var fp32 = Train(Config(TrainingPrecision.Fp32, adapter), dir.Sub("fp32"));
        var bf16 = Train(Config(TrainingPrecision.Bf16, adapter), dir.Sub("bf16"));
        var fp32Loss = fp32.Result.LogHistory.Select(r => r["loss"]).ToArray();
        var bf16Loss = bf16.Result.LogHistory.Select(r => r["loss"]).ToArray();
        Assert.Equal(10, fp32Loss.Length);
        Assert.Equal(10, bf16Loss.Length);
        // the curve moves by far more than the tolerance, so a bf16 run that did not learn would fail
        Assert.True(fp32Loss[0] - fp32Loss[^1] > 3 * LossTolerance, $"fp32 loss only went from {fp32Loss[0]} to {fp32Loss[^1]}: fp32 {string.Join(" ", fp32Loss.Select(l => l.ToString("F4")))}, bf16 {string.Join(" ", bf16Loss.Select(l => l.ToString("F4")))}");
        for (int i = 0; i < fp32Loss.Length; i++)
            Assert.True(Math.Abs(fp32Loss[i] - bf16Loss[i]) <= LossTolerance, $"step {i + 1}: fp32 loss {fp32Loss[i]:F5}, bf16 {bf16Loss[i]:F5}");
        // the model computed in bf16 during training and ends in fp32 (the masters' values)
        Assert.All(fp32.ComputeTypes, t => Assert.Equal(ScalarType.Float32, t));
        Assert.NotEmpty(bf16.ComputeTypes);
        Assert.All(bf16.ComputeTypes, t => Assert.Equal(ScalarType.BFloat16, t));
        Assert.All(bf16.Weights.Values, w => Assert.Equal(ScalarType.Float32, w.dtype));
        Assert.Equal(fp32.Weights.Keys.Order(), bf16.Weights.Keys.Order());
    }

    [Fact]
    public void MastersKeepUpdatesBelowBf16Resolution()
    {
        // AdamW's first step moves each weight by about lr = 1e-5; OPT's weights ~ N(0, 0.02) have a bf16 spacing of
        // about 1e-4, so a bf16-only model would round most updates away, the fp32 masters keep them
        var config = Config(TrainingPrecision.Bf16, lora: null) with { MaxSteps = 1, LearningRate = 1e-5 };
        using var dir = new TempDir();
        using var initial = TrainingTestKit.Opt(61);
        var before = TrainingTestKit.Snapshot(initial);
        var (_, after, _) = Train(config, dir.Path);
        var weight = "model.decoder.layers.0.fc1.weight";
        var delta = (after[weight] - before[weight]).abs();
        var moved = delta.gt(0).to(float32).mean().item<float>();
        Assert.True(moved > 0.5, $"only {moved:P0} of {weight} moved");
        Assert.True(delta.max().item<float>() < 5e-5, $"largest move {delta.max().item<float>()} is not an lr-sized step");
        // a model trained in bf16 alone would hold bf16 values; these are the masters' float32 values
        var representable = after[weight].to(bfloat16).to(float32).eq(after[weight]).to(float32).mean().item<float>();
        Assert.True(representable < 0.1, $"{representable:P0} of {weight} are bf16 values");
    }

    [Fact]
    public void FrozenWeightsComeBackBitExactFromTheirMasters()
    {
        var adapter = new LoraConfig { Rank = 2, Alpha = 4, Dropout = 0, TargetModules = ["q_proj"] };
        var config = Config(TrainingPrecision.Bf16, adapter) with { MaxSteps = 2 };
        using var dir = new TempDir();
        using var initial = TrainingTestKit.Opt(61);
        var before = TrainingTestKit.Snapshot(initial);
        var (_, after, _) = Train(config, dir.Path);
        // only q_proj has an adapter (merged into it at the end); every other weight was frozen and must come back as
        // its fp32 value, not a bf16 round trip
        foreach (var (name, w) in before.Where(kv => !kv.Key.Contains("q_proj")))
            Assert.True(TrainerTests.Same(after[name], w), $"{name} changed");
    }

    [Fact]
    public void InterruptedBf16RunResumesToBitIdenticalWeights()
    {
        var config = Config(TrainingPrecision.Bf16, lora: null) with { MaxSteps = 4, SaveSteps = 1 };
        using var dir = new TempDir();
        var full = Train(config, dir.Sub("full"));
        var examples = TrainingTestKit.XPreferences(16, 3);
        var reference = ReferenceModel.FromFactory("ref-61", () => TrainingTestKit.Opt(61));
        torch.manual_seed(5);
        using (var policy = TrainingTestKit.Opt(61))
        {
            using var cancel = new CancellationTokenSource();
            var progress = new SyncProgress<JobProgress>(p => { if (p.Step == 2) cancel.Cancel(); });
            var partial = new DpoTrainer(policy, Tok, config, reference).Train(examples, dir.Sub("cut"), progress, cancel.Token);
            Assert.False(partial.Completed);
            Assert.Equal(ScalarType.Float32, policy.DType);
        }
        using var resumedPolicy = TrainingTestKit.Opt(61);
        var resumed = new DpoTrainer(resumedPolicy, Tok, config, reference).Train(examples, dir.Sub("cut"), cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(2, resumed.ResumedFromStep);
        var actual = TrainingTestKit.Snapshot(resumedPolicy);
        foreach (var (name, w) in full.Weights) Assert.True(TrainerTests.Same(w, actual[name]), $"{name} differs after resume");
        Assert.Equal(full.Result.LogHistory.Select(r => r["loss"]), resumed.LogHistory.Select(r => r["loss"]));
    }

    [Fact]
    public void PrecisionIsPartOfTheRunSettingsOnlyWhenNotFp32()
    {
        // fp32 runs keep the fingerprint they had before the setting existed (their checkpoints still resume)
        var fp32 = TrainingLoop.RunSettings("dpo", "data", new DpoConfig(), 8, 2);
        var bf16 = TrainingLoop.RunSettings("dpo", "data", new DpoConfig { Precision = TrainingPrecision.Bf16 }, 8, 2);
        Assert.DoesNotContain("precision", fp32.Keys);
        Assert.Equal("\"bf16\"", bf16["precision"]);
        Assert.Equal("bf16", TrainingPrecision.Bf16.Name());
        Assert.Equal(TrainingPrecision.Bf16, TrainingPrecisions.Parse("bf16"));
        Assert.Null(TrainingPrecisions.Parse("fp16"));
        // and a pipeline config file spells it "precision": "bf16"
        var json = """{"precision": "bf16", "batch_size": 2}""";
        var config = System.Text.Json.JsonSerializer.Deserialize<SftConfig>(json, PipelineConfig.JsonOptions)!;
        Assert.Equal(TrainingPrecision.Bf16, config.Precision);
    }
}
