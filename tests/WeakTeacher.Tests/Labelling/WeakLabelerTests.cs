using TorchSharp;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Labelling;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Training;
using WeakTeacher.Tests.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Labelling;

[Collection(TrainingCollection.Name)]
public class WeakLabelerTests
{
    private static readonly CharTokenizer Tok = TrainingTestKit.Tokenizer;

    private static List<UnlabelledPair> Pairs(int count, int seed, bool xFirstHalf = true) =>
        TrainingTestKit.XPreferences(count, seed).Select((p, i) => (i % 2 == 0) == xFirstHalf
            ? new UnlabelledPair("p" + i, p.Prompt, p.Chosen, p.Rejected, 0)
            : new UnlabelledPair("p" + i, p.Prompt, p.Rejected, p.Chosen, 1)).ToList();

    private static double LogProb(WeakTeacher.Engine.Models.CausalLM model, string prompt, string response)
    {
        var rules = new PreferenceTokenizer(Tok, new TokenizationOptions { MaxLength = 512, MaxPromptLength = 256 });
        using var batch = Collator.CollateSequences(new[] { rules.TokenizeSequence(prompt, response) }, Tok.PadTokenId);
        using var noGrad = no_grad();
        return ResponseLogProbs.Compute(model, batch.InputIds, batch.AttentionMask, batch.ResponseMask)[0].item<float>();
    }

    [Fact]
    public void DpoTeacherLabelsAgreeWithADirectComputationAndAreDeterministic()
    {
        using var policy = TrainingTestKit.Opt(81);
        using var reference = TrainingTestKit.Opt(82);
        using var labeler = WeakLabeler.FromDpoTeacher(policy, reference, Tok, new LabelingOptions { Beta = 0.1 });
        var pairs = Pairs(5, 3);
        var labels = labeler.LabelBatch(pairs);
        for (int i = 0; i < pairs.Count; i++)
        {
            double ra = LogProb(policy, pairs[i].Prompt, pairs[i].ResponseA) - LogProb(reference, pairs[i].Prompt, pairs[i].ResponseA);
            double rb = LogProb(policy, pairs[i].Prompt, pairs[i].ResponseB) - LogProb(reference, pairs[i].Prompt, pairs[i].ResponseB);
            Assert.Equal(ra, labels[i].RewardA, tolerance: 1e-4);
            Assert.Equal(rb, labels[i].RewardB, tolerance: 1e-4);
            Assert.Equal(ra - rb, labels[i].Margin, tolerance: 1e-4);
            Assert.Equal(ra >= rb ? 0 : 1, labels[i].Label);
            Assert.Equal(1 / (1 + Math.Exp(-0.1 * Math.Abs(ra - rb))), labels[i].Confidence, 5);
        }
        var again = labeler.LabelAll(pairs, batchSize: 2, cancellationToken: TestContext.Current.CancellationToken);
        var third = labeler.LabelAll(pairs, batchSize: 2, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(again.Labels, third.Labels); // bit-identical run to run
        Assert.Equal(labels.Select(l => l.Label), again.Labels.Select(l => l.Label));
        for (int i = 0; i < pairs.Count; i++) Assert.Equal(labels[i].Margin, again.Labels[i].Margin, tolerance: 1e-4);
    }

    [Fact]
    public void MarginQuantileKeepsTheClearestPairsAndTheFileKeepsTheInputFormat()
    {
        using var dir = new TempDir();
        using var policy = TrainingTestKit.Opt(83);
        using var reference = TrainingTestKit.Opt(84);
        using var labeler = WeakLabeler.FromDpoTeacher(policy, reference, Tok);
        var pairs = Pairs(8, 4);
        var result = labeler.LabelAll(pairs, batchSize: 3, marginQuantile: 0.5, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(4, result.KeptCount);
        var kept = result.Labels.Where((_, i) => result.Kept[i]).Select(l => Math.Abs(l.Margin)).Min();
        var dropped = result.Labels.Where((_, i) => !result.Kept[i]).Select(l => Math.Abs(l.Margin)).Max();
        Assert.True(kept >= dropped);
        var path = dir.Sub("labelled.jsonl");
        Assert.Equal(4, result.Write(path));
        var lines = File.ReadAllLines(path);
        Assert.Equal(4, lines.Length);
        Assert.Contains("\"margin\"", lines[0]);
        Assert.Contains("\"reward_a\"", lines[0]);
    }

    [Fact]
    public void ConcurrentLabelBatchCallsGiveTheSameLabels()
    {
        using var policy = TrainingTestKit.Opt(85);
        using var reference = TrainingTestKit.Opt(86);
        using var labeler = WeakLabeler.FromDpoTeacher(policy, reference, Tok);
        var pairs = Pairs(4, 5);
        var expected = labeler.LabelBatch(pairs);
        var results = new IReadOnlyList<PairLabel>[4];
        Parallel.For(0, 4, i => results[i] = labeler.LabelBatch(pairs));
        foreach (var r in results) Assert.Equal(expected, r);
    }

    [Fact]
    public void RewardModelTeacherLabelsByScoreDifference()
    {
        using var backbone = TrainingTestKit.Opt(87);
        using var model = new RewardModel(backbone, seed: 9);
        using var labeler = WeakLabeler.FromRewardModel(model, Tok);
        var pairs = Pairs(4, 6);
        var labels = labeler.LabelBatch(pairs);
        var scores = model.Score(pairs.SelectMany(p => new[] { (p.Prompt, p.ResponseA), (p.Prompt, p.ResponseB) }).ToList(), Tok);
        for (int i = 0; i < pairs.Count; i++)
        {
            Assert.Equal(scores[2 * i], labels[i].RewardA, tolerance: 1e-4);
            Assert.Equal(scores[2 * i + 1], labels[i].RewardB, tolerance: 1e-4);
            Assert.Equal(scores[2 * i] >= scores[2 * i + 1] ? 0 : 1, labels[i].Label);
        }
    }

    [Fact]
    public void ADpoTeacherTrainedOnAnEasyPreferenceLabelsHeldOutPairsBetterThanChance()
    {
        using var dir = new TempDir();
        var train = TrainingTestKit.XPreferences(64, 10);
        using var policy = TrainingTestKit.Opt(90);
        var config = new DpoConfig
        {
            BatchSize = 8, Epochs = 4, LearningRate = 3e-3, Beta = 0.1, WarmupRatio = 0.1, Lora = null,
        };
        var result = new DpoTrainer(policy, Tok, config, ReferenceModel.FromFactory("opt-90", () => TrainingTestKit.Opt(90)))
            .Train(train, dir.Path, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(32, result.GlobalStep);
        using var reference = TrainingTestKit.Opt(90);
        using var labeler = WeakLabeler.FromDpoTeacher(policy, reference, Tok);
        var heldOut = Pairs(40, 11);
        var labelled = labeler.LabelAll(heldOut, batchSize: 16, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(labelled.HumanAgreement >= 0.8, $"agreement {labelled.HumanAgreement}");
    }
}
