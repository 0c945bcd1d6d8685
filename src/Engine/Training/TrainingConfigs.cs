using WeakTeacher.CudaKernels;

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
    public int MaxLength { get; init; } = 512;
    public int MaxPromptLength { get; init; } = 256;
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
    /// <summary>Show a progress bar with ETA when stdout is a terminal (plain lines otherwise); false = silent console.</summary>
    public bool ConsoleProgress { get; init; } = true;
    /// <summary>With LoRA: also save the model with the adapter merged into its weights (a plain checkpoint) at the end.</summary>
    public bool SaveMergedModel { get; init; } = true;
    public LoraConfig? Lora { get; init; }
}

/// <summary>Supervised fine-tuning on (prompt, chosen) with the loss on response tokens only.</summary>
public sealed record SftConfig : TrainingConfig;

/// <summary>DPO (TRL's DPOTrainer): loss type, beta, label smoothing; LoRA rank 8 by default as in the paper.</summary>
public sealed record DpoConfig : TrainingConfig
{
    public DpoConfig()
    {
        LearningRate = 5e-5;
        BatchSize = 16;
        Lora = new LoraConfig();
    }

    public double Beta { get; init; } = 0.1;
    public PreferenceLossType LossType { get; init; } = PreferenceLossType.Sigmoid;
    public double LabelSmoothing { get; init; }
    /// <summary>Folder of the reference log-prob cache; null = "reference-logps" beside the output folder's checkpoints.</summary>
    public string? ReferenceCacheDir { get; init; }
}

/// <summary>Bradley-Terry reward model (TRL's RewardTrainer): scalar head at the last real token.</summary>
public sealed record RewardConfig : TrainingConfig
{
    /// <summary>Use the per-pair margin column, if the data has one: loss -log sigmoid(r_c - r_r - margin).</summary>
    public bool UseMargin { get; init; }
    /// <summary>TRL's center_rewards_coefficient: adds coef * mean((r_c + r_r)^2) to push rewards to mean zero.</summary>
    public double CenterRewardsCoefficient { get; init; }
}
