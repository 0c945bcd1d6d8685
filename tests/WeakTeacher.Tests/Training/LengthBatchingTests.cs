using TorchSharp;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

/// <summary>
/// Length-aware batching where order does not matter (issue 17 point 2): batches of similar length, sorted within fixed
/// windows, results back in input order, equal to the input-order path within float rounding.
/// </summary>
[Collection(TrainingCollection.Name)]
public class LengthBatchingTests
{
    private static readonly CharTokenizer Tok = TrainingTestKit.Tokenizer;

    [Fact]
    public void BatchesAreSortedWithinWindowsAndCoverEveryItemOnce()
    {
        var random = new Random(3);
        var lengths = Enumerable.Range(0, 53).Select(_ => random.Next(1, 200)).ToArray();
        var batches = LengthBatches.Plan(lengths, batchSize: 4, window: 12);
        Assert.Equal(Enumerable.Range(0, 53), batches.SelectMany(b => b).Order());
        foreach (var batch in batches)
        {
            Assert.InRange(batch.Length, 1, 4);
            Assert.Single(batch.Select(i => i / 12).Distinct());          // never across a window
            Assert.Equal(batch.OrderByDescending(i => lengths[i]).ThenBy(i => i), batch);
        }
        // within a window, a later batch holds no longer item than an earlier one
        foreach (var window in batches.GroupBy(b => b[0] / 12))
        {
            var list = window.ToList();
            for (int k = 1; k < list.Count; k++) Assert.True(lengths[list[k][0]] <= lengths[list[k - 1][^1]]);
        }
        // a slice of whole windows forms the same batches as the whole input does there
        var slice = LengthBatches.Plan(lengths[24..48], 4, 12).Select(b => b.Select(i => i + 24).ToArray());
        Assert.Equal(batches.Where(b => b[0] is >= 24 and < 48), slice);
        // a token budget closes a batch before items x longest passes it
        var budgeted = LengthBatches.Plan(lengths, 8, tokenBudget: 400);
        Assert.All(budgeted, b => Assert.True(b.Length == 1 || b.Length * lengths[b[0]] <= 400));
        Assert.Equal(53, budgeted.Sum(b => b.Length));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TheReferencePassInLengthOrderEqualsTheInputOrderPass(bool paddingFree)
    {
        var examples = PackedTrainingTests.VariedPairs(19, 31);
        using var policy = TrainingTestKit.Opt(32);
        var config = new DpoConfig { BatchSize = 4, MaxLength = 100, MaxPromptLength = 40, PaddingFree = paddingFree };
        var trainer = new DpoTrainer(policy, Tok, config, ReferenceModel.FromFactory("ref-33", () => TrainingTestKit.Opt(33)));
        using var dir = new TempDir();
        using var values = trainer.ReferenceLogProbs(examples, dir.Path, out bool fromCache);
        Assert.False(fromCache);

        // the input-order pass: batches of 4 in dataset order, right-padded
        using var reference = TrainingTestKit.Opt(33);
        reference.eval();
        var pairs = examples.Select(new PreferenceTokenizer(Tok, config.Tokenization).Tokenize).ToArray();
        using var noGrad = no_grad();
        for (int start = 0; start < pairs.Length; start += 4)
        {
            int count = Math.Min(4, pairs.Length - start);
            using var batch = Collator.CollatePreferences(pairs[start..(start + count)], Tok.PadTokenId);
            using var detail = ResponseLogProbs.ComputeDetailed(reference, batch);
            var expected = stack([detail.SequenceLogps.narrow(0, 0, count), detail.SequenceLogps.narrow(0, count, count)], 1);
            var actual = values.Logps.narrow(0, start, count);
            Assert.True((expected - actual).abs().max().item<float>() < 1e-4, $"pairs {start}..{start + count - 1}");
            var counts = stack([detail.TokenCounts.narrow(0, 0, count), detail.TokenCounts.narrow(0, count, count)], 1).to(float32);
            Assert.True(counts.eq(values.TokenCounts.narrow(0, start, count)).all().item<bool>());
            var tails = detail.PairTailLogps(count);
            Assert.True((stack([tails.narrow(0, 0, count), tails.narrow(0, count, count)], 1) - values.TailLogps.narrow(0, start, count)).abs().max().item<float>() < 1e-4);
        }
    }

    /// <summary>Pairs of long-tailed lengths in shuffled order, as unlabelled pairs.</summary>
    private static List<UnlabelledPair> ShuffledPairs(int count, int seed) =>
        PackedTrainingTests.VariedPairs(count, seed).Select((p, i) => new UnlabelledPair("p" + i, p.Prompt, p.Chosen, p.Rejected, i % 2))
            .ToList();

    [Fact]
    public void LabellingInLengthOrderGivesTheInputOrderLabels()
    {
        using var policy = TrainingTestKit.Opt(41);
        using var reference = TrainingTestKit.Opt(42);
        using var labeler = WeakTeacher.Engine.Labelling.WeakLabeler.FromDpoTeacher(policy, reference, Tok);
        // more pairs than one window of batches of 3 (24), so several windows are sorted
        var pairs = ShuffledPairs(LengthBatches.Window(3) + 13, 43);
        var sorted = labeler.LabelAll(pairs, batchSize: 3, cancellationToken: TestContext.Current.CancellationToken).Labels;
        for (int start = 0; start < pairs.Count; start += 3)
        {
            var unsorted = labeler.LabelBatch(pairs.Skip(start).Take(3).ToList());
            for (int j = 0; j < unsorted.Count; j++)
            {
                var (a, b) = (unsorted[j], sorted[start + j]);
                Assert.True(Math.Abs(a.RewardA - b.RewardA) < 1e-4 && Math.Abs(a.RewardB - b.RewardB) < 1e-4, $"pair {start + j}: {a} vs {b}");
                if (Math.Abs(a.Margin) > 1e-3) Assert.Equal(a.Label, b.Label);
            }
        }
    }

    [Fact]
    public void RewardScoresInLengthOrderAreTheInputOrderScores()
    {
        using var backbone = TrainingTestKit.Opt(44);
        using var model = new RewardModel(backbone, seed: 45) { PadTokenId = Tok.PadTokenId };
        var items = ShuffledPairs(23, 46).Select(p => (p.Prompt, p.ResponseA)).ToList();
        var sorted = model.Score(items, Tok, batchSize: 4);
        var one = items.Select(i => model.Score([i], Tok, batchSize: 1)[0]).ToArray();
        for (int i = 0; i < items.Count; i++) Assert.True(Math.Abs(one[i] - sorted[i]) < 1e-5, $"item {i}: {one[i]} vs {sorted[i]}");
    }

    [Fact]
    public void PackedLabellingGivesThePaddedLabels()
    {
        using var policy = TrainingTestKit.Opt(47);
        using var reference = TrainingTestKit.Opt(48);
        using var backbone = TrainingTestKit.Opt(49);
        using var rewardModel = new RewardModel(backbone, seed: 50) { PadTokenId = Tok.PadTokenId };
        var pairs = ShuffledPairs(11, 51);
        var ct = TestContext.Current.CancellationToken;
        foreach (var (packed, padded) in new[]
                 {
                     (WeakTeacher.Engine.Labelling.WeakLabeler.FromDpoTeacher(policy, reference, Tok),
                      WeakTeacher.Engine.Labelling.WeakLabeler.FromDpoTeacher(policy, reference, Tok, new() { PaddingFree = false })),
                     (WeakTeacher.Engine.Labelling.WeakLabeler.FromRewardModel(rewardModel, Tok),
                      WeakTeacher.Engine.Labelling.WeakLabeler.FromRewardModel(rewardModel, Tok, new() { Beta = 1, PaddingFree = false })),
                 })
        {
            Assert.True(packed.Options.PaddingFree);
            var a = packed.LabelAll(pairs, batchSize: 4, cancellationToken: ct).Labels;
            var b = padded.LabelAll(pairs, batchSize: 4, cancellationToken: ct).Labels;
            for (int i = 0; i < pairs.Count; i++)
                Assert.True(Math.Abs(a[i].RewardA - b[i].RewardA) < 1e-4 && Math.Abs(a[i].RewardB - b[i].RewardB) < 1e-4, $"pair {i}: {a[i]} vs {b[i]}");
            var sequences = pairs.Select(p => (p.Prompt, p.ResponseA)).ToList();
            var sa = packed.ScoreBatch(sequences);
            var sb = padded.ScoreBatch(sequences);
            for (int i = 0; i < sa.Count; i++) Assert.True(Math.Abs(sa[i] - sb[i]) < 1e-4, $"score {i}: {sa[i]} vs {sb[i]}");
        }
    }
}
