using System.Diagnostics;
using System.Text.Json;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Evaluation;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Engine.Training;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>
/// The whole method of the paper on one config: weak teacher on D_l, labels for D_u, the student aligned on the weak
/// labels and (baseline) on the human labels, evaluation with a gold scorer, and the report (label agreement, Table 2,
/// students' gold reward, win rate). Every stage works in its own folder under OutputDir and resumes when run again.
/// </summary>
public static class WeakToStrongPipeline
{
    /// <param name="earlierStages">stages the caller ran before (the demo's task preparation): listed first in the
    /// report's timings and counted in its total, so the report is written once, complete.</param>
    public static EvaluationReport Run(PipelineConfig config, IProgress<JobProgress>? progress = null, CancellationToken ct = default,
        IReadOnlyList<StageTiming>? earlierStages = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        var clock = Stopwatch.StartNew();
        var report = new EvaluationReport { Title = "Weak teacher -> strong student: alignment report" };
        report.Stages.AddRange(earlierStages ?? []);
        string Dir(string name) => Path.Combine(config.OutputDir, name);
        Directory.CreateDirectory(config.OutputDir);
        AtomicFile.WriteAllText(Dir("config.json"), config.ToJson());
        var device = TorchDevice.Initialize(config.Device);
        Seeds.Set(config.Seed);

        T Timed<T>(string stage, Func<T> run)
        {
            var stageClock = Stopwatch.StartNew();
            var result = run();
            report.Stages.Add(new StageTiming(stage, stageClock.Elapsed.TotalSeconds));
            return result;
        }

        // 1. weak teacher on the human-labelled set
        var teacher = Timed("teacher", () => PipelineStages.TrainTeacher(new TrainTeacherRequest
        {
            BaseModelDir = config.Teacher.BaseModel,
            LabelledDataPath = config.Data.Labelled,
            Method = config.Teacher.Method,
            Sft = config.Teacher.Sft,
            Dpo = config.Teacher.Dpo,
            Reward = config.Teacher.Reward,
            Template = config.Template,
            Device = config.Device,
            SkipInvalidRows = config.Data.SkipInvalidRows,
        }, Dir("teacher"), progress, ct));

        // 2. weak labels for the unlabelled set
        var labels = Timed("label", () => PipelineStages.Label(new LabelRequest
        {
            TeacherDir = teacher.Artifacts["teacher"],
            UnlabelledDataPath = config.Data.Unlabelled,
            BatchSize = config.Labelling.BatchSize,
            MarginQuantile = config.Labelling.MarginQuantile,
            MaxLength = config.Teacher.Dpo.MaxLength,
            MaxPromptLength = config.Teacher.Dpo.MaxPromptLength,
            Template = config.Template,
            Device = config.Device,
            SkipInvalidRows = config.Data.SkipInvalidRows,
        }, Dir("labels"), progress, ct));

        // 3. students: on the weak labels, and on the human labels of the same pairs (the paper's baseline)
        AlignRequest Align(string data) => new()
        {
            BaseModelDir = config.Student.BaseModel,
            LabelledDataPath = data,
            Sft = config.Student.Sft,
            Dpo = config.Student.Dpo,
            Template = config.Template,
            Device = config.Device,
            SkipInvalidRows = config.Data.SkipInvalidRows,
        };
        var weak = Timed("student_weak", () => PipelineStages.Align(Align(labels.Artifacts["labelled"]), Dir("student-weak"), progress, ct));
        var pairs = PreferenceDataReader.ReadUnlabelled(config.Data.Unlabelled, new DataReadOptions { SkipInvalidRows = config.Data.SkipInvalidRows }).ToList();
        bool haveHuman = pairs.All(p => p.HumanLabel is not null);
        StageResult? human = null;
        if (config.Student.HumanBaseline && haveHuman)
        {
            // the baseline trains on the same pairs as the weak-label student: those the margin filter kept
            var kept = ReadKept(labels.Artifacts["labels"]);
            if (kept.Count != pairs.Count)
                throw new InvalidDataException($"{labels.Artifacts["labels"]}: {kept.Count} labels for {pairs.Count} pairs of {config.Data.Unlabelled}");
            string humanData = Dir("labels/human-labelled.jsonl");
            PreferenceDataWriter.WriteLabelled(humanData, pairs.Where((_, i) => kept[i]).Select(p => new LabelledRow(p, p.HumanLabel!.Value)));
            human = Timed("student_human", () => PipelineStages.Align(Align(humanData), Dir("student-human"), progress, ct));
        }

        // 4. evaluation: generate for held-out prompts, score with the gold scorer
        var models = new Dictionary<string, string>
        {
            [StudentScores.Sft] = (human ?? weak).Artifacts["sft"],
            [StudentScores.WeakDpo] = weak.Artifacts["model"],
        };
        if (human is not null)
        {
            models[StudentScores.HumanDpo] = human.Artifacts["model"];
            models["weak_sft"] = weak.Artifacts["sft"];
        }
        var evaluation = Timed("evaluate", () => PipelineStages.Evaluate(new EvaluateRequest
        {
            Models = models,
            PromptsPath = config.Data.EvalPrompts,
            GoldScorer = config.Evaluation.GoldScorer,
            Temperature = config.Evaluation.Temperature,
            TopP = config.Evaluation.TopP,
            TopK = config.Evaluation.TopK,
            MaxNewTokens = config.Evaluation.MaxNewTokens,
            BatchSize = config.Evaluation.BatchSize,
            Seed = config.Evaluation.Seed,
            Template = config.Template,
            Device = config.Device,
        }, Dir("evaluation"), progress, ct));

        // 5. the report
        report.GoldScorer = config.Evaluation.GoldScorer;
        var goldRewards = models.Keys.ToDictionary(name => name, name => ReadGoldRewards(evaluation.Artifacts[$"generations/{name}"]));
        foreach (var (name, rewards) in goldRewards) report.Students.Add(StudentScores.Compute(name, rewards));
        if (human is not null)
            report.WinRates.Add(new WinRateEntry(StudentScores.WeakDpo, StudentScores.HumanDpo,
                WinRate.Compute(goldRewards[StudentScores.WeakDpo], goldRewards[StudentScores.HumanDpo])));
        if (haveHuman)
        {
            var teacherLabels = ReadTeacherLabels(labels.Artifacts["labels"]);
            using var gold = GoldScorers.Open(config.Evaluation.GoldScorer, device, config.Template);
            // the gold scorer sees raw prompts, as at evaluation
            var goldA = gold.Scorer.ScoreBatch(pairs.Select(p => (p.Prompt, p.ResponseA)).ToList());
            var goldB = gold.Scorer.ScoreBatch(pairs.Select(p => (p.Prompt, p.ResponseB)).ToList());
            var humanLabels = pairs.Select(p => p.HumanLabel!.Value).ToList();
            report.Labels = LabelAgreement.Compute(teacherLabels, humanLabels, LabelAgreement.GoldLabels(goldA, goldB));
            report.GoldGap = GoldGapTable.Compute(goldA, goldB, humanLabels, teacherLabels);
        }
        foreach (var (run, dir) in new[]
        {
            ("teacher_sft", Dir("teacher/sft")), ("teacher_dpo", Dir("teacher/dpo")), ("teacher_reward", Dir("teacher/reward")),
            ("weak_sft", Dir("student-weak/sft")), ("weak_dpo", Dir("student-weak/dpo")),
            ("human_sft", Dir("student-human/sft")), ("human_dpo", Dir("student-human/dpo")),
        })
            AddCurves(report, run, Path.Combine(dir, TrainingLog.MetricsFile));
        report.Info["device"] = config.Device;
        report.Info["teacher_base"] = config.Teacher.BaseModel;
        report.Info["student_base"] = config.Student.BaseModel;
        report.Info["teacher_method"] = config.Teacher.Method.ToString();
        report.Info["unlabelled_pairs"] = pairs.Count.ToString();
        report.TotalSeconds = clock.Elapsed.TotalSeconds + (earlierStages ?? []).Sum(s => s.Seconds);
        report.Save(config.OutputDir); // report.json, report.md and the plots
        return report;
    }

    private static List<double> ReadGoldRewards(string generationsPath) => File.ReadLines(generationsPath).Where(l => l.Length > 0)
        .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("gold_reward").GetDouble()).ToList();

    private static List<bool> ReadKept(string labelsPath) => File.ReadLines(labelsPath).Where(l => l.Length > 0)
        .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("kept").GetBoolean()).ToList();

    private static List<int> ReadTeacherLabels(string labelsPath) => File.ReadLines(labelsPath).Where(l => l.Length > 0)
        .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("label").GetInt32()).ToList();

    private static readonly string[] CurveMetrics = ["loss", "rewards/accuracies", "rewards/margins", "accuracy"];

    private static void AddCurves(EvaluationReport report, string run, string metricsPath)
    {
        if (!File.Exists(metricsPath)) return;
        var rows = File.ReadLines(metricsPath).Where(l => l.Length > 0).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
        foreach (var metric in CurveMetrics)
        {
            var points = rows.Where(r => r.TryGetProperty(metric, out var v) && v.ValueKind == JsonValueKind.Number)
                .Select(r => (r.GetProperty("step").GetInt32(), r.GetProperty(metric).GetDouble())).ToList();
            if (points.Count > 0) report.Curves.Add(new TrainingCurve(run, metric, points));
        }
    }
}
