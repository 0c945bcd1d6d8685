using System.Text.Json;
using TorchSharp;
using TorchSharp.Modules;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Labelling;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Tokenization;
using WeakTeacher.Engine.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

/// <summary>Training as TRL, PEFT and transformers do it on checkpoints that have dropout (issue 10's defects).</summary>
[Collection(TrainingCollection.Name)]
public class TrlParityTests
{
    private static readonly CharTokenizer Tok = TrainingTestKit.Tokenizer;
    private static readonly TokenizationOptions Rules = new() { MaxLength = 512, MaxPromptLength = 256 };

    /// <summary>OPT-125M's dropout: 0.1 on the residual branches and the attention probabilities.</summary>
    private static CausalLM OptWithDropout(long seed) =>
        CausalLMFactory.Create(TrainingTestKit.OptConfig() with { ResidDropout = 0.1, AttentionDropout = 0.1 }, seed: seed);

    [Fact]
    public void DpoTrainsWithoutDropoutSoStepZeroPolicyEqualsTheReference()
    {
        var examples = TrainingTestKit.XPreferences(4, 3);
        double[] FirstRewards(bool disable)
        {
            using var dir = new TempDir();
            using var policy = OptWithDropout(31);
            // LoRA with PEFT's default dropout 0.05 (B = 0, so the adapter adds nothing at step 0)
            var config = new DpoConfig { BatchSize = 4, MaxSteps = 1, DisableDropout = disable };
            var trainer = new DpoTrainer(policy, Tok, config, ReferenceModel.FromFactory("ref-31", () => OptWithDropout(31)));
            var row = trainer.Train(examples, dir.Sub("dpo"), cancellationToken: TestContext.Current.CancellationToken).LogHistory[0];
            if (disable)
                Assert.All(policy.named_modules().Where(m => m.module is Dropout), m => Assert.Equal(0.0, ((Dropout)m.module).p));
            return [row["rewards/chosen"], row["rewards/rejected"]];
        }
        // TRL's disable_dropout=True: the first step's rewards are exactly 0 (policy == reference, both without noise)
        Assert.All(FirstRewards(disable: true), r => Assert.Equal(0.0, r, 6));
        Assert.Contains(FirstRewards(disable: false), r => Math.Abs(r) > 1e-4);
        Assert.True(new DpoConfig().DisableDropout);
    }

    [Fact]
    public void RewardTrainingDisablesDropoutByDefault()
    {
        using var dir = new TempDir();
        using var backbone = OptWithDropout(32);
        using var model = new RewardModel(backbone, seed: 2);
        var examples = TrainingTestKit.XPreferences(4, 8);
        var trainer = new RewardTrainer(model, Tok, new RewardConfig { BatchSize = 4, MaxSteps = 1 });
        model.eval();
        double evalLoss = trainer.ComputeLoss(examples);
        var row = trainer.Train(examples, dir.Path, cancellationToken: TestContext.Current.CancellationToken).LogHistory[0];
        Assert.Equal(evalLoss, row["loss"], 5); // the training-mode forward of step 1 carries no dropout noise
        Assert.True(new RewardConfig().DisableDropout);
    }

    [Fact]
    public void LoraDropoutIsARegisteredChildThatEvalTurnsOff()
    {
        using var model = TrainingTestKit.Opt(33);
        LoraAdapters.Attach(model, new LoraConfig { Rank = 2, Alpha = 4, Dropout = 0.9, TargetModules = ["q_proj", "v_proj"] }, seed: 1);
        using (no_grad())
            foreach (var (_, p) in LoraAdapters.AdapterParameters(model)) p.copy_(randn(p.shape, generator: new Generator(3)) * 0.5);
        var loraDropouts = model.named_modules().Where(m => m.name.EndsWith(".lora_dropout", StringComparison.Ordinal)).ToList();
        Assert.Equal(4, loraDropouts.Count); // q_proj and v_proj of both layers, as PEFT names them
        model.train();
        Assert.All(loraDropouts, m => Assert.True(m.module.training));
        model.eval();
        Assert.All(loraDropouts, m => Assert.False(m.module.training));
        using var first = TrainingTestKit.Logits(model, "Q: abc A: de");
        using var second = TrainingTestKit.Logits(model, "Q: abc A: de");
        Assert.Equal(0f, (first - second).abs().max().item<float>()); // eval-mode forwards are deterministic: LoRA dropout is off
        // disable_dropout reaches them too (with the model's own: attention and residual dropout of both layers)
        Assert.Equal(loraDropouts.Count + 2 * 2, Dropouts.Disable(model));
        Assert.All(loraDropouts, m => Assert.Equal(0.0, ((Dropout)m.module).p));
    }

    /// <summary>Per response token of one sequence: log p, the vocabulary-mean logit, logsumexp(z), logsumexp(2z).</summary>
    private static (double[] Logp, double[] MeanLogit, double[] Lse, double[] Lse2) Tokens(CausalLM model, int[] prompt, int[] response)
    {
        var ids = prompt.Concat(response).Select(i => (long)i).ToArray();
        using var noGrad = no_grad();
        var input = tensor(ids).unsqueeze(0);
        var logits = model.Logits(input, ones_like(input))[0].to(ScalarType.Float64);
        int n = response.Length;
        var result = (new double[n], new double[n], new double[n], new double[n]);
        for (int k = 0; k < n; k++)
        {
            var row = logits[prompt.Length + k - 1];
            result.Item1[k] = row.log_softmax(0)[ids[prompt.Length + k]].item<double>();
            result.Item2[k] = row.mean().item<double>();
            result.Item3[k] = row.logsumexp(0).item<double>();
            result.Item4[k] = (row * 2).logsumexp(0).item<double>();
        }
        return result;
    }

    private static double LogSigmoid(double x) => Math.Min(x, 0) - Math.Log(1 + Math.Exp(-Math.Abs(x)));

    [Fact]
    public void IpoAveragesPerTokenAndLogitsMetricsAreTrls()
    {
        using var policy = TrainingTestKit.Opt(34);
        var examples = TrainingTestKit.XPreferences(3, 4).Select((e, i) => i == 1 ? e with { Rejected = e.Rejected + "abcdefg" } : e).ToList();
        var rules = new PreferenceTokenizer(Tok, Rules);
        const double beta = 0.2;
        double ipo = 0, logitsChosen = 0, logitsRejected = 0, chosenTokens = 0, rejectedTokens = 0;
        using (var reference = TrainingTestKit.Opt(35))
            foreach (var e in examples)
            {
                var pair = rules.Tokenize(e);
                var (pc, lc, _, _) = Tokens(policy, pair.PromptIds, pair.ChosenIds);
                var (pr, lr, _, _) = Tokens(policy, pair.PromptIds, pair.RejectedIds);
                var (rc, _, _, _) = Tokens(reference, pair.PromptIds, pair.ChosenIds);
                var (rr, _, _, _) = Tokens(reference, pair.PromptIds, pair.RejectedIds);
                // TRL v1.9.0 L1440-1451: the log-ratios averaged over each response's tokens
                double d = (pc.Sum() - rc.Sum()) / pc.Length - (pr.Sum() - rr.Sum()) / pr.Length;
                ipo += Math.Pow(d - 1 / (2 * beta), 2) / examples.Count;
                logitsChosen += lc.Sum();
                logitsRejected += lr.Sum();
                chosenTokens += lc.Length;
                rejectedTokens += lr.Length;
            }
        using var dir = new TempDir();
        var config = new DpoConfig { BatchSize = 3, MaxSteps = 1, Beta = beta, LossTypes = [PreferenceLossType.Ipo], Lora = null };
        var trainer = new DpoTrainer(policy, Tok, config, ReferenceModel.FromFactory("ref-35", () => TrainingTestKit.Opt(35)));
        var row = trainer.Train(examples, dir.Sub("dpo"), cancellationToken: TestContext.Current.CancellationToken).LogHistory[0];
        Assert.Equal(ipo, row["loss"], 4);
        Assert.Equal(logitsChosen / chosenTokens, row["logits/chosen"], 4);
        Assert.Equal(logitsRejected / rejectedTokens, row["logits/rejected"], 4);
        // the reference cache holds what ipo needs: the response token counts per pair
        using var cached = trainer.ReferenceLogProbs(examples, dir.Sub("dpo/" + DpoTrainer.DefaultCacheFolder), out bool hit);
        Assert.True(hit);
        Assert.Equal(examples.Select(e => (float)rules.Tokenize(e).RejectedIds.Length), cached.TokenCounts.select(1, 1).data<float>().ToArray());
    }

    [Fact]
    public void LdAlphaWpoAndAWeightedSftTermThroughTheTrainerMatchTheFormula()
    {
        using var policy = TrainingTestKit.Opt(36);
        var examples = TrainingTestKit.XPreferences(2, 9).Select((e, i) => i == 0 ? e with { Chosen = e.Chosen + "hhhh" } : e).ToList();
        var rules = new PreferenceTokenizer(Tok, Rules);
        const double beta = 0.3, alpha = 0.4;
        double sigmoidTerm = 0, nllSum = 0, nllTokens = 0, meanWeight = 0;
        // WPO (L1565-1576): exp(mean over tokens of log p - (lse(2z) - 2 lse(z))) per response; a pair's weight is the product
        static double W((double[] Logp, double[] Mean, double[] Lse, double[] Lse2) t) =>
            Math.Exp(Enumerable.Range(0, t.Logp.Length).Average(k => t.Logp[k] - (t.Lse2[k] - 2 * t.Lse[k])));
        using (var reference = TrainingTestKit.Opt(37))
            foreach (var e in examples)
            {
                var pair = rules.Tokenize(e);
                var c = Tokens(policy, pair.PromptIds, pair.ChosenIds);
                var r = Tokens(policy, pair.PromptIds, pair.RejectedIds);
                var rc = Tokens(reference, pair.PromptIds, pair.ChosenIds).Logp;
                var rr = Tokens(reference, pair.PromptIds, pair.RejectedIds).Logp;
                int shared = Math.Min(c.Logp.Length, r.Logp.Length);
                // LD-DPO (L1349-1361): tokens past the shared length count alpha times
                double Ld(double[] t) => t.Take(shared).Sum() + alpha * t.Skip(shared).Sum();
                double d = (Ld(c.Logp) - Ld(rc)) - (Ld(r.Logp) - Ld(rr));
                double weight = W(c) * W(r);
                sigmoidTerm += -LogSigmoid(beta * d) * weight / examples.Count;
                meanWeight += weight / examples.Count;
                nllSum -= c.Logp.Sum();   // the sft term uses the plain log-probs, not the LD-weighted ones
                nllTokens += c.Logp.Length;
            }
        // sigmoid weighted 1, sft weighted 0.5; WPO weights scale every loss type's per-pair loss, as TRL does
        double expected = sigmoidTerm + 0.5 * (nllSum / nllTokens) * meanWeight;
        using var dir = new TempDir();
        var config = new DpoConfig
        {
            BatchSize = 2, MaxSteps = 1, Beta = beta, Lora = null,
            LossTypes = [PreferenceLossType.Sigmoid, PreferenceLossType.Sft], LossWeights = [1.0, 0.5], LdAlpha = alpha, UseWeighting = true,
        };
        var trainer = new DpoTrainer(policy, Tok, config, ReferenceModel.FromFactory("ref-37", () => TrainingTestKit.Opt(37)));
        var row = trainer.Train(examples, dir.Sub("dpo"), cancellationToken: TestContext.Current.CancellationToken).LogHistory[0];
        Assert.Equal(expected, row["loss"], 4);
    }

    [Theory]
    [InlineData("beta")]
    [InlineData("weight_decay")]
    [InlineData("warmup_steps")]
    [InlineData("max_grad_norm")]
    [InlineData("label_smoothing")]
    [InlineData("loss_type")]
    [InlineData("lora.alpha")]
    [InlineData("lora.dropout")]
    public void AResumeWithAnotherResultChangingSettingIsRefusedNamingIt(string setting)
    {
        using var dir = new TempDir();
        using var policy = TrainingTestKit.Opt(38);
        var examples = TrainingTestKit.XPreferences(4, 2);
        var reference = ReferenceModel.FromFactory("ref-38", () => TrainingTestKit.Opt(38));
        // one step of four is done and checkpointed, then the run stops
        var config = new DpoConfig { BatchSize = 1, MaxSteps = 4, SaveSteps = 1, LearningRate = 1e-3 };
        using var cts = new CancellationTokenSource();
        var progress = new SyncProgress<JobProgress>(p => { if (p.Step >= 1) cts.Cancel(); });
        var first = new DpoTrainer(policy, Tok, config, reference).Train(examples, dir.Path, progress, cts.Token);
        Assert.False(first.Completed);
        var changed = setting switch
        {
            "beta" => config with { Beta = 0.2 },
            "weight_decay" => config with { WeightDecay = 0.01 },
            "warmup_steps" => config with { WarmupSteps = 2 },
            "max_grad_norm" => config with { MaxGradNorm = 0.5 },
            "label_smoothing" => config with { LabelSmoothing = 0.1 },
            "loss_type" => config with { LossTypes = [PreferenceLossType.Hinge] },
            "lora.alpha" => config with { Lora = config.Lora! with { Alpha = 32 } },
            _ => config with { Lora = config.Lora! with { Dropout = 0.1 } },
        };
        using var again = TrainingTestKit.Opt(38);
        var error = Assert.Throws<CheckpointException>(() =>
            new DpoTrainer(again, Tok, changed, reference).Train(examples, dir.Path, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains(setting, error.Message);
    }

    [Fact]
    public void AFinishedSubStageIsRedoneWhenItsSettingsChangeAndSaysWhich()
    {
        using var dir = new TempDir();
        string baseDir = dir.Sub("base");
        using (var model = TrainingTestKit.Opt(39)) PretrainedModel.Save(model, baseDir);
        var examples = TrainingTestKit.XPreferences(4, 5).Select(e => e.ToSft()).ToList();
        var config = new SftConfig { BatchSize = 2, MaxSteps = 1, LearningRate = 1e-2, WarmupRatio = 0 };
        var ct = TestContext.Current.CancellationToken;
        string output = dir.Sub("sft");
        var first = PipelineStages.Sft(baseDir, examples, config, output, CPU, Tok, null, ct);
        byte[] weights = File.ReadAllBytes(Path.Combine(output, PretrainedModel.WeightsFile));
        // the same request again, differing only in a setting that changes no result: the stored result, nothing retrained
        var same = PipelineStages.Sft(baseDir, examples, config with { LoggingSteps = 5 }, output, CPU, Tok, null, ct);
        Assert.Equal(first.LogHistory[0]["loss"], same.LogHistory[0]["loss"]);
        Assert.Equal(weights, File.ReadAllBytes(Path.Combine(output, PretrainedModel.WeightsFile)));
        // another learning rate: redone, and the result file says which setting differed
        PipelineStages.Sft(baseDir, examples, config with { LearningRate = 5e-2 }, output, CPU, Tok, null, ct);
        Assert.NotEqual(weights, File.ReadAllBytes(Path.Combine(output, PretrainedModel.WeightsFile)));
        using var stored = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "train-result.json")));
        Assert.Contains("learning_rate", stored.RootElement.GetProperty("RedoneBecause").GetString());
        // other examples (the same settings otherwise) are another result too
        PipelineStages.Sft(baseDir, examples.Take(3).ToList(), config with { LearningRate = 5e-2 }, output, CPU, Tok, null, ct);
        using var again = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "train-result.json")));
        Assert.Contains("examples", again.RootElement.GetProperty("RedoneBecause").GetString());
    }

    [Fact]
    public void EvaluationSamplesWithTransformersDefaultTopK()
    {
        var request = new EvaluateRequest { Models = new Dictionary<string, string> { ["m"] = "x" }, PromptsPath = "p" };
        Assert.Equal(50, PipelineStages.SamplingOptions(request).TopK);
        Assert.Equal(7, PipelineStages.SamplingOptions(request with { TopK = 7 }).TopK);
        Assert.Equal(50, new PipelineConfig.EvaluationSection().TopK);
    }

    [Fact]
    public void OneSetOfTokenisationDefaultsForEveryPath()
    {
        int[] prompts = [new TokenizationOptions().MaxPromptLength, new SftConfig().MaxPromptLength, new DpoConfig().MaxPromptLength,
            new RewardConfig().MaxPromptLength, new LabelingOptions().MaxPromptLength,
            new LabelRequest { TeacherDir = "", UnlabelledDataPath = "" }.MaxPromptLength];
        int[] lengths = [new TokenizationOptions().MaxLength, new SftConfig().MaxLength, new LabelingOptions().MaxLength,
            new LabelRequest { TeacherDir = "", UnlabelledDataPath = "" }.MaxLength];
        Assert.All(prompts, p => Assert.Equal(TokenizationOptions.DefaultMaxPromptLength, p));
        Assert.All(lengths, l => Assert.Equal(TokenizationOptions.DefaultMaxLength, l));
    }

    [Fact]
    public void TheGoldRewardModelSeesPromptsAndResponsesAsTrainingFormatsThem()
    {
        const string transcript = "\n\nHuman: How are you?\n\nAssistant: Fine.\n\nHuman: And now?\n\nAssistant:";
        var formatted = GoldScorers.Format(PromptTemplate.Hh, [(transcript, "Still fine."), ("What is 2+2?", " Four.")]);
        Assert.Equal(transcript, formatted[0].Prompt);            // not wrapped in a second Human/Assistant turn
        Assert.Equal(" Still fine.", formatted[0].Response);      // spaced after "Assistant:" as training data is
        Assert.Equal("\n\nHuman: What is 2+2?\n\nAssistant:", formatted[1].Prompt);
        Assert.Equal(" Four.", formatted[1].Response);
        var paper = GoldScorers.Format(PromptTemplate.Paper, [("What is 2+2?", " Four.")]);
        Assert.Equal(("Question: What is 2+2?\n\nAnswer: ", "Four."), paper[0]);
        // the same text a training pair of that prompt gets
        var trained = PromptTemplate.Hh.Apply(new PreferenceExample("What is 2+2?", " Four.", "Five."));
        Assert.Equal((trained.Prompt, trained.Chosen), formatted[1]);
    }

    /// <summary>GPT-2 and OPT ship without a pad token; the usual fix sets pad = eos.</summary>
    private sealed class PadIsEosTokenizer : ITokenizer
    {
        public int VocabSize => 64;
        public int? BosTokenId => 2;
        public int EosTokenId => 2;
        public int PadTokenId => 2;
        public bool AddsBos => false;
        public IReadOnlyList<int> Encode(string text) => Tok.Encode(text);
        public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) => Tok.Decode(ids, skipSpecialTokens);
    }

    [Fact]
    public void Gpt2RewardIsReadAtTheLastTokenBeforeThePadLikeTransformers()
    {
        var config = new ModelConfig
        {
            Family = ModelFamily.Gpt2, ModelType = "gpt2", VocabSize = 64, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2,
            MaxPositionEmbeddings = 64, BosTokenId = 2, EosTokenIds = [2], PadTokenId = 2, HiddenAct = "gelu_new",
            AttentionDropout = 0, ResidDropout = 0, EmbeddingDropout = 0, TieWordEmbeddings = true,
        };
        using var backbone = CausalLMFactory.Create(config, seed: 5);
        using var model = new RewardModel(backbone, seed: 6);
        model.eval();
        // right-padded: "abc" + EOS, then two pads (pad == eos)
        long[] ids = [.. Tok.Encode("abc").Select(i => (long)i), 2, 2, 2];
        var input = tensor(ids).unsqueeze(0);
        var mask = tensor(new long[] { 1, 1, 1, 1, 0, 0 }).unsqueeze(0);
        using (no_grad())
        {
            float reward = model.forward(input, mask)[0].item<float>();
            var hidden = backbone.ForwardHidden(input, mask)[0];
            var perPosition = hidden.matmul(model.ScoreWeight[0]);
            float atLastText = perPosition[2].item<float>();
            float atEos = perPosition[3].item<float>();
            Assert.True(Math.Abs(atLastText - reward) < 1e-5, $"reward {reward}, per position [{string.Join(", ", perPosition.data<float>().ToArray())}]");
            Assert.Equal(atLastText, reward, 5);
            Assert.NotEqual(atEos, reward);
        }
        // the tokenizer's pad is used when config.json has none, and saved with the model
        using var noPad = CausalLMFactory.Create(config with { PadTokenId = null }, seed: 5);
        using var trained = new RewardModel(noPad, seed: 6);
        using var dir = new TempDir();
        new RewardTrainer(trained, new PadIsEosTokenizer(), new RewardConfig { BatchSize = 2, MaxSteps = 1 })
            .Train(TrainingTestKit.XPreferences(2, 1), dir.Path, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(2, trained.PadTokenId);
        using var saved = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.Path, PretrainedModel.ConfigFile)));
        Assert.Equal(2, saved.RootElement.GetProperty("pad_token_id").GetInt32());
    }

    [Fact]
    public void TeacherVsHumanMeansAllPairsAndKeptAgreementHasItsOwnName()
    {
        var pairs = Enumerable.Range(0, 4).Select(i => new UnlabelledPair(null, "p", "a", "b", i) { HumanLabel = 0 }).ToList();
        var labels = new[] { 0, 1, 0, 1 }.Select(l => new PairLabel(l, 0, 0, 0, 0.5)).ToList();
        var result = new LabellingResult(pairs, labels, [true, false, true, false], 0.1);
        Assert.Equal(0.5, result.HumanAgreement);       // over every pair, as the report's label table
        Assert.Equal(1.0, result.KeptHumanAgreement);   // over the kept pairs
    }
}
