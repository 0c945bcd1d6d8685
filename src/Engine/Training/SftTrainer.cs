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
/// Supervised fine-tuning (TRL's SFTTrainer with completion-only loss): loss = mean negative log-likelihood over the
/// response tokens of the batch (prompt and padding excluded; with gradient accumulation the mean runs over every
/// response token of the step). Metrics: loss, grad_norm, learning_rate, tokens_per_second, epoch, num_tokens.
/// </summary>
public sealed class SftTrainer
{
    public const string Stage = "sft";

    private readonly CausalLM _model;
    private readonly ITokenizer _tokenizer;

    public SftTrainer(CausalLM model, ITokenizer tokenizer, SftConfig config, string? baseModelNameOrPath = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Config = config ?? throw new ArgumentNullException(nameof(config));
        BaseModelNameOrPath = baseModelNameOrPath;
    }

    public SftConfig Config { get; }
    public CausalLM Model => _model;
    /// <summary>Written into adapter_config.json as base_model_name_or_path.</summary>
    public string? BaseModelNameOrPath { get; }

    /// <summary>
    /// Trains on <paramref name="examples"/>, resuming from the latest checkpoint in <paramref name="outputDir"/> when
    /// there is one. On completion the model is saved to <paramref name="outputDir"/> (see <see cref="TrainResult"/>);
    /// on cancellation a checkpoint is written and the result has Completed = false.
    /// </summary>
    public TrainResult Train(IReadOnlyList<SftExample> examples, string outputDir, IProgress<JobProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new ArgumentException("no SFT examples to train on", nameof(examples));
        TrainingLoop.Validate(Config);
        var sequences = TrainerOutputs.TokenizeSequences(_tokenizer, Config, examples, out string dataHash);
        TrainerOutputs.PrepareLora(_model, Config);
        var task = new Task(_model, _tokenizer, sequences, Config.PaddingFree);
        var result = TrainingLoop.Run(task, _model, Config, outputDir, dataHash, progress, cancellationToken);
        if (!result.Completed) return result;
        var (modelDir, adapterDir) = TrainerOutputs.SaveFinal(_model, _tokenizer, Config, outputDir, BaseModelNameOrPath);
        return result with { ModelDir = modelDir, AdapterDir = adapterDir };
    }

    /// <summary>The SFT loss (mean response-token NLL) of <paramref name="examples"/> as one batch, without training.</summary>
    public double ComputeLoss(IReadOnlyList<SftExample> examples)
    {
        var sequences = TrainerOutputs.TokenizeSequences(_tokenizer, Config, examples, out _);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        using var batch = Collator.CollateSft(sequences, _tokenizer.PadTokenId, _model.Device, Config.PaddingFree, _model.Config.HiddenSize);
        var logps = ResponseLogProbs.Compute(_model, batch);
        double tokens = sequences.Sum(ScoredTokens);
        return -logps.sum().item<float>() / tokens;
    }

    /// <summary>Response tokens that get a log-prob (a token at position 0 has no context to be predicted from).</summary>
    internal static int ScoredTokens(TokenizedSequence s) => s.PromptIds.Length > 0 ? s.ResponseIds.Length : s.ResponseIds.Length - 1;

    private sealed class Task(CausalLM model, ITokenizer tokenizer, TokenizedSequence[] sequences, bool packed) : ITrainingTask
    {
        public string Stage => SftTrainer.Stage;
        public int ExampleCount => sequences.Length;

        public MicroBatch Prepare(IReadOnlyList<int> exampleIndices)
        {
            var rows = exampleIndices.Select(i => sequences[i]).ToList();
            var batch = Collator.CollateSft(rows, tokenizer.PadTokenId, model.Device, packed, model.Config.HiddenSize);
            return new MicroBatch(batch, exampleIndices.ToArray(), rows.Sum(ScoredTokens), rows.Sum(r => (long)r.Length));
        }

        public void ForwardBackward(MicroBatch micro, double lossScale, MetricSums sums)
        {
            var batch = (SftBatch)micro.Payload;
            using var scope = NewDisposeScope();
            var logps = ResponseLogProbs.Compute(model, batch);
            var nllSum = -logps.sum();
            Backpropagation.Run(nllSum.Mul(lossScale));
            sums.Add("loss", nllSum.item<float>(), micro.Normaliser);
        }
    }
}
