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
/// policy forward over [chosen; rejected] and the loss of <see cref="PreferenceScoring.DpoLoss"/>.
/// Metrics: loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected,
/// grad_norm, learning_rate, tokens_per_second, epoch, num_tokens.
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
        TrainingLoop.Validate(Config);
        var pairs = Tokenize(examples, out string dataHash);
        var cacheDir = Config.ReferenceCacheDir ?? Path.Combine(outputDir, DefaultCacheFolder);
        using var referenceLogps = ReferenceLogProbs(pairs, dataHash, cacheDir, out bool fromCache);

        TrainerOutputs.PrepareLora(_policy, Config);
        var task = new Task(this, pairs, referenceLogps);
        var result = TrainingLoop.Run(task, _policy, Config, outputDir, dataHash + ":" + Reference.Identity, progress, cancellationToken)
            with { ReferenceLogProbsFromCache = fromCache };
        if (!result.Completed) return result;
        var (modelDir, adapterDir) = TrainerOutputs.SaveFinal(_policy, _tokenizer, Config, outputDir, BaseModelNameOrPath);
        return result with { ModelDir = modelDir, AdapterDir = adapterDir };
    }

    private TokenizedPair[] Tokenize(IReadOnlyList<PreferenceExample> examples, out string dataHash)
    {
        var rules = new PreferenceTokenizer(_tokenizer, TrainerOutputs.Tokenization(Config));
        var pairs = examples.Select(rules.Tokenize).ToArray();
        dataHash = TrainerOutputs.DatasetHash(examples.Select((e, i) => (new[] { e.Prompt, e.Chosen, e.Rejected },
            new[] { pairs[i].PromptIds, pairs[i].ChosenIds, pairs[i].RejectedIds })));
        return pairs;
    }

    /// <summary>
    /// [N, 2] float32 (chosen, rejected) reference log-probs of the dataset, from the cache or computed now (reference
    /// model loaded, run in eval mode without gradients in dataset order, and disposed).
    /// </summary>
    public Tensor ReferenceLogProbs(IReadOnlyList<PreferenceExample> examples, string cacheDir, out bool fromCache)
    {
        var pairs = Tokenize(examples, out string dataHash);
        return ReferenceLogProbs(pairs, dataHash, cacheDir, out fromCache);
    }

    private Tensor ReferenceLogProbs(TokenizedPair[] pairs, string dataHash, string cacheDir, out bool fromCache)
    {
        var key = ReferenceLogProbCache.Key(Reference.Identity, dataHash, TrainerOutputs.SettingsText(Config));
        int batchSize = Config.EvalBatchSize > 0 ? Config.EvalBatchSize : Config.BatchSize;
        return ReferenceLogProbCache.GetOrCompute(cacheDir, key, pairs.Length, () =>
        {
            using var reference = Reference.Load();
            CausalLMFactory.MoveTo(reference, _policy.Device, null);
            reference.eval();
            var result = zeros(pairs.Length, 2, dtype: ScalarType.Float32);
            using var noGrad = no_grad();
            for (int start = 0; start < pairs.Length; start += batchSize)
            {
                int count = Math.Min(batchSize, pairs.Length - start);
                using var scope = NewDisposeScope();
                using var batch = Collator.CollatePreferences(new ArraySegment<TokenizedPair>(pairs, start, count), _tokenizer.PadTokenId, reference.Device);
                var logps = ResponseLogProbs.Compute(reference, batch.InputIds, batch.AttentionMask, batch.ResponseMask).cpu();
                result.narrow(0, start, count).select(1, 0).copy_(logps.narrow(0, 0, count));
                result.narrow(0, start, count).select(1, 1).copy_(logps.narrow(0, count, count));
            }
            return result;
        }, out fromCache);
    }

    private sealed class Task(DpoTrainer trainer, TokenizedPair[] pairs, Tensor referenceLogps) : ITrainingTask
    {
        public string Stage => DpoTrainer.Stage;
        public int ExampleCount => pairs.Length;

        public MicroBatch Prepare(IReadOnlyList<int> exampleIndices) =>
            MicroBatch.OfPairs(pairs, exampleIndices, trainer._tokenizer.PadTokenId, trainer._policy.Device);

        public void ForwardBackward(MicroBatch micro, double lossScale, MetricSums sums)
        {
            var batch = (PreferenceBatch)micro.Payload;
            int b = batch.PairCount;
            using var scope = NewDisposeScope();
            var policy = ResponseLogProbs.Compute(trainer._policy, batch.InputIds, batch.AttentionMask, batch.ResponseMask);
            var policyChosen = policy.narrow(0, 0, b);
            var policyRejected = policy.narrow(0, b, b);
            var reference = referenceLogps.index_select(0, tensor(micro.ExampleIndices.Select(i => (long)i).ToArray())).to(policy.device);
            var output = PreferenceScoring.DpoLoss(policyChosen, policyRejected, reference.select(1, 0), reference.select(1, 1),
                trainer.Config.LossType, trainer.Config.Beta, trainer.Config.LabelSmoothing);
            // DpoLoss is the batch mean: times B gives the batch sum, normalised over the whole step by lossScale
            (output.Loss * (b * lossScale)).backward();
            sums.Add("loss", output.Loss.item<float>() * b, b);
            sums.AddItems("rewards/chosen", output.ChosenRewards);
            sums.AddItems("rewards/rejected", output.RejectedRewards);
            sums.AddItems("rewards/accuracies", output.Accuracies);
            sums.AddItems("rewards/margins", output.Margins);
            sums.AddItems("logps/chosen", policyChosen);
            sums.AddItems("logps/rejected", policyRejected);
        }
    }
}
