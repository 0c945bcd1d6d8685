using System.Text.Json;
using System.Text.Json.Serialization;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Data;

namespace WeakTeacher.Engine.Training;

/// <summary>LoRA adapter settings (PEFT's names). The paper's DPO uses rank 8.</summary>
public sealed record LoraConfig
{
    public int Rank { get; init; } = 8;
    public double Alpha { get; init; } = 16;
    public double Dropout { get; init; } = 0.05;
    /// <summary>Projection names the adapter attaches to (e.g. q_proj, v_proj; GPT-2: c_attn).</summary>
    public IReadOnlyList<string> TargetModules { get; init; } = new[] { "q_proj", "v_proj" };
}

/// <summary>Options every trainer shares (TRL's TrainingArguments subset that matters here).</summary>
public abstract record TrainingConfig
{
    public double LearningRate { get; init; } = 1e-5;
    public int Epochs { get; init; } = 1;
    /// <summary>Stop after this many optimizer steps (0 = the epochs decide).</summary>
    public int MaxSteps { get; init; }
    public int BatchSize { get; init; } = 32;
    public int GradientAccumulationSteps { get; init; } = 1;
    public int MaxLength { get; init; } = TokenizationOptions.DefaultMaxLength;
    public int MaxPromptLength { get; init; } = TokenizationOptions.DefaultMaxPromptLength;
    public double WarmupRatio { get; init; } = 0.1;
    /// <summary>Warm-up steps; when > 0 it overrides <see cref="WarmupRatio"/>.</summary>
    public int WarmupSteps { get; init; }
    /// <summary>"linear", "cosine" or "constant" decay after warm-up.</summary>
    public string LrScheduler { get; init; } = "linear";
    public double WeightDecay { get; init; }
    public double AdamBeta1 { get; init; } = 0.9;
    public double AdamBeta2 { get; init; } = 0.999;
    public double AdamEpsilon { get; init; } = 1e-8;
    public double MaxGradNorm { get; init; } = 1.0;
    public long Seed { get; init; } = 42;
    /// <summary>Write a resumable checkpoint every N optimizer steps (0 = only at the end).</summary>
    public int SaveSteps { get; init; }
    /// <summary>Keep at most this many checkpoint-N folders (oldest removed first; 0 = keep all).</summary>
    public int SaveTotalLimit { get; init; }
    public int LoggingSteps { get; init; } = 1;
    /// <summary>Batch size of forward-only passes (reference log-probs, scoring); 0 = <see cref="BatchSize"/>.</summary>
    public int EvalBatchSize { get; init; }
    /// <summary>With LoRA: also save the model with the adapter merged into its weights (a plain checkpoint) at the end.</summary>
    public bool SaveMergedModel { get; init; } = true;
    public LoraConfig? Lora { get; init; }
    /// <summary>"fp32" (default) or "bf16": bfloat16 forward/backward with float32 master weights, gradients, optimizer
    /// state and loss (<see cref="MixedPrecision"/>); DPO's reference then runs in bfloat16 too.</summary>
    public TrainingPrecision Precision { get; init; }
    /// <summary>TRL's padding_free: each micro-batch's sequences are packed first-fit-decreasing into the rows of least
    /// work for the model's width (<see cref="Data.Collator.Layout"/>), attention confined to each sequence and positions restarting per sequence, so (almost) no
    /// compute goes to padding; the results equal the padded path's within float rounding. The DPO reference pass then
    /// packs too.</summary>
    public bool PaddingFree { get; init; }

    /// <summary>Settings that did not exist before, at their old behaviour, are left out of run and stage fingerprints,
    /// so runs and stages finished before them still resume and are reused.</summary>
    internal static bool IsOmittedDefault(string name, string value) => name == "padding_free" && value == "false";

    /// <summary>The tokenisation limits of this config (truncation keeps the prompt's end, TRL's default).</summary>
    [JsonIgnore]
    public TokenizationOptions Tokenization => new() { MaxLength = MaxLength, MaxPromptLength = MaxPromptLength };
}

/// <summary>Supervised fine-tuning on (prompt, chosen) with the loss on response tokens only.</summary>
public sealed record SftConfig : TrainingConfig;

/// <summary>DPO (TRL's DPOConfig): loss types and weights, beta, label smoothing, f-divergence, WPO, LD-DPO; LoRA rank 8 by
/// default as in the paper.</summary>
public sealed record DpoConfig : TrainingConfig
{
    public DpoConfig()
    {
        LearningRate = 5e-5;
        BatchSize = 16;
        Lora = new LoraConfig();
    }

    public double Beta { get; init; } = 0.1;
    /// <summary>TRL's loss_type: one loss or several (combined with <see cref="LossWeights"/>); in a config file a name or a list.</summary>
    [JsonPropertyName("loss_type"), JsonConverter(typeof(OneOrManyLossTypes))]
    public IReadOnlyList<PreferenceLossType> LossTypes { get; init; } = [PreferenceLossType.Sigmoid];
    /// <summary>One weight per loss type (e.g. [0.8, 0.2, 1.0] for MPO); null = 1 each.</summary>
    public IReadOnlyList<double>? LossWeights { get; init; }
    public double LabelSmoothing { get; init; }
    public FDivergenceType FDivergenceType { get; init; } = FDivergenceType.ReverseKl;
    public double FAlphaDivergenceCoef { get; init; } = 0.5;
    /// <summary>WPO weighting of each pair by the policy's length-normalised sequence probabilities.</summary>
    public bool UseWeighting { get; init; }
    /// <summary>LD-DPO's alpha in [0, 1]: log-probs of tokens past the pair's shared length are scaled by it; null = off.</summary>
    public double? LdAlpha { get; init; }
    public double DiscopopTau { get; init; } = 0.05;
    /// <summary>TRL's disable_dropout: every dropout of the policy (LoRA's included) set to 0 for training.</summary>
    public bool DisableDropout { get; init; } = true;
    /// <summary>Folder of the reference log-prob cache; null = "reference-logps" beside the output folder's checkpoints.</summary>
    public string? ReferenceCacheDir { get; init; }

    /// <summary>The loss settings handed to <see cref="PreferenceScoring.Loss"/>.</summary>
    [JsonIgnore]
    public PreferenceLossSettings LossSettings => new()
    {
        LossTypes = LossTypes,
        LossWeights = LossWeights,
        Beta = Beta,
        LabelSmoothing = LabelSmoothing,
        FDivergence = FDivergenceType,
        AlphaDivergenceCoef = FAlphaDivergenceCoef,
        DiscopopTau = DiscopopTau,
    };
}

/// <summary>Reads TRL's loss_type as a single name or a list of names; writes a list.</summary>
public sealed class OneOrManyLossTypes : JsonConverter<IReadOnlyList<PreferenceLossType>>
{
    public override IReadOnlyList<PreferenceLossType> Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.StartArray)
            return JsonSerializer.Deserialize<List<PreferenceLossType>>(ref reader, options) ?? throw new JsonException("loss_type: null list");
        return [JsonSerializer.Deserialize<PreferenceLossType>(ref reader, options)];
    }

    public override void Write(Utf8JsonWriter writer, IReadOnlyList<PreferenceLossType> value, JsonSerializerOptions options) =>
        JsonSerializer.Serialize(writer, value.ToList(), options);
}

/// <summary>Bradley-Terry reward model (TRL's RewardTrainer): scalar head at the last real token.</summary>
public sealed record RewardConfig : TrainingConfig
{
    /// <summary>Use the per-pair margin column, if the data has one: loss -log sigmoid(r_c - r_r - margin).</summary>
    public bool UseMargin { get; init; }
    /// <summary>TRL's center_rewards_coefficient: adds coef * mean((r_c + r_r)^2) to push rewards to mean zero.</summary>
    public double CenterRewardsCoefficient { get; init; }
    /// <summary>TRL's RewardConfig.disable_dropout: every dropout of the model (LoRA's included) set to 0 for training.</summary>
    public bool DisableDropout { get; init; } = true;
}
