using WeakTeacher.Engine.Training;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>How the weak teacher is built (paper Sec. 3.1, or the reward-model alternative of Appendix C).</summary>
public enum TeacherMethod { Dpo, RewardModel }

/// <summary>Train the weak teacher on the human-labelled set D_l.</summary>
public sealed record TrainTeacherRequest
{
    public required string BaseModelDir { get; init; }
    public required string LabelledDataPath { get; init; }
    public TeacherMethod Method { get; init; } = TeacherMethod.Dpo;
    public SftConfig Sft { get; init; } = new();
    public DpoConfig Dpo { get; init; } = new();
    public RewardConfig Reward { get; init; } = new();
    public string Template { get; init; } = "paper";
    /// <summary>Skip rows that do not parse (counted, reported) instead of failing on the first.</summary>
    public bool SkipInvalidRows { get; init; }
    public string Device { get; init; } = "cpu";
}

/// <summary>Label the unlabelled set D_u with a trained teacher (output folder of TrainTeacher).</summary>
public sealed record LabelRequest
{
    public required string TeacherDir { get; init; }
    public required string UnlabelledDataPath { get; init; }
    /// <summary>Keep only pairs whose |margin| is at or above this quantile (0 = keep all, as the paper).</summary>
    public double MarginQuantile { get; init; }
    public int BatchSize { get; init; } = 16;
    public int MaxLength { get; init; } = WeakTeacher.Engine.Data.TokenizationOptions.DefaultMaxLength;
    public int MaxPromptLength { get; init; } = WeakTeacher.Engine.Data.TokenizationOptions.DefaultMaxPromptLength;
    public string Template { get; init; } = "paper";
    /// <summary>Skip rows that do not parse (counted, reported) instead of failing on the first.</summary>
    public bool SkipInvalidRows { get; init; }
    public string Device { get; init; } = "cpu";
}

/// <summary>Align a target (student) model on a labelled set: SFT on chosen, then DPO with the SFT model as reference.</summary>
public sealed record AlignRequest
{
    public required string BaseModelDir { get; init; }
    public required string LabelledDataPath { get; init; }
    public SftConfig Sft { get; init; } = new();
    public DpoConfig Dpo { get; init; } = new();
    public string Template { get; init; } = "paper";
    /// <summary>Skip rows that do not parse (counted, reported) instead of failing on the first.</summary>
    public bool SkipInvalidRows { get; init; }
    public string Device { get; init; } = "cpu";
}

/// <summary>Generate for held-out prompts with each model and score with a gold scorer.</summary>
public sealed record EvaluateRequest
{
    /// <summary>Name -> model folder (Hugging Face layout), e.g. "sft", "human_dpo", "weak_dpo".</summary>
    public required IReadOnlyDictionary<string, string> Models { get; init; }
    public required string PromptsPath { get; init; }
    /// <summary>"synthetic" (the embedded task's gold reward) or a reward-model / sequence-classification folder.</summary>
    public string GoldScorer { get; init; } = "synthetic";
    public double Temperature { get; init; } = 0.7;
    public double TopP { get; init; } = 1.0;
    /// <summary>Sample among the top_k most likely tokens (transformers' default 50; 0 = no limit).</summary>
    public int TopK { get; init; } = Generation.GenerationOptions.HfDefaultTopK;
    public int MaxNewTokens { get; init; } = 256;
    public int BatchSize { get; init; } = 16;
    public long Seed { get; init; } = 1234;
    public string Template { get; init; } = "paper";
    public string Device { get; init; } = "cpu";
}
