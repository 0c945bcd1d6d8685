using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

/// <summary>
/// Packed (padding-free) training (issue 17 point 1): sequences side by side in rows, attention confined to each
/// sequence and positions restarting per sequence give what the right-padded batch gives, within float rounding, for
/// all three families (OPT's learned positions, GPT-2's, Llama's RoPE): log-probs, DPO loss and gradients, SFT loss,
/// reward scores, and a response starting at a row's segment boundary; a 0/1 mask still gives exactly today's masks and
/// positions; a packed run resumes bit-identically.
/// </summary>
[Collection(TrainingCollection.Name)]
public class PackedTrainingTests
{
    private static readonly CharTokenizer Tok = TrainingTestKit.Tokenizer;

    public static TheoryData<string> Families => new() { "opt", "gpt2", "llama" };

    /// <summary>A tiny model of <paramref name="family"/> on the 64-token character vocabulary (BOS 0, PAD 1, EOS 2).</summary>
    internal static CausalLM Model(string family, long seed) => CausalLMFactory.Create(family switch
    {
        "opt" => TrainingTestKit.OptConfig(),
        "gpt2" => new ModelConfig
        {
            Family = ModelFamily.Gpt2, ModelType = "gpt2", VocabSize = 64, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2,
            MaxPositionEmbeddings = 128, BosTokenId = 0, EosTokenIds = [2], PadTokenId = 1, HiddenAct = "gelu_new",
            AttentionDropout = 0, ResidDropout = 0, EmbeddingDropout = 0, TieWordEmbeddings = true,
        },
        _ => new ModelConfig
        {
            Family = ModelFamily.Llama, ModelType = "llama", VocabSize = 64, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 4,
            NumKeyValueHeads = 2, IntermediateSize = 32, MaxPositionEmbeddings = 128, HiddenAct = "silu", NormEps = 1e-6,
            RopeTheta = 10000, TieWordEmbeddings = false, BosTokenId = 0, EosTokenIds = [2], PadTokenId = 1,
        },
    }, seed: seed);

    /// <summary>Pairs of long-tailed, unequal lengths: prompts 1-20 characters, responses 1-30, chosen and rejected apart.</summary>
    internal static List<PreferenceExample> VariedPairs(int count, int seed)
    {
        var random = new Random(seed);
        string Word(int n) => new(Enumerable.Range(0, n).Select(_ => (char)('a' + random.Next(0, 20))).ToArray());
        int Tail(int max) => Math.Max(1, (int)(max * Math.Pow(random.NextDouble(), 2.5)));
        return Enumerable.Range(0, count).Select(_ => new PreferenceExample(Word(Tail(20)), Word(Tail(30)), Word(Tail(30)))).ToList();
    }

    private static TokenizedPair[] Tokenized(IEnumerable<PreferenceExample> examples)
    {
        var rules = new PreferenceTokenizer(Tok, new TokenizationOptions { MaxLength = 100, MaxPromptLength = 40 });
        return examples.Select(rules.Tokenize).ToArray();
    }

    private static void Close(Tensor expected, Tensor actual, double tolerance, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        double difference = (expected.to(float64) - actual.to(float64)).abs().max().item<double>();
        double scale = Math.Max(1.0, expected.abs().max().item<float>());
        Assert.True(difference <= tolerance * scale, $"{what}: max |difference| {difference:G3} (scale {scale:G3})");
    }

    [Fact]
    public void AZeroOneMaskGivesExactlyTheMaskAndPositionsOfBefore()
    {
        // right padding, left padding, no padding; the whole mask and a cached tail of 2 queries
        var mask = tensor(new long[,] { { 1, 1, 1, 1, 0, 0 }, { 0, 0, 1, 1, 1, 1 }, { 1, 1, 1, 1, 1, 1 }, { 0, 1, 1, 1, 0, 0 } });
        foreach (long queries in new long[] { 6, 2, 1 })
        {
            long total = 6, past = total - queries;
            // the formulas before segments existed
            var query = arange(past, total, int64).unsqueeze(1);
            var key = arange(0, total, int64).unsqueeze(0);
            var old = key.le(query).unsqueeze(0).unsqueeze(0).logical_and(mask.ne(0).unsqueeze(1).unsqueeze(1)).logical_or(key.eq(query));
            var oldPositions = (mask.cumsum(1) * mask).sub(1L).clamp_min(0L).narrow(1, past, queries);
            Assert.True(Attention.CausalPaddingMask(mask, queries).eq(old).all().item<bool>(), $"mask, {queries} queries");
            Assert.True(Attention.Positions(mask, queries).eq(oldPositions).all().item<bool>(), $"positions, {queries} queries");
        }
    }

    [Fact]
    public void SegmentsRestartPositionsAndSeeOnlyThemselves()
    {
        var mask = tensor(new long[,] { { 1, 1, 1, 2, 2, 3, 0 } });
        Assert.Equal(new long[] { 0, 1, 2, 0, 1, 0, 0 }, Attention.Positions(mask, 7).data<long>().ToArray());
        var visible = Attention.CausalPaddingMask(mask, 7)[0, 0];
        // query 4 (second token of segment 2) sees keys 3 and 4 only; query 5 (segment 3) only itself
        Assert.Equal(new[] { false, false, false, true, true, false, false }, visible[4].data<bool>().ToArray());
        Assert.Equal(new[] { false, false, false, false, false, true, false }, visible[5].data<bool>().ToArray());
        Assert.Equal(new[] { true, true, true, false, false, false, false }, visible[2].data<bool>().ToArray());
    }

    [Fact]
    public void PackingIsFirstFitDecreasingIntoTheRowsOfLeastWork()
    {
        // rows of the longest's width, as before: 9 | 6 3 | 5 4 | 2 (longest first, each into the first row it fits)
        var (_, atLongest, longestWidth) = Collator.PackInto([5, 9, 3, 4, 2, 6], int.MaxValue);
        Assert.Equal(9, longestWidth);
        Assert.Equal(new[] { 9, 9, 9, 2 }, atLongest);
        // for a model 16 wide (attention weighs against rows this wide) one row fewer at the narrowest width that holds
        // them: 9 | 6 4 | 5 3 2 in 3 x 10 cells instead of 4 x 9
        var (spans, rows, width) = Collator.Layout([5, 9, 3, 4, 2, 6], packed: true, hiddenSize: 16);
        Assert.Equal(10, width);
        Assert.Equal(new[] { 9, 10, 10 }, rows);
        Assert.Equal(new SequenceSpan(0, 0, 9), spans[1]);
        Assert.Equal(new SequenceSpan(1, 0, 6), spans[5]);
        Assert.Equal(new SequenceSpan(1, 6, 4), spans[3]);
        Assert.Equal(new SequenceSpan(2, 0, 5), spans[0]);
        Assert.Equal(new SequenceSpan(2, 5, 3), spans[2]);
        Assert.Equal(new SequenceSpan(2, 8, 2), spans[4]);
        // two rows of 15 hold them too, with no fewer cells and wider attention; for OPT-125M's 768 a row of 29 is cheapest
        Assert.Equal(15, Collator.PackInto([5, 9, 3, 4, 2, 6], 2).Width);
        Assert.Equal(29, Collator.Layout([5, 9, 3, 4, 2, 6], packed: true, hiddenSize: 768).Width);
    }

    /// <summary>HH-RLHF-like token lengths, drawn as benchmarks/ModelBench/PackingBench.cs draws them (its set is
    /// (256, 17)): prompt ~ logN(ln 60, 0.9) up to 128, responses ~ logN(ln 45, 0.9) up to 256 with the prompt, chosen and
    /// rejected drawn apart.</summary>
    private static (int Chosen, int Rejected, int Longer)[] LongTailedPairs(int count, int seed)
    {
        var random = new Random(seed);
        int LogNormal(double median)
        {
            double u = 1 - random.NextDouble(), v = random.NextDouble();
            return Math.Max(4, (int)Math.Round(median * Math.Exp(0.9 * Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v))));
        }
        return Enumerable.Range(0, count).Select(_ =>
        {
            int prompt = Math.Min(128, LogNormal(60));
            int chosen = prompt + Math.Min(256 - prompt, LogNormal(45)), rejected = prompt + Math.Min(256 - prompt, LogNormal(45));
            return (chosen, rejected, Math.Max(chosen, rejected));
        }).ToArray();
    }

    [Theory]
    [InlineData(768)]
    [InlineData(64)]
    public void PackedBatchesOfLongTailedLengthsPadAtMostFivePercentAndPlaceEverySequenceOnce(int hiddenSize)
    {
        var set = LongTailedPairs(256, 17);
        var longer = set.Select(p => p.Longer).ToArray();
        var plans = new (string Name, IReadOnlyList<int[]> Batches)[]
        {
            ("DPO micro-batches of 4 pairs, input order", Enumerable.Range(0, set.Length / 4).Select(k => Enumerable.Range(4 * k, 4).ToArray()).ToList()),
            ("labelling: 16 pairs, sorted in windows", LengthBatches.Plan(longer, 16, LengthBatches.Window(16))),
            ("reference pass: 4 pairs, sorted", LengthBatches.Plan(longer, 4)),
        };
        foreach (var (name, batches) in plans)
        {
            long real = 0, cells = 0, cellsBefore = 0;
            foreach (var members in batches)
            {
                int[] lengths = [.. members.Select(i => set[i].Chosen), .. members.Select(i => set[i].Rejected)];
                var (spans, rows, width) = Collator.Layout(lengths, packed: true, hiddenSize);
                var before = Collator.PackInto(lengths, int.MaxValue);
                Assert.True(width >= lengths.Max(), $"{name}: width {width} under the longest {lengths.Max()}");
                Assert.True(rows.Length <= before.RowLengths.Length, $"{name}: {rows.Length} rows, {before.RowLengths.Length} at the longest's width");
                // every sequence once, whole; each row's sequences side by side from its start, as the segment ids number them
                Assert.Equal(lengths, spans.Select(s => s.Length).ToArray());
                for (int row = 0; row < rows.Length; row++)
                {
                    int end = 0;
                    foreach (var span in spans.Where(s => s.Row == row).OrderBy(s => s.Start))
                    {
                        Assert.Equal(end, span.Start);
                        end += span.Length;
                    }
                    Assert.Equal(rows[row], end);
                    Assert.True(end <= width && end > 0, $"{name}: row {row} holds {end} of {width}");
                }
                real += lengths.Sum();
                cells += (long)rows.Length * width;
                cellsBefore += (long)before.RowLengths.Length * before.Width;
            }
            double share = 1 - (double)real / cells, shareBefore = 1 - (double)real / cellsBefore;
            // the goal on OPT-125M; a narrow model, where attention over a wide row weighs more, keeps rows
            // narrower, but never pads more than rows of the longest's width (wider rows are taken only for fewer cells)
            Assert.True(share <= (hiddenSize >= 768 ? 0.05 : shareBefore) && cells <= cellsBefore,
                $"{name}, hidden {hiddenSize}: padding {share:P1} (rows of the longest's width: {shareBefore:P1})");
        }
    }

    [Fact]
    public void APackedBatchNumbersItsSegmentsLeftToRightInEveryRow()
    {
        var pairs = Tokenized(VariedPairs(16, 21));
        using var batch = Collator.CollatePreferences(pairs, Tok.PadTokenId, CPU, packed: true);
        var mask = batch.AttentionMask.data<long>().ToArray();
        int width = batch.SequenceLength;
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            var span = batch.Sequences[s];
            int before = batch.Sequences.Count(o => o.Row == span.Row && o.Start < span.Start);
            for (int t = span.Start; t < span.Start + span.Length; t++) Assert.Equal(before + 1, mask[span.Row * width + t]);
        }
        Assert.Equal(batch.Lengths.Sum(), mask.Count(m => m != 0));
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void PackedLogProbsEqualPadded(string family)
    {
        using var model = Model(family, 3);
        model.eval();
        var pairs = Tokenized(VariedPairs(12, 5));
        using var padded = Collator.CollatePreferences(pairs, Tok.PadTokenId, CPU);
        using var packed = Collator.CollatePreferences(pairs, Tok.PadTokenId, CPU, packed: true);
        Assert.True(packed.RowCount < padded.RowCount, $"{packed.RowCount} packed rows for {padded.RowCount} sequences");
        Assert.True(packed.PaddingShare < padded.PaddingShare / 2, $"padding {packed.PaddingShare:P0} packed, {padded.PaddingShare:P0} padded");
        Assert.Equal(2 * pairs.Length, packed.SequenceCount);
        using var noGrad = no_grad();
        using var a = ResponseLogProbs.ComputeDetailed(model, padded, wpo: true);
        using var b = ResponseLogProbs.ComputeDetailed(model, packed, wpo: true);
        Close(a.SequenceLogps, b.SequenceLogps, 1e-5, "sequence log-probs");
        Assert.True(a.TokenCounts.eq(b.TokenCounts).all().item<bool>());
        Assert.True(a.SequenceIndex.eq(b.SequenceIndex).all().item<bool>());
        Close(a.TokenLogps, b.TokenLogps, 1e-5, "token log-probs (ordered by sequence, position)");
        Close(a.LogitSums, b.LogitSums, 1e-5, "logit sums");
        Close(a.WpoLogWeights!, b.WpoLogWeights!, 1e-5, "WPO weights");
        Close(a.PairTailLogps(pairs.Length), b.PairTailLogps(pairs.Length), 1e-5, "LD-DPO tails");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void PackedDpoLossAndGradientsEqualPadded(string family)
    {
        var pairs = Tokenized(VariedPairs(10, 7));
        var reference = randn(2 * pairs.Length, generator: new torch.Generator(3)).mul(5).sub(40);
        (float Loss, Dictionary<string, Tensor> Grads) Step(bool packed)
        {
            using var model = Model(family, 4);
            model.train();
            Dropouts.Disable(model);
            using var batch = Collator.CollatePreferences(pairs, Tok.PadTokenId, CPU, packed);
            using var detail = ResponseLogProbs.ComputeDetailed(model, batch);
            int n = pairs.Length;
            var output = PreferenceScoring.Loss(PreferenceLossInputs.FromConcatenated(detail.SequenceLogps, reference, n), new PreferenceLossSettings { Beta = 0.1 });
            output.Loss.backward();
            return (output.Loss.item<float>(), model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!.clone()));
        }
        var (paddedLoss, paddedGrads) = Step(false);
        var (packedLoss, packedGrads) = Step(true);
        Assert.Equal(paddedLoss, packedLoss, 5);
        foreach (var (name, g) in paddedGrads) Close(g, packedGrads[name], 1e-4, $"gradient of {name}");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void AResponseAtASegmentStartIsNotScoredFromThePreviousSequence(string family)
    {
        using var model = Model(family, 6);
        model.eval();
        // no prompt at all: the response's first token starts its segment and has no context to be predicted from
        var sequences = new[]
        {
            new TokenizedSequence([0, 5, 6, 7], [8, 9, 2]),
            new TokenizedSequence([], [10, 11, 12, 2]),
            new TokenizedSequence([0, 13], [14, 2]),
            new TokenizedSequence([], [15, 16, 2]),
            new TokenizedSequence([0, 5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 2]),
        };
        using var padded = Collator.CollateSft(sequences, Tok.PadTokenId, CPU);
        using var packed = Collator.CollateSft(sequences, Tok.PadTokenId, CPU, packed: true);
        // the prompt-less sequences do not open a row: each follows another sequence
        Assert.All(new[] { 1, 3 }, i => Assert.True(packed.Sequences[i].Start > 0, $"sequence {i} at {packed.Sequences[i]}"));
        using var noGrad = no_grad();
        using var a = ResponseLogProbs.ComputeDetailed(model, padded);
        using var b = ResponseLogProbs.ComputeDetailed(model, packed);
        Assert.Equal(sequences.Select(s => (long)SftTrainer.ScoredTokens(s)).ToArray(), b.TokenCounts.data<long>().ToArray());
        Close(a.SequenceLogps, b.SequenceLogps, 1e-5, "sequence log-probs");
        Close(a.TokenLogps, b.TokenLogps, 1e-5, "token log-probs");
    }

    [Theory]
    [InlineData("opt")]
    [InlineData("gpt2")]
    public void PackedRewardsEqualPadded(string family)
    {
        using var backbone = Model(family, 8);
        using var model = new RewardModel(backbone, seed: 9) { PadTokenId = family == "gpt2" ? 2 : 1 }; // GPT-2: pad == eos
        model.eval();
        var pairs = Tokenized(VariedPairs(9, 10));
        using var padded = Collator.CollatePreferences(pairs, Tok.PadTokenId, CPU);
        using var packed = Collator.CollatePreferences(pairs, Tok.PadTokenId, CPU, packed: true);
        using var noGrad = no_grad();
        Close(model.Rewards(padded), model.Rewards(packed), 1e-5, "rewards");
    }

    private static TrainResult TrainDpo(bool packed, string dir, IProgress<WeakTeacher.Engine.Pipeline.JobProgress>? progress = null,
        CancellationToken ct = default, Dictionary<string, Tensor>? weights = null)
    {
        var config = new DpoConfig
        {
            BatchSize = 4, GradientAccumulationSteps = 2, MaxSteps = 4, LearningRate = 1e-3, SaveSteps = 2, PaddingFree = packed,
            Lora = new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["q_proj", "v_proj", "fc1"] },
        };
        using var policy = TrainingTestKit.Opt(21);
        var result = new DpoTrainer(policy, Tok, config, ReferenceModel.FromFactory("ref-21", () => TrainingTestKit.Opt(21)))
            .Train(VariedPairs(16, 11), dir, progress, ct);
        if (weights is not null)
            foreach (var (name, w) in TrainingTestKit.Snapshot(policy)) weights[name] = w;
        return result;
    }

    [Fact]
    public void TrainersPackedLogWhatPaddedLog()
    {
        var ct = TestContext.Current.CancellationToken;
        using var dir = new TempDir();
        var padded = TrainDpo(false, dir.Sub("dpo-padded"), ct: ct);
        var packed = TrainDpo(true, dir.Sub("dpo-packed"), ct: ct);
        for (int step = 0; step < 4; step++)
            foreach (var metric in new[] { "loss", "grad_norm", "rewards/margins", "logps/chosen" })
                Assert.True(Math.Abs(padded.LogHistory[step][metric] - packed.LogHistory[step][metric]) <= 1e-4 * Math.Max(1, Math.Abs(padded.LogHistory[step][metric])),
                    $"DPO step {step + 1} {metric}: {padded.LogHistory[step][metric]} padded, {packed.LogHistory[step][metric]} packed");

        var sft = VariedPairs(12, 12).Select(e => new SftExample(e.Prompt, e.Chosen)).ToList();
        double SftLoss(bool p)
        {
            using var model = TrainingTestKit.Opt(22);
            var trainer = new SftTrainer(model, Tok, new SftConfig { BatchSize = 6, MaxSteps = 2, LearningRate = 1e-3, PaddingFree = p });
            double before = trainer.ComputeLoss(sft);
            var run = trainer.Train(sft, dir.Sub("sft-" + p), cancellationToken: ct);
            return before + run.LogHistory[1]["loss"];
        }
        Assert.Equal(SftLoss(false), SftLoss(true), 4);

        var rewardPairs = VariedPairs(12, 13);
        double RewardLoss(bool p)
        {
            using var backbone = TrainingTestKit.Opt(23);
            using var model = new RewardModel(backbone, seed: 24);
            var trainer = new RewardTrainer(model, Tok, new RewardConfig { BatchSize = 6, MaxSteps = 2, LearningRate = 1e-3, PaddingFree = p });
            double before = trainer.ComputeLoss(rewardPairs);
            var run = trainer.Train(rewardPairs, dir.Sub("reward-" + p), cancellationToken: ct);
            return before + run.LogHistory[1]["loss"];
        }
        Assert.Equal(RewardLoss(false), RewardLoss(true), 4);
    }

    [Fact]
    public void APackedRunResumesToBitIdenticalWeights()
    {
        var ct = TestContext.Current.CancellationToken;
        using var dir = new TempDir();
        var expected = new Dictionary<string, Tensor>();
        var full = TrainDpo(true, dir.Sub("full"), ct: ct, weights: expected);
        using (var cancel = new CancellationTokenSource())
        {
            var cut = TrainDpo(true, dir.Sub("cut"), new SyncProgress<WeakTeacher.Engine.Pipeline.JobProgress>(p => { if (p.Step == 2) cancel.Cancel(); }), cancel.Token);
            Assert.False(cut.Completed);
        }
        var actual = new Dictionary<string, Tensor>();
        var resumed = TrainDpo(true, dir.Sub("cut"), ct: ct, weights: actual);
        Assert.Equal(2, resumed.ResumedFromStep);
        foreach (var (name, w) in expected) Assert.True(w.eq(actual[name]).all().item<bool>(), $"{name} differs after resume");
        Assert.Equal(full.LogHistory.Select(r => r["loss"]), resumed.LogHistory.Select(r => r["loss"]));
        // a padded run in the same folder is another run: refused, naming the setting
        var error = Assert.Throws<WeakTeacher.Engine.Checkpoints.CheckpointException>(() => TrainDpo(false, dir.Sub("cut"), ct: ct));
        Assert.Contains("padding_free", error.Message);
    }

    [Fact]
    public void PaddingFreeIsReadFromConfigJsonAndOnlyInFingerprintsWhenOn()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.Sub("pipeline.json"), """
            { "output_dir": "out", "teacher": { "base_model": "m", "dpo": { "padding_free": true } }, "student": { "base_model": "s" },
              "data": { "labelled": "l.jsonl", "unlabelled": "u.jsonl", "eval_prompts": "e.jsonl" } }
            """);
        var config = WeakTeacher.Engine.Pipeline.PipelineConfig.Load(dir.Sub("pipeline.json"));
        Assert.True(config.Teacher.Dpo.PaddingFree);
        Assert.False(config.Teacher.Sft.PaddingFree);
        Assert.True(config.WithPaddingFree(true).Student.Sft.PaddingFree);
        var off = TrainingLoop.RunSettings("dpo", "x", new DpoConfig(), 4, 1);
        Assert.DoesNotContain("padding_free", off.Keys);
        Assert.Equal("true", TrainingLoop.RunSettings("dpo", "x", new DpoConfig { PaddingFree = true }, 4, 1)["padding_free"]);
    }
}
