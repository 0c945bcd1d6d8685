using System.Text.Json;
using System.Text.Json.Serialization;
using WeakTeacher.Engine.Training;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>
/// One file that describes a whole weak-to-strong run on a user's own checkpoints and data
/// (snake_case JSON; see README "Your own models and data"). Paths are relative to the file's folder.
/// </summary>
public sealed record PipelineConfig
{
    public string OutputDir { get; init; } = "runs/pipeline";
    public string Device { get; init; } = "cpu";
    /// <summary>Prompt template: "paper" ("Question: ...\n\nAnswer: "), "hh" or "raw".</summary>
    public string Template { get; init; } = "paper";
    public long Seed { get; init; } = 42;
    public required TeacherSection Teacher { get; init; }
    public required StudentSection Student { get; init; }
    public required DataSection Data { get; init; }
    public LabellingSection Labelling { get; init; } = new();
    public EvaluationSection Evaluation { get; init; } = new();

    public sealed record TeacherSection
    {
        public required string BaseModel { get; init; }
        public TeacherMethod Method { get; init; } = TeacherMethod.Dpo;
        public SftConfig Sft { get; init; } = new();
        public DpoConfig Dpo { get; init; } = new();
        public RewardConfig Reward { get; init; } = new();
    }

    public sealed record StudentSection
    {
        public required string BaseModel { get; init; }
        public SftConfig Sft { get; init; } = new();
        public DpoConfig Dpo { get; init; } = new();
        /// <summary>Also align the student on the human labels of the unlabelled set (the paper's baseline).</summary>
        public bool HumanBaseline { get; init; } = true;
    }

    public sealed record DataSection
    {
        /// <summary>D_l: the small human-labelled preference set the teacher learns from.</summary>
        public required string Labelled { get; init; }
        /// <summary>D_u: pairs to label; a labelled file may serve, its labels then kept aside for agreement.</summary>
        public required string Unlabelled { get; init; }
        /// <summary>Held-out prompts for evaluation (JSONL with a "prompt" field).</summary>
        public required string EvalPrompts { get; init; }
        public bool SkipInvalidRows { get; init; }
    }

    public sealed record LabellingSection
    {
        public int BatchSize { get; init; } = 16;
        public double MarginQuantile { get; init; }
    }

    public sealed record EvaluationSection
    {
        /// <summary>"synthetic" (the embedded task's gold reward) or a reward-model folder.</summary>
        public string GoldScorer { get; init; } = "synthetic";
        public double Temperature { get; init; } = 0.7;
        public double TopP { get; init; } = 1.0;
        /// <summary>transformers' default top_k for sampling (0 = no limit).</summary>
        public int TopK { get; init; } = Generation.GenerationOptions.HfDefaultTopK;
        public int MaxNewTokens { get; init; } = 256;
        public int BatchSize { get; init; } = 16;
        public long Seed { get; init; } = 1234;
    }

    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        WriteIndented = true,
    };

    /// <summary>Reads a config file; relative paths in it are resolved against the file's folder.</summary>
    public static PipelineConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Pipeline config '{path}' does not exist.", path);
        PipelineConfig? config;
        try
        {
            config = JsonSerializer.Deserialize<PipelineConfig>(File.ReadAllText(path), JsonOptions);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Pipeline config '{path}': {e.Message}", e);
        }
        if (config is null) throw new InvalidDataException($"Pipeline config '{path}' is empty.");
        string root = Path.GetDirectoryName(Path.GetFullPath(path))!;
        string Resolve(string p) => Path.IsPathRooted(p) || p == "synthetic" ? p : Path.GetFullPath(Path.Combine(root, p));
        return config with
        {
            OutputDir = Resolve(config.OutputDir),
            Teacher = config.Teacher with { BaseModel = Resolve(config.Teacher.BaseModel) },
            Student = config.Student with { BaseModel = Resolve(config.Student.BaseModel) },
            Data = config.Data with
            {
                Labelled = Resolve(config.Data.Labelled),
                Unlabelled = Resolve(config.Data.Unlabelled),
                EvalPrompts = Resolve(config.Data.EvalPrompts),
            },
            Evaluation = config.Evaluation with { GoldScorer = Resolve(config.Evaluation.GoldScorer) },
        };
    }

    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>The same config with every trainer (teacher and student: SFT, DPO, reward) in <paramref name="precision"/>.</summary>
    public PipelineConfig WithPrecision(TrainingPrecision precision) => this with
    {
        Teacher = Teacher with
        {
            Sft = Teacher.Sft with { Precision = precision },
            Dpo = Teacher.Dpo with { Precision = precision },
            Reward = Teacher.Reward with { Precision = precision },
        },
        Student = Student with { Sft = Student.Sft with { Precision = precision }, Dpo = Student.Dpo with { Precision = precision } },
    };

    /// <summary>The same config with every trainer (teacher and student: SFT, DPO, reward) padding-free (packed) or not.</summary>
    public PipelineConfig WithPaddingFree(bool paddingFree) => this with
    {
        Teacher = Teacher with
        {
            Sft = Teacher.Sft with { PaddingFree = paddingFree },
            Dpo = Teacher.Dpo with { PaddingFree = paddingFree },
            Reward = Teacher.Reward with { PaddingFree = paddingFree },
        },
        Student = Student with { Sft = Student.Sft with { PaddingFree = paddingFree }, Dpo = Student.Dpo with { PaddingFree = paddingFree } },
    };
}
