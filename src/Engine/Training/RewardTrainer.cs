using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Tokenization;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// Bradley-Terry reward modelling as TRL's RewardTrainer: per pair loss = -log sigmoid(r_chosen - r_rejected - margin)
/// (margin from the optional per-pair margins when <see cref="RewardConfig.UseMargin"/>), plus
/// center_rewards_coefficient * mean((r_chosen + r_rejected)^2). Metrics: loss, accuracy, margin, rewards/chosen,
/// rewards/rejected, grad_norm, learning_rate, tokens_per_second, epoch, num_tokens.
/// </summary>
public sealed class RewardTrainer
{
    public const string Stage = "reward";

    private readonly ITokenizer _tokenizer;

    public RewardTrainer(RewardModel model, ITokenizer tokenizer, RewardConfig config)
    {
        Model = model ?? throw new ArgumentNullException(nameof(model));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Config = config ?? throw new ArgumentNullException(nameof(config));
    }

    public RewardModel Model { get; }
    public RewardConfig Config { get; }

    /// <summary>
    /// Trains on <paramref name="examples"/> (resuming from the latest checkpoint in <paramref name="outputDir"/>); on
    /// completion saves the reward model to <paramref name="outputDir"/> (LoRA adapters merged first).
    /// </summary>
    /// <param name="margins">per-pair margins, used when <see cref="RewardConfig.UseMargin"/>; required then.</param>
    public TrainResult Train(IReadOnlyList<PreferenceExample> examples, string outputDir, IProgress<JobProgress>? progress = null,
        CancellationToken cancellationToken = default, IReadOnlyList<double>? margins = null)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new ArgumentException("no preference pairs to train on", nameof(examples));
        if (Config.UseMargin && (margins is null || margins.Count != examples.Count))
            throw new ArgumentException($"RewardConfig.UseMargin needs one margin per pair ({examples.Count}), got {margins?.Count.ToString() ?? "none"}", nameof(margins));
        TrainingLoop.Validate(Config);
        var pairs = TrainerOutputs.TokenizePairs(_tokenizer, Config, examples, out string dataHash);
        if (Config.Lora is { } lora && !LoraAdapters.HasAdapters(Model.Backbone))
        {
            LoraAdapters.Attach(Model.Backbone, lora, Config.Seed);
            Model.ScoreWeight.requires_grad = true; // PEFT's modules_to_save = ["score"] for sequence classification
        }
        if (Config.DisableDropout) Dropouts.Disable(Model);
        Model.PadTokenId ??= _tokenizer.PadTokenId;
        var task = new Task(this, pairs, Config.UseMargin ? margins : null);
        var result = TrainingLoop.Run(task, Model, Config, outputDir, dataHash, progress, cancellationToken);
        if (!result.Completed) return result;
        if (LoraAdapters.HasAdapters(Model.Backbone)) LoraAdapters.Merge(Model.Backbone);
        Model.Save(outputDir, _tokenizer);
        return result with { ModelDir = outputDir };
    }

    /// <summary>The loss of <paramref name="examples"/> as one batch (no training), with the trainer's formula.</summary>
    public double ComputeLoss(IReadOnlyList<PreferenceExample> examples, IReadOnlyList<double>? margins = null)
    {
        var pairs = TrainerOutputs.TokenizePairs(_tokenizer, Config, examples, out _);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        using var batch = Collator.CollatePreferences(pairs, _tokenizer.PadTokenId, Model.Device, Config.PaddingFree, Model.Config.HiddenSize);
        var sums = new MetricSums();
        var lossSum = PairLosses(Model, batch, Config.UseMargin ? margins?.ToArray() : null, Config.CenterRewardsCoefficient, sums);
        return lossSum.item<float>() / pairs.Length;
    }

    /// <summary>Sum over the batch's pairs of the per-pair loss; adds the metrics.</summary>
    private static Tensor PairLosses(RewardModel model, PreferenceBatch batch, double[]? margins, double centerCoefficient, MetricSums sums)
    {
        int b = batch.PairCount;
        var rewards = model.Rewards(batch);
        var chosen = rewards.narrow(0, 0, b);
        var rejected = rewards.narrow(0, b, b);
        var difference = chosen - rejected;
        if (margins is not null) difference = difference - tensor(margins, ScalarType.Float32).to(rewards.device);
        var losses = -nn.functional.logsigmoid(difference);
        if (centerCoefficient != 0) losses = losses.Add(chosen.Add(rejected).Square().Mul(centerCoefficient));
        var lossSum = losses.sum();
        using (no_grad())
        {
            sums.Add("loss", lossSum.item<float>(), b);
            sums.AddItems("accuracy", chosen.gt(rejected).to(ScalarType.Float32));
            sums.AddItems("margin", chosen - rejected);
            sums.AddItems("rewards/chosen", chosen);
            sums.AddItems("rewards/rejected", rejected);
        }
        return lossSum;
    }

    private sealed class Task(RewardTrainer trainer, TokenizedPair[] pairs, IReadOnlyList<double>? margins) : ITrainingTask
    {
        public string Stage => RewardTrainer.Stage;
        public int ExampleCount => pairs.Length;

        public MicroBatch Prepare(IReadOnlyList<int> exampleIndices) =>
            MicroBatch.OfPairs(pairs, exampleIndices, trainer._tokenizer.PadTokenId, trainer.Model.Backbone, trainer.Config.PaddingFree);

        public void ForwardBackward(MicroBatch micro, double lossScale, MetricSums sums)
        {
            using var scope = NewDisposeScope();
            var batchMargins = margins is null ? null : micro.ExampleIndices.Select(i => margins[i]).ToArray();
            var lossSum = PairLosses(trainer.Model, (PreferenceBatch)micro.Payload, batchMargins, trainer.Config.CenterRewardsCoefficient, sums);
            Backpropagation.Run(lossSum.Mul(lossScale));
        }
    }
}
