using System.Diagnostics;
using System.Text.Json;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Evaluation;
using WeakTeacher.Engine.Generation;
using WeakTeacher.Engine.Labelling;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Engine.Tokenization;
using WeakTeacher.Engine.Training;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>What a stage produced: named artifact paths under its work folder and its headline metrics.</summary>
public sealed record StageResult(IReadOnlyDictionary<string, string> Artifacts, IReadOnlyDictionary<string, double> Metrics);

/// <summary>
/// The paper's stages (Sec. 3.1) as resumable units of work: each writes into its own work folder, and running it again
/// with the same folder resumes from the last checkpoint there (finished sub-stages are skipped), giving the same result
/// as an uninterrupted run. The command line, the whole-pipeline runner and the gRPC host all call these.
/// </summary>
public static class PipelineStages
{
    public const string ResultFile = "stage-result.json";

    /// <summary>Weak teacher on D_l: SFT on the chosen responses, then DPO with the SFT model as reference (or a reward model).</summary>
    public static Task<StageResult> TrainTeacherAsync(TrainTeacherRequest request, string workDir, IProgress<JobProgress>? progress,
        CancellationToken ct) => Task.Run(() => TrainTeacher(request, workDir, progress, ct), ct);

    public static StageResult TrainTeacher(TrainTeacherRequest request, string workDir, IProgress<JobProgress>? progress, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        var settings = StageFingerprint.Of(request, "base_model_dir", "labelled_data_path");
        if (TryReadResult(workDir, settings, out string? redo) is { } done) return done;
        var device = TorchDevice.Initialize(request.Device);
        var template = PromptTemplate.Get(request.Template);
        var examples = ReadPreferences(request.LabelledDataPath, template, request.SkipInvalidRows);
        var tokenizer = HfTokenizer.Load(request.BaseModelDir);
        var artifacts = new Dictionary<string, string>();
        var metrics = new Dictionary<string, double>();
        if (request.Method == TeacherMethod.RewardModel)
        {
            string rewardDir = Path.Combine(workDir, "reward");
            var result = Reward(request.BaseModelDir, examples, request.Reward, rewardDir, device, tokenizer, Prefix(progress, "teacher/reward"), ct);
            artifacts["reward_model"] = result.ModelDir ?? rewardDir;
            AddFinalMetrics(metrics, "reward", result);
            TeacherManifest.Write(workDir, new TeacherManifest(TeacherMethod.RewardModel, null, null, artifacts["reward_model"], 1.0));
        }
        else
        {
            var (sft, dpo) = SftThenDpo(request.BaseModelDir, examples, request.Sft, request.Dpo, workDir, device, tokenizer, metrics,
                progress, "teacher", ct);
            artifacts["reference"] = sft.ModelDir!;
            artifacts["policy"] = dpo.ModelDir!;
            if (dpo.AdapterDir is not null) artifacts["adapter"] = dpo.AdapterDir;
            TeacherManifest.Write(workDir, new TeacherManifest(TeacherMethod.Dpo, dpo.ModelDir, sft.ModelDir, null, request.Dpo.Beta));
        }
        artifacts["teacher"] = workDir;
        return WriteResult(workDir, new StageResult(artifacts, metrics), settings, redo);
    }

    /// <summary>Labels D_u with a trained teacher; writes the labelled set in the input's own format plus rewards and margins.</summary>
    public static Task<StageResult> LabelAsync(LabelRequest request, string workDir, IProgress<JobProgress>? progress, CancellationToken ct)
        => Task.Run(() => Label(request, workDir, progress, ct), ct);

    public static StageResult Label(LabelRequest request, string workDir, IProgress<JobProgress>? progress, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        var settings = LabelSettings(request);
        if (TryReadResult(workDir, settings, out string? redo) is { } done) return done;
        var device = TorchDevice.Initialize(request.Device);
        var pairs = ReadPairsToLabel(request);
        using var labeler = OpenLabeler(request, device);
        var clock = Stopwatch.StartNew();
        var labels = labeler.LabelAll(pairs, request.BatchSize, 0, Prefix(progress, "label"), ct).Labels;
        return WriteLabelling(request, pairs, labels, workDir, clock.Elapsed.TotalSeconds, settings, redo);
    }

    /// <summary>What a labelling result depends on: every setting, the teacher's and the input's content.</summary>
    internal static SortedDictionary<string, string> LabelSettings(LabelRequest request) =>
        StageFingerprint.Of(request, "teacher_dir", "unlabelled_data_path");

    /// <summary>The pairs of D_u in input order, templated as the teacher saw them in training.</summary>
    internal static List<UnlabelledPair> ReadPairsToLabel(LabelRequest request)
    {
        var template = PromptTemplate.Get(request.Template);
        var pairs = PreferenceDataReader.ReadUnlabelled(request.UnlabelledDataPath, new DataReadOptions { SkipInvalidRows = request.SkipInvalidRows })
            .Select(template.Apply).ToList();
        if (pairs.Count == 0) throw new InvalidDataException($"{request.UnlabelledDataPath}: no pairs to label.");
        return pairs;
    }

    internal static WeakLabeler OpenLabeler(LabelRequest request, Device device) =>
        TeacherManifest.OpenLabeler(request.TeacherDir, device,
            new LabelingOptions { MaxLength = request.MaxLength, MaxPromptLength = request.MaxPromptLength });

    /// <summary>
    /// Applies the margin filter over all labels and writes the labelled set (input's format, kept pairs, input order),
    /// labels.jsonl (every pair) and the stage result. One writer for a single run and for merged shards, so both give
    /// the same bytes.
    /// </summary>
    internal static StageResult WriteLabelling(LabelRequest request, IReadOnlyList<UnlabelledPair> pairs, IReadOnlyList<PairLabel> labels,
        string workDir, double seconds, SortedDictionary<string, string> settings, string? redo)
    {
        var result = WeakLabeler.Filter(pairs, labels, request.MarginQuantile);
        Directory.CreateDirectory(workDir);
        string extension = request.UnlabelledDataPath.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase) ? ".parquet"
            : request.UnlabelledDataPath.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) ? ".jsonl.gz" : ".jsonl";
        string labelledPath = Path.Combine(workDir, "labelled" + extension);
        int written = result.Write(labelledPath);
        string labelsPath = Path.Combine(workDir, "labels.jsonl");
        WriteLabels(labelsPath, result);
        var metrics = new Dictionary<string, double>
        {
            ["pairs"] = pairs.Count,
            ["kept"] = written,
            ["margin_threshold"] = result.MarginThreshold,
            ["pairs_per_second"] = pairs.Count / Math.Max(seconds, 1e-9),
        };
        // one name, one meaning: teacher_vs_human over every pair (as the report's label table), _kept over the kept ones
        if (result.HumanAgreement is { } agreement) metrics["teacher_vs_human"] = agreement;
        if (result.KeptHumanAgreement is { } kept) metrics["teacher_vs_human_kept"] = kept;
        return WriteResult(workDir, new StageResult(new Dictionary<string, string> { ["labelled"] = labelledPath, ["labels"] = labelsPath }, metrics),
            settings, redo);
    }

    /// <summary>Aligns a student on a labelled set: SFT on the chosen responses, then DPO with the SFT model as reference.</summary>
    public static Task<StageResult> AlignAsync(AlignRequest request, string workDir, IProgress<JobProgress>? progress, CancellationToken ct)
        => Task.Run(() => Align(request, workDir, progress, ct), ct);

    public static StageResult Align(AlignRequest request, string workDir, IProgress<JobProgress>? progress, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        var settings = StageFingerprint.Of(request, "base_model_dir", "labelled_data_path");
        if (TryReadResult(workDir, settings, out string? redo) is { } done) return done;
        var device = TorchDevice.Initialize(request.Device);
        var template = PromptTemplate.Get(request.Template);
        var examples = ReadPreferences(request.LabelledDataPath, template, request.SkipInvalidRows);
        var tokenizer = HfTokenizer.Load(request.BaseModelDir);
        var metrics = new Dictionary<string, double>();
        var (sft, dpo) = SftThenDpo(request.BaseModelDir, examples, request.Sft, request.Dpo, workDir, device, tokenizer, metrics,
            progress, "student", ct);
        var artifacts = new Dictionary<string, string> { ["sft"] = sft.ModelDir!, ["model"] = dpo.ModelDir! };
        if (dpo.AdapterDir is not null) artifacts["adapter"] = dpo.AdapterDir;
        return WriteResult(workDir, new StageResult(artifacts, metrics), settings, redo);
    }

    /// <summary>Generates for held-out prompts with each model and scores the answers with the gold scorer.</summary>
    public static Task<StageResult> EvaluateAsync(EvaluateRequest request, string workDir, IProgress<JobProgress>? progress, CancellationToken ct)
        => Task.Run(() => Evaluate(request, workDir, progress, ct), ct);

    public static StageResult Evaluate(EvaluateRequest request, string workDir, IProgress<JobProgress>? progress, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Models.Count == 0) throw new ArgumentException("Evaluate needs at least one model.", nameof(request));
        var settings = StageFingerprint.Of(request, "models.", "prompts_path", "gold_scorer");
        if (TryReadResult(workDir, settings, out string? redo) is { } done) return done;
        // generations of another request (other models or sampling) must not be picked up as if complete
        if (redo is not null && Directory.Exists(workDir))
        {
            WriteFence.Check(workDir);
            foreach (var stale in Directory.GetFiles(workDir, "generations-*.jsonl")) File.Delete(stale);
        }
        var device = TorchDevice.Initialize(request.Device);
        var template = PromptTemplate.Get(request.Template);
        var prompts = PromptFile.Read(request.PromptsPath);
        using var gold = GoldScorers.Open(request.GoldScorer, device, request.Template);
        Directory.CreateDirectory(workDir);
        var artifacts = new Dictionary<string, string>();
        var metrics = new Dictionary<string, double>();
        var rewards = new Dictionary<string, IReadOnlyList<double>>();
        int index = 0;
        foreach (var (name, modelDir) in request.Models)
        {
            ct.ThrowIfCancellationRequested();
            string generationsPath = Path.Combine(workDir, $"generations-{name}.jsonl");
            var answers = Generations.ReadIfComplete(generationsPath, prompts.Count)
                ?? Generate(modelDir, prompts.Select(template.RenderText).ToList(), request, device);
            var scores = gold.Scorer.ScoreBatch(prompts.Zip(answers, (p, a) => (p, a)).ToList());
            Generations.Write(generationsPath, prompts, answers, scores);
            var score = StudentScores.Compute(name, scores);
            rewards[name] = scores;
            metrics[$"gold_reward/{name}"] = score.Mean;
            metrics[$"gold_reward_stderr/{name}"] = score.StdErr;
            artifacts[$"generations/{name}"] = generationsPath;
            progress?.Report(new JobProgress("evaluate", ++index, request.Models.Count,
                new Dictionary<string, double> { [$"gold_reward/{name}"] = score.Mean }, 0, null));
        }
        var report = new EvaluationReport
        {
            Title = "Evaluation report",
            // a model scorer is named by its folder (the model id), never by a server path
            GoldScorer = request.GoldScorer == "synthetic" ? "synthetic" : Path.GetFileName(Path.TrimEndingDirectorySeparator(request.GoldScorer)),
        };
        foreach (var (name, scores) in rewards) report.Students.Add(StudentScores.Compute(name, scores));
        foreach (var (a, ra) in rewards)
            foreach (var (b, rb) in rewards)
                if (string.CompareOrdinal(a, b) < 0)
                {
                    var winRate = WinRate.Compute(ra, rb);
                    metrics[$"win_rate/{a}_vs_{b}"] = winRate.Rate;
                    report.WinRates.Add(new WinRateEntry(a, b, winRate));
                }
        report.Info["prompts"] = prompts.Count.ToString(System.Globalization.CultureInfo.InvariantCulture);
        report.Info["sampling"] = request.Temperature > 0
            ? FormattableString.Invariant($"temperature {request.Temperature}, top_p {request.TopP}, top_k {request.TopK}, seed {request.Seed}")
            : "greedy";
        report.Info["max_new_tokens"] = request.MaxNewTokens.ToString(System.Globalization.CultureInfo.InvariantCulture);
        // The report as files the job serves (DownloadJobArtifact): "report" (Markdown), "report_json", "plot/<name>" (PNG).
        var reportDir = Path.Combine(workDir, "report");
        foreach (var path in report.Save(reportDir))
        {
            var file = Path.GetFileName(path);
            artifacts[file switch { "report.md" => "report", "report.json" => "report_json", _ => "plot/" + Path.GetFileNameWithoutExtension(file) }] = path;
        }
        return WriteResult(workDir, new StageResult(artifacts, metrics), settings, redo);
    }

    // ---- shared pieces ------------------------------------------------------------------------------------------

    /// <summary>The paper's recipe for teacher and student alike: SFT on the chosen responses (workDir/sft), then DPO with
    /// the SFT model as reference (workDir/dpo). Final metrics go to <paramref name="metrics"/> as sft/... and dpo/....</summary>
    private static (TrainResult Sft, TrainResult Dpo) SftThenDpo(string baseModelDir, IReadOnlyList<PreferenceExample> examples,
        SftConfig sftConfig, DpoConfig dpoConfig, string workDir, Device device, ITokenizer tokenizer, Dictionary<string, double> metrics,
        IProgress<JobProgress>? progress, string role, CancellationToken ct)
    {
        var sft = Sft(baseModelDir, examples.Select(e => e.ToSft()).ToList(), sftConfig, Path.Combine(workDir, "sft"), device, tokenizer,
            Prefix(progress, $"{role}/sft"), ct);
        AddFinalMetrics(metrics, "sft", sft);
        var dpo = Dpo(sft.ModelDir!, examples, dpoConfig, Path.Combine(workDir, "dpo"), device, tokenizer, Prefix(progress, $"{role}/dpo"), ct);
        AddFinalMetrics(metrics, "dpo", dpo);
        return (sft, dpo);
    }

    internal static TrainResult Sft(string baseModelDir, IReadOnlyList<SftExample> examples, SftConfig config, string outputDir, Device device,
        ITokenizer tokenizer, IProgress<JobProgress>? progress, CancellationToken ct)
    {
        var settings = StageFingerprint.OfTraining(config, baseModelDir, examples.Select(e => new[] { e.Prompt, e.Response }));
        if (TryReadTrainResult(outputDir, settings, out string? redo) is { } done) return done;
        using var model = PretrainedModel.Load(baseModelDir, new ModelLoadOptions { Device = device });
        var result = new SftTrainer(model, tokenizer, config, baseModelDir).Train(examples, outputDir, progress, ct);
        ThrowIfIncomplete(result, ct);
        return WriteTrainResult(outputDir, result, settings, redo);
    }

    internal static TrainResult Dpo(string sftModelDir, IReadOnlyList<PreferenceExample> examples, DpoConfig config, string outputDir,
        Device device, ITokenizer tokenizer, IProgress<JobProgress>? progress, CancellationToken ct)
    {
        var settings = StageFingerprint.OfTraining(config, sftModelDir, examples.Select(e => new[] { e.Prompt, e.Chosen, e.Rejected }));
        if (TryReadTrainResult(outputDir, settings, out string? redo) is { } done) return done;
        var reference = ReferenceModel.FromDirectory(sftModelDir, new ModelLoadOptions { Device = device });
        using var policy = PretrainedModel.Load(sftModelDir, new ModelLoadOptions { Device = device });
        var result = new DpoTrainer(policy, tokenizer, config, reference, sftModelDir).Train(examples, outputDir, progress, ct);
        ThrowIfIncomplete(result, ct);
        return WriteTrainResult(outputDir, result, settings, redo);
    }

    /// <summary>A Bradley-Terry reward model on the pairs; recorded and stripped of its checkpoints like SFT and DPO, so a
    /// restart after it finished trains nothing and the published teacher carries no optimizer state.</summary>
    internal static TrainResult Reward(string baseModelDir, IReadOnlyList<PreferenceExample> examples, RewardConfig config, string outputDir,
        Device device, ITokenizer tokenizer, IProgress<JobProgress>? progress, CancellationToken ct)
    {
        var settings = StageFingerprint.OfTraining(config, baseModelDir, examples.Select(e => new[] { e.Prompt, e.Chosen, e.Rejected }));
        if (TryReadTrainResult(outputDir, settings, out string? redo) is { } done) return done;
        using var backbone = PretrainedModel.Load(baseModelDir, new ModelLoadOptions { Device = device });
        using var rewardModel = new RewardModel(backbone, config.Seed);
        var result = new RewardTrainer(rewardModel, tokenizer, config).Train(examples, outputDir, progress, ct);
        ThrowIfIncomplete(result, ct);
        return WriteTrainResult(outputDir, result, settings, redo);
    }

    private static IReadOnlyList<string> Generate(string modelDir, IReadOnlyList<string> renderedPrompts, EvaluateRequest request, Device device)
    {
        using var model = PretrainedModel.Load(modelDir, new ModelLoadOptions { Device = device });
        model.eval();
        var tokenizer = HfTokenizer.Load(modelDir);
        return Generation.Generator.GenerateText(model, tokenizer, renderedPrompts, SamplingOptions(request), request.BatchSize);
    }

    /// <summary>How an evaluation samples: temperature 0 is greedy, else sampling with top_k (HF's default 50) and top_p.</summary>
    internal static GenerationOptions SamplingOptions(EvaluateRequest request) => new()
    {
        MaxNewTokens = request.MaxNewTokens,
        DoSample = request.Temperature > 0,
        Temperature = request.Temperature > 0 ? request.Temperature : 1.0,
        TopP = request.TopP,
        TopK = request.TopK,
        Seed = request.Seed,
    };

    internal static List<PreferenceExample> ReadPreferences(string path, PromptTemplate template, bool skipInvalidRows)
    {
        var examples = PreferenceDataReader.ReadPreferences(path, new DataReadOptions { SkipInvalidRows = skipInvalidRows })
            .Select(template.Apply).ToList();
        if (examples.Count == 0) throw new InvalidDataException($"{path}: no preference pairs in the file.");
        return examples;
    }

    internal static IProgress<JobProgress>? Prefix(IProgress<JobProgress>? progress, string stage)
        => progress is null ? null : new Progress<JobProgress>(p => progress.Report(p with { Stage = stage }));

    private static void ThrowIfIncomplete(TrainResult result, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (!result.Completed) throw new OperationCanceledException("training stopped before the last step");
    }

    private static void AddFinalMetrics(Dictionary<string, double> metrics, string prefix, TrainResult result)
    {
        if (result.LogHistory.Count == 0) return;
        foreach (var (key, value) in result.LogHistory[^1])
            if (key is not "step" and not "epoch") metrics[$"{prefix}/{key}"] = value;
    }

    // A finished (sub-)stage leaves its result file with the settings it was made from; a rerun with the same folder and
    // settings returns it instead of redoing the work, a rerun with other settings redoes it (the file then says which
    // setting differed).
    internal static StageResult? TryReadResult(string workDir, SortedDictionary<string, string> settings, out string? redo)
    {
        redo = null;
        string path = Path.Combine(workDir, ResultFile);
        if (!File.Exists(path)) return null;
        var stored = JsonSerializer.Deserialize<StoredResult>(File.ReadAllText(path))!;
        redo = StageFingerprint.Mismatch(stored.Settings, settings);
        if (redo is not null)
        {
            WriteFence.Check(path);
            File.Delete(path);
            return null;
        }
        return new StageResult(stored.Artifacts, stored.Metrics);
    }

    private static StageResult WriteResult(string workDir, StageResult result, SortedDictionary<string, string> settings, string? redoneBecause)
    {
        Directory.CreateDirectory(workDir);
        AtomicFile.WriteAllText(Path.Combine(workDir, ResultFile),
            JsonSerializer.Serialize(new StoredResult(new(result.Artifacts), new(result.Metrics.Where(m => double.IsFinite(m.Value))))
                { Settings = settings, RedoneBecause = redoneBecause }, Indented));
        return result;
    }

    private const string TrainDoneFile = "train-result.json";

    private static TrainResult? TryReadTrainResult(string outputDir, SortedDictionary<string, string> settings, out string? redo)
    {
        redo = null;
        string path = Path.Combine(outputDir, TrainDoneFile);
        if (!File.Exists(path)) return null;
        var stored = JsonSerializer.Deserialize<StoredTrain>(File.ReadAllText(path))!;
        redo = StageFingerprint.Mismatch(stored.Settings, settings);
        if (redo is not null)
        {
            WriteFence.Check(path);
            File.Delete(path);
            return null;
        }
        // the attempt that recorded the result may have been killed before it removed the checkpoints
        RemoveCheckpoints(outputDir);
        return new TrainResult(stored.GlobalStep, stored.GlobalStep, true, null, stored.LogHistory, outputDir, null, stored.ModelDir,
            stored.AdapterDir, TimeSpan.Zero);
    }

    private static TrainResult WriteTrainResult(string outputDir, TrainResult result, SortedDictionary<string, string> settings, string? redoneBecause)
    {
        var history = result.LogHistory.Select(h => h.Where(kv => double.IsFinite(kv.Value)).ToDictionary()).ToList();
        AtomicFile.WriteAllText(Path.Combine(outputDir, TrainDoneFile),
            JsonSerializer.Serialize(new StoredTrain(result.GlobalStep, result.ModelDir, result.AdapterDir, history)
                { Settings = settings, RedoneBecause = redoneBecause }, Indented));
        Failpoints.Hit(Failpoints.TrainResultRecorded);
        RemoveCheckpoints(outputDir);
        return result;
    }

    /// <summary>A finished sub-stage is never resumed again: its resumable checkpoints (weights + optimizer state) only
    /// cost disk, and a teacher folder served as a model would carry them along. (Removed after the result is recorded,
    /// so a kill in between costs no training, only this removal at the next start.)</summary>
    private static void RemoveCheckpoints(string outputDir)
    {
        WriteFence.Check(outputDir);
        foreach (var checkpoint in Directory.GetDirectories(outputDir, "checkpoint-*")) Directory.Delete(checkpoint, recursive: true);
    }

    private static void WriteLabels(string path, LabellingResult result)
    {
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream))
        {
            for (int i = 0; i < result.Pairs.Count; i++)
            {
                var l = result.Labels[i];
                writer.WriteStartObject();
                writer.WriteNumber("index", i);
                if (result.Pairs[i].Id is { } id) writer.WriteString("id", id);
                writer.WriteNumber("label", l.Label);
                if (result.Pairs[i].HumanLabel is { } human) writer.WriteNumber("human_label", human); else writer.WriteNull("human_label");
                writer.WriteNumber("reward_a", l.RewardA);
                writer.WriteNumber("reward_b", l.RewardB);
                writer.WriteNumber("margin", l.Margin);
                writer.WriteNumber("confidence", l.Confidence);
                writer.WriteBoolean("kept", result.Kept[i]);
                writer.WriteEndObject();
                writer.Flush();
                stream.WriteByte((byte)'\n');
                writer.Reset();
            }
        }
        AtomicFile.WriteAllBytes(path, stream.ToArray());
    }

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private sealed record StoredResult(Dictionary<string, string> Artifacts, Dictionary<string, double> Metrics)
    {
        public SortedDictionary<string, string>? Settings { get; init; }
        public string? RedoneBecause { get; init; }
    }

    private sealed record StoredTrain(int GlobalStep, string? ModelDir, string? AdapterDir, List<Dictionary<string, double>> LogHistory)
    {
        public SortedDictionary<string, string>? Settings { get; init; }
        public string? RedoneBecause { get; init; }
    }
}
