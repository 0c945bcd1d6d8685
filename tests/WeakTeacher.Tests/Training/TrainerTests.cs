using System.Text.Json;
using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

[Collection(TrainingCollection.Name)]
public class TrainerTests
{
    private static readonly CharTokenizer Tok = TrainingTestKit.Tokenizer;

    [Fact]
    public void SftLossIsTheMeanResponseTokenNllByHand()
    {
        using var model = TrainingTestKit.Opt(5);
        var example = new SftExample("Q: ab A: ", "cde");
        // by hand: ids = BOS + prompt + response + EOS; loss over the 4 response tokens (c, d, e, EOS)
        var prompt = new long[] { 0 }.Concat(Tok.Encode(example.Prompt).Select(i => (long)i)).ToArray();
        var response = Tok.Encode(example.Response).Select(i => (long)i).Append(2L).ToArray();
        var ids = prompt.Concat(response).ToArray();
        double expected;
        using (no_grad())
        {
            var input = tensor(ids).unsqueeze(0);
            var logp = model.Logits(input, ones_like(input)).log_softmax(-1)[0];
            double sum = 0;
            for (int t = prompt.Length; t < ids.Length; t++) sum += logp[t - 1, ids[t]].item<float>();
            expected = -sum / response.Length;
        }
        var trainer = new SftTrainer(model, Tok, new SftConfig { BatchSize = 1, MaxSteps = 1 });
        Assert.Equal(expected, trainer.ComputeLoss(new[] { example }), 5);
        using var dir = new TempDir();
        var result = trainer.Train(new[] { example }, dir.Path, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(expected, result.LogHistory[0]["loss"], 5); // logged loss is the pre-update loss of step 1
        Assert.True(File.Exists(Path.Combine(dir.Path, "model.safetensors")));
        var line = File.ReadAllLines(Path.Combine(dir.Path, TrainingLog.MetricsFile)).Single();
        using var row = JsonDocument.Parse(line);
        foreach (var key in new[] { "step", "loss", "grad_norm", "learning_rate", "tokens_per_second", "epoch" })
            Assert.True(row.RootElement.TryGetProperty(key, out _), key);
    }

    [Fact]
    public void DpoLossThroughTheTrainerEqualsTheFormula()
    {
        using var policy = TrainingTestKit.Opt(11);
        var examples = TrainingTestKit.XPreferences(2, 3);
        const double beta = 0.1;
        var rules = new PreferenceTokenizer(Tok, new TokenizationOptions { MaxLength = 512, MaxPromptLength = 256 });
        double[] Logps(CausalLM m, bool chosen) => examples.Select(e =>
        {
            var pair = rules.Tokenize(e);
            using var batch = Collator.CollatePreferences(new[] { pair }, Tok.PadTokenId);
            using var noGrad = no_grad();
            var lp = ResponseLogProbs.Compute(m, batch.InputIds, batch.AttentionMask, batch.ResponseMask);
            return (double)lp[chosen ? 0 : 1].item<float>();
        }).ToArray();
        double[] pc = Logps(policy, true), pr = Logps(policy, false);
        double[] rc, rr;
        using (var reference = TrainingTestKit.Opt(12)) { rc = Logps(reference, true); rr = Logps(reference, false); }
        double expected = Enumerable.Range(0, 2).Average(i => Math.Log(1 + Math.Exp(-beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])))));
        double chosenReward = Enumerable.Range(0, 2).Average(i => beta * (pc[i] - rc[i]));

        using var dir = new TempDir();
        var config = new DpoConfig { BatchSize = 2, MaxSteps = 1, Beta = beta, Lora = null, LearningRate = 1e-3 };
        var trainer = new DpoTrainer(policy, Tok, config, ReferenceModel.FromFactory("ref-12", () => TrainingTestKit.Opt(12)));
        var result = trainer.Train(examples, dir.Sub("dpo"), cancellationToken: TestContext.Current.CancellationToken);
        var row = result.LogHistory[0];
        Assert.Equal(expected, row["loss"], 5);
        Assert.Equal(chosenReward, row["rewards/chosen"], 5);
        Assert.Equal(pc.Average(), row["logps/chosen"], 4);
        Assert.Equal(pr.Average(), row["logps/rejected"], 4);
        Assert.Equal(row["rewards/chosen"] - row["rewards/rejected"], row["rewards/margins"], 6);
        Assert.False(result.ReferenceLogProbsFromCache);
        Assert.True(File.Exists(Path.Combine(dir.Sub("dpo"), "model.safetensors")));
    }

    [Fact]
    public void RewardLossIsNegativeLogSigmoidWithMarginAndCentering()
    {
        using var backbone = TrainingTestKit.Opt(21);
        using var model = new RewardModel(backbone, seed: 4);
        var examples = TrainingTestKit.XPreferences(3, 5);
        var margins = new[] { 0.5, -0.25, 1.0 };
        var scores = model.Score(examples.SelectMany(e => new[] { (e.Prompt, e.Chosen), (e.Prompt, e.Rejected) }).ToList(), Tok);
        double expected = 0;
        for (int i = 0; i < 3; i++)
        {
            double c = scores[2 * i], r = scores[2 * i + 1];
            expected += Math.Log(1 + Math.Exp(-(c - r - margins[i]))) + 0.01 * (c + r) * (c + r);
        }
        expected /= 3;
        var trainer = new RewardTrainer(model, Tok, new RewardConfig { UseMargin = true, CenterRewardsCoefficient = 0.01 });
        Assert.Equal(expected, trainer.ComputeLoss(examples, margins), 5);
    }

    [Fact]
    public void RewardModelTrainsSavesAndLoadsAsSequenceClassifier()
    {
        using var dir = new TempDir();
        using var backbone = TrainingTestKit.Opt(22);
        using var model = new RewardModel(backbone, seed: 4);
        var examples = TrainingTestKit.XPreferences(8, 6);
        var trainer = new RewardTrainer(model, Tok, new RewardConfig { BatchSize = 4, MaxSteps = 2, LearningRate = 1e-3 });
        var result = trainer.Train(examples, dir.Path, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(result.Completed);
        Assert.Contains("accuracy", result.LogHistory[0].Keys);
        Assert.Contains("margin", result.LogHistory[0].Keys);
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.Path, "config.json")));
        Assert.Equal("OPTForSequenceClassification", config.RootElement.GetProperty("architectures")[0].GetString());
        Assert.Equal(1, config.RootElement.GetProperty("num_labels").GetInt32());
        using (var file = WeakTeacher.Engine.Checkpoints.SafeTensorsFile.Open(Path.Combine(dir.Path, "model.safetensors")))
            Assert.Equal(new long[] { 1, 16 }, file.Tensors["score.weight"].Shape);
        using var loaded = RewardModel.Load(dir.Path);
        var items = examples.Select(e => (e.Prompt, e.Chosen)).ToList();
        Assert.Equal(model.Score(items, Tok), loaded.Score(items, Tok, batchSize: 3), new FloatTolerance(1e-5f));
    }

    [Fact]
    public void GradientAccumulationOfTwoByFourEqualsOneBatchOfEight()
    {
        var examples = Enumerable.Range(0, 8).Select(i => new SftExample("Q: " + new string((char)('a' + i), i % 3 + 1) + " A: ", new string('b', i % 4 + 1) + "c")).ToList();
        Dictionary<string, Tensor> Run(int batch, int accumulation, out IReadOnlyDictionary<string, double> row)
        {
            using var dir = new TempDir();
            using var model = TrainingTestKit.Opt(31);
            // eps 1 makes Adam's first step ~ lr * g, so equal gradients give equal weights (sign(g) would amplify noise)
            var config = new SftConfig { BatchSize = batch, GradientAccumulationSteps = accumulation, MaxSteps = 1, LearningRate = 0.1,
                AdamEpsilon = 1.0, WarmupRatio = 0, MaxGradNorm = 0 };
            var result = new SftTrainer(model, Tok, config).Train(examples, dir.Path, cancellationToken: TestContext.Current.CancellationToken);
            row = result.LogHistory[0];
            return TrainingTestKit.Snapshot(model);
        }
        var one = Run(8, 1, out var rowOne);
        var two = Run(4, 2, out var rowTwo);
        Assert.Equal(rowOne["loss"], rowTwo["loss"], 5);
        Assert.Equal(rowOne["grad_norm"], rowTwo["grad_norm"], 4);
        foreach (var (name, w) in one) Assert.True(w.allclose(two[name], rtol: 1e-4, atol: 1e-6), name);
    }

    [Fact]
    public void ReferenceLogProbsAreCachedAndAChangedDatasetInvalidates()
    {
        using var dir = new TempDir();
        using var policy = TrainingTestKit.Opt(41);
        int loads = 0;
        var reference = ReferenceModel.FromFactory("ref-41", () => { loads++; return TrainingTestKit.Opt(41); });
        var trainer = new DpoTrainer(policy, Tok, new DpoConfig { BatchSize = 2, Lora = null }, reference);
        var data = TrainingTestKit.XPreferences(5, 7);
        using var first = trainer.ReferenceLogProbs(data, dir.Path, out bool hit1);
        using var second = trainer.ReferenceLogProbs(data, dir.Path, out bool hit2);
        Assert.False(hit1);
        Assert.True(hit2);
        Assert.Equal(1, loads);
        Assert.True(Same(first.Logps, second.Logps));
        Assert.True(Same(first.TokenCounts, second.TokenCounts));
        Assert.True(Same(first.TailLogps, second.TailLogps));
        Assert.Equal(new long[] { 5, 2 }, first.Logps.shape);
        var changed = data.Take(4).Append(data[4] with { Chosen = data[4].Chosen + "q" }).ToList();
        using var third = trainer.ReferenceLogProbs(changed, dir.Path, out bool hit3);
        Assert.False(hit3);
        Assert.Equal(2, loads);
        Assert.True(Same(first.Logps.narrow(0, 0, 4), third.Logps.narrow(0, 0, 4)));
        // another reference identity is another key too
        var other = new DpoTrainer(policy, Tok, trainer.Config, ReferenceModel.FromFactory("ref-other", () => { loads++; return TrainingTestKit.Opt(41); }));
        using var fourth = other.ReferenceLogProbs(data, dir.Path, out bool hit4);
        Assert.False(hit4);
        // through Train: the second run of the same data reads the cache
        var config = trainer.Config with { MaxSteps = 1, ReferenceCacheDir = dir.Sub("cache") };
        var r1 = new DpoTrainer(policy, Tok, config, reference).Train(data, dir.Sub("run1"), cancellationToken: TestContext.Current.CancellationToken);
        var r2 = new DpoTrainer(policy, Tok, config, reference).Train(data, dir.Sub("run2"), cancellationToken: TestContext.Current.CancellationToken);
        Assert.False(r1.ReferenceLogProbsFromCache);
        Assert.True(r2.ReferenceLogProbsFromCache);
    }

    [Fact]
    public void InterruptedRunResumesToBitIdenticalWeights()
    {
        var examples = TrainingTestKit.XPreferences(12, 9);
        var config = new DpoConfig
        {
            BatchSize = 2, GradientAccumulationSteps = 2, Epochs = 2, LearningRate = 5e-3, WarmupRatio = 0.2, SaveSteps = 2,
            Lora = new LoraConfig { Rank = 4, Alpha = 8, Dropout = 0.1, TargetModules = new[] { "q_proj", "v_proj", "fc1" } }, SaveMergedModel = true,
        };
        var reference = ReferenceModel.FromFactory("ref-51", () => TrainingTestKit.Opt(51));
        using var dir = new TempDir();

        Dictionary<string, Tensor> Uninterrupted(out TrainResult result)
        {
            torch.manual_seed(77);
            using var policy = TrainingTestKit.Opt(51);
            result = new DpoTrainer(policy, Tok, config, reference).Train(examples, dir.Sub("full"), cancellationToken: TestContext.Current.CancellationToken);
            return TrainingTestKit.Snapshot(policy);
        }
        var expected = Uninterrupted(out var full);
        Assert.Equal(6, full.TotalSteps); // 12 pairs / 2 = 6 batches, / 2 accumulation = 3 steps per epoch, 2 epochs

        torch.manual_seed(77);
        TrainResult partial;
        using (var policy = TrainingTestKit.Opt(51))
        {
            using var cancel = new CancellationTokenSource();
            var progress = new SyncProgress<JobProgress>(p => { if (p.Step == 3) cancel.Cancel(); });
            partial = new DpoTrainer(policy, Tok, config, reference).Train(examples, dir.Sub("cut"), progress, cancel.Token);
        }
        Assert.False(partial.Completed);
        Assert.Equal(3, partial.GlobalStep);
        Assert.True(Directory.Exists(Path.Combine(dir.Sub("cut"), "checkpoint-3")));

        torch.manual_seed(999); // a different global RNG state: the checkpoint's must win
        using var resumedPolicy = TrainingTestKit.Opt(51);
        var resumed = new DpoTrainer(resumedPolicy, Tok, config, reference).Train(examples, dir.Sub("cut"), cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(resumed.Completed);
        Assert.Equal(3, resumed.ResumedFromStep);
        Assert.True(resumed.ReferenceLogProbsFromCache);
        var actual = TrainingTestKit.Snapshot(resumedPolicy);
        foreach (var (name, w) in expected) Assert.True(Same(w, actual[name]), $"{name} differs after resume");
        Assert.Equal(full.LogHistory.Select(r => r["loss"]), resumed.LogHistory.Select(r => r["loss"]));
        var metricSteps = File.ReadAllLines(Path.Combine(dir.Sub("cut"), TrainingLog.MetricsFile))
            .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt32()).ToList();
        Assert.Equal(new[] { 1, 2, 3, 4, 5, 6 }, metricSteps);
    }

    [Fact]
    public void ACheckpointOfAnotherRunIsRefused()
    {
        using var dir = new TempDir();
        var examples = Enumerable.Range(0, 4).Select(i => new SftExample("p" + i, "r" + i)).ToList();
        using (var model = TrainingTestKit.Opt(61))
            new SftTrainer(model, Tok, new SftConfig { BatchSize = 2, MaxSteps = 1 }).Train(examples, dir.Path, cancellationToken: TestContext.Current.CancellationToken);
        using var other = TrainingTestKit.Opt(61);
        var ex = Assert.Throws<WeakTeacher.Engine.Checkpoints.CheckpointException>(() =>
            new SftTrainer(other, Tok, new SftConfig { BatchSize = 4, MaxSteps = 1 }).Train(examples, dir.Path, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains("different run", ex.Message);
    }

    internal static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    private sealed class FloatTolerance(float tolerance) : IEqualityComparer<float>
    {
        public bool Equals(float x, float y) => Math.Abs(x - y) <= tolerance;
        public int GetHashCode(float obj) => 0;
    }
}
