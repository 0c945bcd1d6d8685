using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Tokenization;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// Direct Preference Optimization as TRL's DPOTrainer with precompute_ref_log_probs: the reference log-probs of the
/// whole dataset are computed once (reference model loaded, used, disposed) and cached on disk; each step runs one
/// policy forward over [chosen; rejected] and the loss of <see cref="PreferenceScoring.Loss"/> (every TRL loss_type,
/// several with loss_weights, the f-divergences, WPO weighting and LD-DPO's ld_alpha). With disable_dropout (the
/// default, as TRL) the policy trains without dropout, so at step 0 it scores exactly as the eval-mode reference.
/// Metrics: loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected,
/// logits/chosen, logits/rejected, grad_norm, learning_rate, tokens_per_second, epoch, num_tokens.
/// </summary>
public sealed class DpoTrainer
{
    public const string Stage = "dpo";
    public const string DefaultCacheFolder = "reference-logps";

    private readonly CausalLM _policy;
    private readonly ITokenizer _tokenizer;

    public DpoTrainer(CausalLM policy, ITokenizer tokenizer, DpoConfig config, ReferenceModel reference, string? baseModelNameOrPath = null)
    {
        _policy = policy ?? throw new ArgumentNullException(nameof(policy));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Config = config ?? throw new ArgumentNullException(nameof(config));
        Reference = reference ?? throw new ArgumentNullException(nameof(reference));
        BaseModelNameOrPath = baseModelNameOrPath;
    }

    public DpoConfig Config { get; }
    public CausalLM Policy => _policy;
    public ReferenceModel Reference { get; }
    public string? BaseModelNameOrPath { get; }

    /// <summary>
    /// Trains the policy on <paramref name="examples"/>, resuming from the latest checkpoint in <paramref name="outputDir"/>.
    /// On completion: with LoRA the adapter goes to outputDir/adapter (PEFT layout) and the merged model to outputDir
    /// (the in-memory policy is then merged); without LoRA the model goes to outputDir.
    /// </summary>
    public TrainResult Train(IReadOnlyList<PreferenceExample> examples, string outputDir, IProgress<JobProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new ArgumentException("no preference pairs to train on", nameof(examples));
        Validate(Config);
        var pairs = TrainerOutputs.TokenizePairs(_tokenizer, Config, examples, out string dataHash);
        var cacheDir = Config.ReferenceCacheDir ?? Path.Combine(outputDir, DefaultCacheFolder);
        using var referenceLogps = ReferenceLogProbs(pairs, dataHash, cacheDir, out bool fromCache);

        TrainerOutputs.PrepareLora(_policy, Config);
        if (Config.DisableDropout) Dropouts.Disable(_policy);
        var task = new Task(this, pairs, referenceLogps);
        var result = TrainingLoop.Run(task, _policy, Config, outputDir, dataHash + ":" + Reference.Identity, progress, cancellationToken)
            with { ReferenceLogProbsFromCache = fromCache };
        if (!result.Completed) return result;
        var (modelDir, adapterDir) = TrainerOutputs.SaveFinal(_policy, _tokenizer, Config, outputDir, BaseModelNameOrPath);
        return result with { ModelDir = modelDir, AdapterDir = adapterDir };
    }

    /// <summary>The shared checks plus the loss settings, naming the first bad one.</summary>
    internal static void Validate(DpoConfig config)
    {
        TrainingLoop.Validate(config);
        config.LossSettings.Validate(nameof(DpoConfig));
        if (config.LdAlpha is double a && !(a >= 0 && a <= 1))
            throw new ArgumentException($"DpoConfig.LdAlpha = {a}: must lie in [0, 1]");
        if (config.UseWeighting && config.LossTypes.Any(t => t is PreferenceLossType.Aot or PreferenceLossType.AotUnpaired))
            throw new ArgumentException("DpoConfig.UseWeighting: WPO weighting cannot be combined with aot / aot_unpaired (they sort the pairs)");
    }

    /// <summary>
    /// The reference values of the dataset (<see cref="ReferenceLogps"/>), from the cache or computed now (reference
    /// model loaded, run in eval mode without gradients, and disposed). The pairs go through in batches of similar length
    /// (<see cref="LengthBatches"/>), packed when <see cref="TrainingConfig.PaddingFree"/>; each value is stored at its
    /// pair's index, so the result is in dataset order.
    /// </summary>
    public ReferenceLogps ReferenceLogProbs(IReadOnlyList<PreferenceExample> examples, string cacheDir, out bool fromCache)
    {
        var pairs = TrainerOutputs.TokenizePairs(_tokenizer, Config, examples, out string dataHash);
        return ReferenceLogProbs(pairs, dataHash, cacheDir, out fromCache);
    }

    private ReferenceLogps ReferenceLogProbs(TokenizedPair[] pairs, string dataHash, string cacheDir, out bool fromCache)
    {
        // the reference runs in the training precision; a float32 key is what it was before the setting existed
        // the batching is in the key: batches of other composition give other float rounding (packed: the rows of
        // least work, Collator.Layout; values packed into rows of the longest's width are not reused)
        string settingsText = TrainerOutputs.SettingsText(Config)
            + (Config.Precision == TrainingPrecision.Fp32 ? "" : ";precision=" + Config.Precision.Name())
            + ";batches=by_length" + (Config.PaddingFree ? ";padding_free=least_work" : "");
        var key = ReferenceLogProbCache.Key(Reference.Identity, dataHash, settingsText);
        int batchSize = Config.EvalBatchSize > 0 ? Config.EvalBatchSize : Config.BatchSize;
        return ReferenceLogProbCache.GetOrCompute(cacheDir, key, pairs.Length, () =>
        {
            using var reference = Reference.Load();
            CausalLMFactory.MoveTo(reference, _policy.Device, Config.Precision == TrainingPrecision.Fp32 ? null : Config.Precision.ComputeType());
            reference.eval();
            Tensor Zeros() => zeros(pairs.Length, 2, dtype: ScalarType.Float32);
            var values = new ReferenceLogps(Zeros(), Zeros(), Zeros());
            using var noGrad = no_grad();
            foreach (var members in LengthBatches.Plan(pairs.Select(p => p.LongerLength).ToArray(), batchSize))
            {
                int count = members.Length;
                using var scope = NewDisposeScope();
                using var batch = Collator.CollatePreferences(members.Select(i => pairs[i]).ToArray(), _tokenizer.PadTokenId, reference.Device,
                    Config.PaddingFree, reference.Config.HiddenSize);
                using var detail = ResponseLogProbs.ComputeDetailed(reference, batch);
                var at = tensor(members.Select(i => (long)i).ToArray());
                foreach (var (target, source) in new[] { (values.Logps, detail.SequenceLogps), (values.TokenCounts, detail.TokenCounts.to(ScalarType.Float32)),
                             (values.TailLogps, detail.PairTailLogps(count)) })
                {
                    var cpu = source.cpu();
                    target.index_copy_(0, at, stack([cpu.narrow(0, 0, count), cpu.narrow(0, count, count)], 1));
                }
                Runtime.Failpoints.Hit(Runtime.Failpoints.ReferenceBatchDone);
            }
            return values;
        }, out fromCache);
    }

    private sealed class Task(DpoTrainer trainer, TokenizedPair[] pairs, ReferenceLogps referenceLogps) : ITrainingTask
    {
        private readonly Tensor _reference = referenceLogps.Weighted(trainer.Config.LdAlpha);

        public string Stage => DpoTrainer.Stage;
        public int ExampleCount => pairs.Length;

        public MicroBatch Prepare(IReadOnlyList<int> exampleIndices) =>
            MicroBatch.OfPairs(pairs, exampleIndices, trainer._tokenizer.PadTokenId, trainer._policy, trainer.Config.PaddingFree);

        public void ForwardBackward(MicroBatch micro, double lossScale, MetricSums sums)
        {
            var config = trainer.Config;
            var settings = config.LossSettings;
            var batch = (PreferenceBatch)micro.Payload;
            int b = batch.PairCount;
            using var scope = NewDisposeScope();
            using var policy = ResponseLogProbs.ComputeDetailed(trainer._policy, batch, wpo: config.UseWeighting);
            // LD-DPO (TRL v1.9.0 L1349-1361): shared + ld_alpha * tail
            var logps = config.LdAlpha is double a ? policy.SequenceLogps - policy.PairTailLogps(b).Mul(1 - a) : policy.SequenceLogps;
            var policyChosen = logps.narrow(0, 0, b);
            var policyRejected = logps.narrow(0, b, b);
            var counts = policy.TokenCounts.to(ScalarType.Float32);
            var reference = _reference.index_select(0, tensor(micro.ExampleIndices.Select(i => (long)i).ToArray())).to(logps.device);
            var inputs = new PreferenceLossInputs(policyChosen, policyRejected, reference.select(1, 0), reference.select(1, 1))
            {
                ChosenTokens = counts.narrow(0, 0, b),
                RejectedTokens = counts.narrow(0, b, b),
                // TRL's sft term: cross-entropy over every chosen response token of the batch (L1542-1549)
                ChosenNll = settings.LossTypes.Contains(PreferenceLossType.Sft)
                    ? -policy.SequenceLogps.narrow(0, 0, b).sum() / counts.narrow(0, 0, b).sum().ClampMin(1.0)
                    : null,
                PairWeights = policy.WpoLogWeights is { } w ? w.exp().narrow(0, 0, b) * w.exp().narrow(0, b, b) : null,
            };
            var output = PreferenceScoring.Loss(inputs, settings);
            // the loss is the batch mean: times B gives the batch sum, normalised over the whole step by lossScale
            Backpropagation.Run(output.Loss.Mul(b * lossScale));
            sums.Add("loss", output.Loss.item<float>() * b, b);
            sums.AddItems("rewards/chosen", output.ChosenRewards);
            sums.AddItems("rewards/rejected", output.RejectedRewards);
            sums.AddItems("rewards/accuracies", output.Accuracies);
            sums.AddItems("rewards/margins", output.Margins);
            sums.AddItems("logps/chosen", policyChosen);
            sums.AddItems("logps/rejected", policyRejected);
            // TRL (L1602-1618): the vocabulary-mean logit averaged over the chosen / rejected response tokens
            sums.Add("logits/chosen", policy.LogitSums.narrow(0, 0, b).sum().item<float>(), counts.narrow(0, 0, b).sum().item<float>());
            sums.Add("logits/rejected", policy.LogitSums.narrow(0, b, b).sum().item<float>(), counts.narrow(0, b, b).sum().item<float>());
        }
    }
}
