using System.Text.Json;
using WeakTeacher.Engine.Pipeline;

namespace WeakTeacher.Engine.Experiments;

/// <summary>The paper's studies, by the names a config and `wt experiments --study` use.</summary>
public static class Studies
{
    public const string WeakVsHuman = "weak_vs_human", LabelQuality = "label_quality", Subsets = "subsets",
        LabelledFraction = "labelled_fraction", Beta = "beta", NoSft = "no_sft", TeacherSize = "teacher_size",
        AcrossFamilies = "across_families", Iterated = "iterated";

    /// <summary>In the issue's order (1-9).</summary>
    public static readonly IReadOnlyList<string> All =
        [WeakVsHuman, LabelQuality, Subsets, LabelledFraction, Beta, NoSft, TeacherSize, AcrossFamilies, Iterated];

    /// <summary>"beta" or "5" -> "beta"; an unknown name is an error naming the known ones.</summary>
    public static string Resolve(string nameOrNumber)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(nameOrNumber);
        if (int.TryParse(nameOrNumber, out int n) && n >= 1 && n <= All.Count) return All[n - 1];
        string name = nameOrNumber.Trim().ToLowerInvariant().Replace('-', '_');
        return All.Contains(name) ? name
            : throw new ArgumentException($"unknown study '{nameOrNumber}'; the studies are {string.Join(", ", All.Select((s, i) => $"{i + 1} {s}"))}");
    }
}

/// <summary>
/// One file describing a set of studies (snake_case JSON, paths relative to the file): the pipeline config they vary
/// (the same file `wt run --config` takes), the seeds, and each study's settings.
/// </summary>
public sealed record ExperimentConfig
{
    public string OutputDir { get; init; } = "runs/experiments";
    /// <summary>Path of the pipeline config (teacher, student, data, evaluation) every study starts from.</summary>
    public required string Pipeline { get; init; }
    /// <summary>Every number is measured once per seed; at least 2 for an interval (the default set uses 3).</summary>
    public IReadOnlyList<long> Seeds { get; init; } = [1, 2, 3];
    /// <summary>Studies to run (names or 1-9); empty = all.</summary>
    public IReadOnlyList<string> Studies { get; init; } = [];
    /// <summary>Use the first N pairs of the unlabelled set (0 = all).</summary>
    public int UnlabelledPairs { get; init; }
    /// <summary>Study 4: the fraction of the pairs labelled by people (the rest by the teacher).</summary>
    public IReadOnlyList<double> HumanFractions { get; init; } = [1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0 / 2];
    /// <summary>Study 5: beta of the students' DPO.</summary>
    public IReadOnlyList<double> Betas { get; init; } = [0.05, 0.1, 0.2, 0.3, 0.5];
    /// <summary>Study 7: teachers of other sizes (the pipeline's teacher is always one of the rows).</summary>
    public IReadOnlyList<TeacherVariant> Teachers { get; init; } = [];
    /// <summary>Study 7: a student trained on the gold preference (the ceiling a teacher can reach).</summary>
    public bool GoldLabelTeacher { get; init; } = true;
    /// <summary>Study 7: the pipeline's teacher base trained as a Bradley-Terry reward model (paper, Appendix C).</summary>
    public bool RewardModelTeacher { get; init; } = true;
    /// <summary>Study 8: a teacher of another architecture and tokenizer than the student.</summary>
    public TeacherVariant? CrossFamilyTeacher { get; init; }
    public IteratedSection Iterated { get; init; } = new();

    public sealed record TeacherVariant
    {
        public required string Name { get; init; }
        public required string BaseModel { get; init; }
        /// <summary>Free text for the report (size, family, tokenizer).</summary>
        public string Description { get; init; } = "";
    }

    /// <summary>Study 9: on-policy rounds.</summary>
    public sealed record IteratedSection
    {
        public int Rounds { get; init; } = 2;
        public int PromptsPerRound { get; init; } = 256;
        /// <summary>Fresh prompts (JSONL with "prompt"), at least Rounds x PromptsPerRound, none from the evaluation set.</summary>
        public string Prompts { get; init; } = "";
    }

    public IReadOnlyList<string> SelectedStudies => Studies.Count == 0 ? Experiments.Studies.All
        : Studies.Select(Experiments.Studies.Resolve).Distinct().OrderBy(s => Experiments.Studies.All.ToList().IndexOf(s)).ToList();

    public static ExperimentConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Experiment config '{path}' does not exist.", path);
        ExperimentConfig? config;
        try
        {
            config = JsonSerializer.Deserialize<ExperimentConfig>(File.ReadAllText(path), PipelineConfig.JsonOptions);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Experiment config '{path}': {e.Message}", e);
        }
        if (config is null) throw new InvalidDataException($"Experiment config '{path}' is empty.");
        string root = Path.GetDirectoryName(Path.GetFullPath(path))!;
        string Resolve(string p) => p.Length == 0 || Path.IsPathRooted(p) ? p : Path.GetFullPath(Path.Combine(root, p));
        config = config with
        {
            OutputDir = Resolve(config.OutputDir),
            Pipeline = Resolve(config.Pipeline),
            Teachers = config.Teachers.Select(t => t with { BaseModel = Resolve(t.BaseModel) }).ToList(),
            CrossFamilyTeacher = config.CrossFamilyTeacher is { } c ? c with { BaseModel = Resolve(c.BaseModel) } : null,
            Iterated = config.Iterated with { Prompts = Resolve(config.Iterated.Prompts) },
        };
        try
        {
            config.Validate();
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"Experiment config '{path}': {e.Message}", e);
        }
        return config;
    }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first bad setting.</summary>
    public void Validate()
    {
        if (Seeds.Count == 0) throw new ArgumentException("seeds: give at least one seed (two or more for confidence intervals)");
        if (Seeds.Distinct().Count() != Seeds.Count) throw new ArgumentException("seeds: a seed is listed twice");
        if (UnlabelledPairs < 0) throw new ArgumentException("unlabelled_pairs: must be >= 0 (0 = all)");
        foreach (var f in HumanFractions)
            if (!(f > 0 && f < 1)) throw new ArgumentException($"human_fractions: {f} is not between 0 and 1");
        foreach (var b in Betas)
            if (!(b > 0 && double.IsFinite(b))) throw new ArgumentException($"betas: {b} is not a positive number");
        var names = Teachers.Select(t => t.Name).Append(CrossFamilyTeacher?.Name).OfType<string>().ToList();
        foreach (var n in names)
            if (n.Length == 0 || n.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_')))
                throw new ArgumentException($"teacher name '{n}': use letters, digits, '-' and '_' only");
        if (names.Distinct().Count() != names.Count || names.Contains(ExperimentRunner.PipelineTeacher))
            throw new ArgumentException($"teacher names must be distinct and not '{ExperimentRunner.PipelineTeacher}'");
        var selected = SelectedStudies;
        if (selected.Contains(Experiments.Studies.TeacherSize) && Teachers.Count == 0 && !GoldLabelTeacher && !RewardModelTeacher)
            throw new ArgumentException("teacher_size: no teachers to compare (give teachers, gold_label_teacher or reward_model_teacher)");
        if (selected.Contains(Experiments.Studies.AcrossFamilies) && CrossFamilyTeacher is null)
            throw new ArgumentException("across_families: cross_family_teacher is not set");
        if (selected.Contains(Experiments.Studies.Iterated))
        {
            if (Iterated.Rounds < 1) throw new ArgumentException("iterated.rounds: must be >= 1");
            if (Iterated.PromptsPerRound < 2) throw new ArgumentException("iterated.prompts_per_round: must be >= 2");
            if (Iterated.Prompts.Length == 0) throw new ArgumentException("iterated.prompts: the fresh prompts file is not set");
            if (!File.Exists(Iterated.Prompts)) throw new ArgumentException($"iterated.prompts: '{Iterated.Prompts}' does not exist");
        }
    }

    public string ToJson() => JsonSerializer.Serialize(this, PipelineConfig.JsonOptions);
}
