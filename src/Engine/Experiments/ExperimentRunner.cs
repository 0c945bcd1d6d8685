using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Evaluation;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Engine.Tokenization;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Experiments;

/// <summary>
/// Runs the paper's studies over several seeds as one resumable job. Every model lives in one folder per seed keyed by
/// what makes it (teacher name; label source and pairs; SFT or not; beta), and the stages' fingerprints make a second
/// request for the same model return the finished one: the teacher of a seed serves all its student variants, an SFT
/// student serves every DPO variant on the same data, and a study run alone later reuses what an earlier run made.
/// The data (pairs, prompts, base models) are the same for every seed; the seed sets every training and sampling seed.
/// </summary>
public sealed class ExperimentRunner
{
    public const string PipelineTeacher = "pipeline";

    private readonly ExperimentConfig _config;
    private readonly PipelineConfig _pipeline;
    private readonly IProgress<JobProgress>? _progress;
    private readonly CancellationToken _ct;
    private Device _device = null!;
    private List<UnlabelledPair> _pairs = [];
    private int[] _human = [], _gold = [];
    private double[] _goldA = [], _goldB = [];
    private string _unlabelledPath = "";

    private readonly bool _worker;

    private ExperimentRunner(ExperimentConfig config, IProgress<JobProgress>? progress, CancellationToken ct, bool worker)
    {
        _config = config;
        _worker = worker;
        _pipeline = PipelineConfig.Load(config.Pipeline);
        _progress = progress;
        _ct = ct;
    }

    public static ExperimentReport Run(ExperimentConfig config, IProgress<JobProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        return new ExperimentRunner(config, progress, ct, worker: false).Run();
    }

    /// <summary>
    /// Trains and evaluates every model of <paramref name="config"/>'s seeds and studies, as <see cref="Run"/> does, but
    /// writes nothing that all seeds share (the configs, the shared data, the report): one of several processes that
    /// split the seeds between them (<c>wt experiments --jobs N</c>), each writing only its own seeds' folders. The shared
    /// data must be there already (<see cref="PrepareShared"/>); a later <see cref="Run"/> over all seeds finds every
    /// stage finished and writes the report.
    /// </summary>
    public static void RunWorker(ExperimentConfig config, IProgress<JobProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        new ExperimentRunner(config, progress, ct, worker: true).Run();
    }

    /// <summary>Writes the data every seed shares (the unlabelled pairs with their human labels), before workers start.</summary>
    public static void PrepareShared(ExperimentConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        new ExperimentRunner(config, null, default, worker: false).ReadPairs();
    }

    private ExperimentReport Run()
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(_config.OutputDir);
        if (!_worker)
        {
            AtomicFile.WriteAllText(Path.Combine(_config.OutputDir, "experiments-config.json"), _config.ToJson());
            AtomicFile.WriteAllText(Path.Combine(_config.OutputDir, "pipeline-config.json"), _pipeline.ToJson());
        }
        _device = TorchDevice.Initialize(_pipeline.Device);
        PrepareData();
        var report = new ExperimentReport
        {
            Seeds = _config.Seeds.ToList(),
            Config = _config,
            Pipeline = _pipeline,
            UnlabelledPairs = _pairs.Count,
            EvalPrompts = PromptFile.Read(_pipeline.Data.EvalPrompts).Count,
        };
        var seeds = _config.Seeds.Select(s => new SeedRun(this, s)).ToList();
        foreach (var study in _config.SelectedStudies)
        {
            var studyClock = Stopwatch.StartNew();
            var result = study switch
            {
                Studies.WeakVsHuman => WeakVsHuman(seeds),
                Studies.LabelQuality => LabelQuality(seeds),
                Studies.Subsets => Subsets(seeds),
                Studies.LabelledFraction => LabelledFraction(seeds),
                Studies.Beta => Beta(seeds),
                Studies.NoSft => NoSft(seeds),
                Studies.TeacherSize => TeacherSize(seeds),
                Studies.AcrossFamilies => AcrossFamilies(seeds),
                Studies.Iterated => Iterated(seeds),
                _ => throw new InvalidOperationException(study),
            };
            result.Seconds = studyClock.Elapsed.TotalSeconds;
            report.Studies.Add(result);
        }
        report.TotalSeconds = clock.Elapsed.TotalSeconds;
        if (!_worker) report.Save(_config.OutputDir);
        return report;
    }

    // ---- data shared by every seed ----------------------------------------------------------------------

    private void PrepareData()
    {
        ReadPairs();
        using var gold = GoldScorers.Open(_pipeline.Evaluation.GoldScorer, _device, _pipeline.Template);
        _goldA = gold.Scorer.ScoreBatch(_pairs.Select(p => (p.Prompt, p.ResponseA)).ToList()).ToArray();
        _goldB = gold.Scorer.ScoreBatch(_pairs.Select(p => (p.Prompt, p.ResponseB)).ToList()).ToArray();
        _gold = LabelAgreement.GoldLabels(_goldA, _goldB);
    }

    /// <summary>The unlabelled pairs and their human labels, written as the shared data file (a worker only checks it).</summary>
    private void ReadPairs()
    {
        var all = PreferenceDataReader.ReadUnlabelled(_pipeline.Data.Unlabelled, new DataReadOptions { SkipInvalidRows = _pipeline.Data.SkipInvalidRows }).ToList();
        _pairs = _config.UnlabelledPairs > 0 ? all.Take(_config.UnlabelledPairs).ToList() : all;
        if (_pairs.Count == 0) throw new InvalidDataException($"{_pipeline.Data.Unlabelled}: no pairs");
        if (_pairs.Any(p => p.HumanLabel is null))
            throw new InvalidDataException($"{_pipeline.Data.Unlabelled}: the studies compare against the human labels, but some pairs have none");
        _human = _pairs.Select(p => p.HumanLabel!.Value).ToArray();
        _unlabelledPath = Path.Combine(_config.OutputDir, "data", "unlabelled.jsonl");
        var rows = _pairs.Select(p => new LabelledRow(p, p.HumanLabel!.Value));
        if (!_worker) WriteIfChanged(_unlabelledPath, rows);
        else if (!SameContent(_unlabelledPath, rows))
            throw new InvalidOperationException($"{_unlabelledPath}: the shared data is missing or differs from this config's; "
                + "run the experiments without workers once, or let `wt experiments --jobs` prepare it");
    }

    /// <summary>Writes a data file only when its content changed (the stage fingerprints read the content anyway).</summary>
    private static string WriteIfChanged(string path, IEnumerable<LabelledRow> rows)
    {
        string temp = Rendered(path, rows);
        if (SameBytes(path, temp)) File.Delete(temp);
        else File.Move(temp, path, overwrite: true);
        return path;
    }

    private static bool SameContent(string path, IEnumerable<LabelledRow> rows)
    {
        string temp = Rendered(path, rows);
        try { return SameBytes(path, temp); }
        finally { File.Delete(temp); }
    }

    private static bool SameBytes(string path, string other) =>
        File.Exists(path) && File.ReadAllBytes(path).AsSpan().SequenceEqual(File.ReadAllBytes(other));

    /// <summary>The rows written to a temporary file beside <paramref name="path"/>, named for this process.</summary>
    private static string Rendered(string path, IEnumerable<LabelledRow> rows)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        string temp = $"{path}.new-{Environment.ProcessId}";
        PreferenceDataWriter.WriteLabelled(temp, rows);
        return temp;
    }

    // ---- one seed's models ------------------------------------------------------------------------------

    private sealed class SeedRun(ExperimentRunner owner, long seed)
    {
        public long Seed { get; } = seed;
        private readonly string _dir = Path.Combine(owner._config.OutputDir, $"seed-{seed}");
        private readonly Dictionary<string, int[]> _labels = [];
        private readonly Dictionary<string, double[]> _rewards = [];
        /// <summary>The model behind each evaluated key (for its training losses).</summary>
        public Dictionary<string, string> ModelDirs { get; } = [];
        private PipelineConfig? _seeded;

        /// <summary>The pipeline config with every training and sampling seed derived from this run's seed.</summary>
        public PipelineConfig Config => _seeded ??= owner._pipeline with
        {
            Seed = Seed,
            Teacher = owner._pipeline.Teacher with
            {
                Sft = owner._pipeline.Teacher.Sft with { Seed = Seed * 1000 + 1 },
                Dpo = owner._pipeline.Teacher.Dpo with { Seed = Seed * 1000 + 2 },
                Reward = owner._pipeline.Teacher.Reward with { Seed = Seed * 1000 + 3 },
            },
            Student = owner._pipeline.Student with
            {
                Sft = owner._pipeline.Student.Sft with { Seed = Seed * 1000 + 4 },
                Dpo = owner._pipeline.Student.Dpo with { Seed = Seed * 1000 + 5 },
            },
            Evaluation = owner._pipeline.Evaluation with { Seed = Seed * 1000 + 6 },
        };

        /// <summary>A generator for one purpose of this seed, the same in every process (HashCode.Combine, used before, is
        /// randomised per process: a rerun or a worker drew other subsets and retrained them).</summary>
        public Random Random(string purpose) => new((int)(new SeededRandom(Seed, StableHash(purpose)).NextUInt64() >> 33));

        private static int StableHash(string s)
        {
            unchecked
            {
                int h = 17;
                foreach (char c in s) h = h * 31 + c;
                return h;
            }
        }

        private string Dir(string name) => Path.Combine(_dir, name);

        private IProgress<JobProgress>? Progress(string what) => owner._progress is null ? null
            : new Progress<JobProgress>(p => owner._progress.Report(p with { Stage = $"seed {Seed} {what}: {p.Stage}" }));

        private void Seeded() => Seeds.Set(Seed);

        /// <summary>Trains (or reuses) a teacher: the pipeline's (DPO or its method), another base, or the reward-model variant.</summary>
        public string Teacher(string name, string baseModel, TeacherMethod method)
        {
            Seeded();
            var c = Config;
            return PipelineStages.TrainTeacher(new TrainTeacherRequest
            {
                BaseModelDir = baseModel,
                LabelledDataPath = c.Data.Labelled,
                Method = method,
                Sft = c.Teacher.Sft,
                Dpo = c.Teacher.Dpo,
                Reward = c.Teacher.Reward,
                Template = c.Template,
                Device = c.Device,
                SkipInvalidRows = c.Data.SkipInvalidRows,
            }, Dir($"teacher/{name}"), Progress($"teacher {name}"), owner._ct).Artifacts["teacher"];
        }

        public string PipelineTeacherDir() => Teacher(PipelineTeacher, Config.Teacher.BaseModel, Config.Teacher.Method);

        /// <summary>A teacher's labels of the unlabelled pairs (every pair: the paper uses no confidence filter).</summary>
        public int[] Labels(string teacherName, Func<string> teacherDir)
        {
            if (_labels.TryGetValue(teacherName, out var cached)) return cached;
            var c = Config;
            var result = LabelFile(teacherDir(), owner._unlabelledPath, Dir($"labels/{teacherName}"), $"labels {teacherName}");
            var labels = ReadLabels(result.Artifacts["labels"]);
            if (labels.Length != owner._pairs.Count) throw new InvalidDataException($"{result.Artifacts["labels"]}: {labels.Length} labels for {owner._pairs.Count} pairs");
            return _labels[teacherName] = labels;
        }

        public StageResult LabelFile(string teacherDir, string pairsPath, string workDir, string what)
        {
            Seeded();
            var c = Config;
            return PipelineStages.Label(new LabelRequest
            {
                TeacherDir = teacherDir,
                UnlabelledDataPath = pairsPath,
                BatchSize = c.Labelling.BatchSize,
                MarginQuantile = 0,
                MaxLength = c.Teacher.Dpo.MaxLength,
                MaxPromptLength = c.Teacher.Dpo.MaxPromptLength,
                Template = c.Template,
                Device = c.Device,
                SkipInvalidRows = c.Data.SkipInvalidRows,
            }, workDir, Progress(what), owner._ct);
        }

        public int[] WeakLabels() => Labels(PipelineTeacher, PipelineTeacherDir);

        /// <summary>A training set: the given pairs with the given labels, in the unlabelled file's own format.</summary>
        public string Data(string variant, IReadOnlyList<int> labels, IEnumerable<int>? indices = null)
        {
            var rows = (indices ?? Enumerable.Range(0, owner._pairs.Count)).Select(i => new LabelledRow(owner._pairs[i], labels[i]));
            return WriteIfChanged(Dir($"data/{variant}.jsonl"), rows);
        }

        public string HumanData() => Data("human", owner._human);
        public string WeakData() => Data("weak", WeakLabels());

        public string Sft(string variant, string dataPath, string? baseModel = null)
        {
            Seeded();
            var c = Config;
            string baseDir = baseModel ?? c.Student.BaseModel;
            var examples = PipelineStages.ReadPreferences(dataPath, PromptTemplate.Get(c.Template), c.Data.SkipInvalidRows);
            return PipelineStages.Sft(baseDir, examples.Select(e => e.ToSft()).ToList(), c.Student.Sft, Dir($"student/{variant}/sft"), owner._device,
                HfTokenizer.Load(baseDir), Progress($"student {variant} sft"), owner._ct).ModelDir!;
        }

        /// <summary>The student's DPO on a data variant, from its SFT model (the paper) or straight from the base model.</summary>
        public string Dpo(string variant, string dataPath, double? beta = null, bool fromSft = true, string? initModel = null, string? folder = null)
        {
            var c = Config;
            double b = beta ?? c.Student.Dpo.Beta;
            string init = initModel ?? (fromSft ? Sft(variant, dataPath) : c.Student.BaseModel);
            Seeded();
            var examples = PipelineStages.ReadPreferences(dataPath, PromptTemplate.Get(c.Template), c.Data.SkipInvalidRows);
            string name = folder ?? $"{(fromSft ? "dpo" : "dpo-nosft")}-beta{b.ToString("R", CultureInfo.InvariantCulture)}";
            return PipelineStages.Dpo(init, examples, c.Student.Dpo with { Beta = b }, Dir($"student/{variant}/{name}"), owner._device,
                HfTokenizer.Load(init), Progress($"student {variant} {name}"), owner._ct).ModelDir!;
        }

        /// <summary>Per-prompt gold rewards of a model's answers to the held-out prompts (one evaluation folder per model).</summary>
        public double[] GoldRewards(string key, Func<string> modelDir, string? promptsPath = null)
        {
            if (_rewards.TryGetValue(key, out var cached)) return cached;
            string model = ModelDirs[key] = modelDir();
            Seeded();
            var c = Config;
            var result = PipelineStages.Evaluate(new EvaluateRequest
            {
                Models = new Dictionary<string, string> { ["model"] = model },
                PromptsPath = promptsPath ?? c.Data.EvalPrompts,
                GoldScorer = c.Evaluation.GoldScorer,
                Temperature = c.Evaluation.Temperature,
                TopP = c.Evaluation.TopP,
                TopK = c.Evaluation.TopK,
                MaxNewTokens = c.Evaluation.MaxNewTokens,
                BatchSize = c.Evaluation.BatchSize,
                Seed = c.Evaluation.Seed,
                Template = c.Template,
                Device = c.Device,
            }, Dir($"eval/{key}"), Progress($"evaluate {key}"), owner._ct);
            return _rewards[key] = File.ReadLines(result.Artifacts["generations/model"]).Where(l => l.Length > 0)
                .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("gold_reward").GetDouble()).ToArray();
        }

        // the students most studies share
        public double[] SftHuman() => GoldRewards("sft", () => Sft("human", HumanData()));
        public double[] SftWeak() => GoldRewards("weak_sft", () => Sft("weak", WeakData()));
        public double[] HumanDpo() => GoldRewards("human_dpo", () => Dpo("human", HumanData()));
        public double[] WeakDpo() => GoldRewards("weak_dpo", () => Dpo("weak", WeakData()));

        public static int[] ReadLabels(string labelsPath) => File.ReadLines(labelsPath).Where(l => l.Length > 0)
            .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("label").GetInt32()).ToArray();

        public string RunDir => _dir;
    }

    // ---- the studies --------------------------------------------------------------------------------------

    private const string StudentDefinition = "mean gold reward of the student's answers to the held-out prompts";

    private static StudyResult Students(string name, string title, string question, IReadOnlyList<SeedRun> seeds,
        IEnumerable<(string Row, string Definition, double? Paper, Func<SeedRun, double[]> Rewards)> rows)
    {
        var study = new StudyResult { Name = name, Title = title, Question = question };
        foreach (var (row, definition, paper, rewards) in rows)
        {
            var perSeed = seeds.Select(rewards).ToList();
            study.Rows.Add(new StudyRow(row, definition, paper, perSeed.Select(r => r.Average()).ToList(), perSeed));
        }
        return study;
    }

    private static void Claim(StudyResult study, string a, string b, string? claim = null)
    {
        var ra = study.Row(a);
        var rb = study.Row(b);
        var diff = SeedStatistics.PairedDifference(ra.PerPrompt!, rb.PerPrompt!);
        study.Verdicts.Add(new Verdict(claim ?? $"{a} >= {b}", diff,
            $"paired per-prompt difference {a} - {b}, n = {diff.Count} prompt pairs pooled over {ra.PerSeed.Count} seeds"));
    }

    /// <summary>Each row's training losses per seed, from the metrics.jsonl its trainer wrote into the model folder
    /// (an SFT folder for the SFT rows, a DPO folder for the others).</summary>
    private static void AddLosses(StudyResult study, IReadOnlyList<SeedRun> seeds)
    {
        foreach (var row in study.Rows)
            foreach (var s in seeds)
            {
                if (!s.ModelDirs.TryGetValue(row.Name, out var dir)) continue;
                string metrics = Path.Combine(dir, "metrics.jsonl");
                if (!File.Exists(metrics)) continue;
                var points = File.ReadLines(metrics).Where(l => l.Length > 0).Select(l => JsonDocument.Parse(l).RootElement)
                    .Where(e => e.TryGetProperty("step", out _) && e.TryGetProperty("loss", out _))
                    .Select(e => (e.GetProperty("step").GetInt32(), e.GetProperty("loss").GetDouble())).ToList();
                if (points.Count > 0)
                    study.Losses.Add(new LossCurve(row.Name, Path.GetFileName(dir.TrimEnd('/')) == "sft" ? "sft" : "dpo", s.Seed, points));
            }
    }

    private StudyResult WeakVsHuman(IReadOnlyList<SeedRun> seeds)
    {
        var study = Students(Studies.WeakVsHuman, "1. Weak vs human labels",
            "Does the student aligned on the weak teacher's labels match or beat the one aligned on the human labels?", seeds,
        [
            ("sft", "the student after SFT on the human-chosen responses of the unlabelled pairs (no DPO)", null, s => s.SftHuman()),
            ("weak_sft", "the student after SFT on the teacher-chosen responses (no DPO)", null, s => s.SftWeak()),
            ("human_dpo", "the student after SFT then DPO on the human labels (the paper's baseline)", 4.63, s => s.HumanDpo()),
            ("weak_dpo", "the student after SFT then DPO on the weak teacher's labels (the paper's method)", 4.84, s => s.WeakDpo()),
        ]);
        study.PaperNote = "paper: OPT-125M teacher, OPT-1.3B student, HH-RLHF, gold reward model (not on our scale)";
        Claim(study, "weak_dpo", "human_dpo", "weak-label student >= human-label student");
        Claim(study, "weak_dpo", "sft", "weak-label DPO improves on SFT");
        Claim(study, "human_dpo", "sft", "human-label DPO improves on SFT");
        AddLosses(study, seeds);
        return study;
    }

    private StudyResult LabelQuality(IReadOnlyList<SeedRun> seeds)
    {
        var study = new StudyResult
        {
            Name = Studies.LabelQuality, Title = "2. Label quality",
            Question = "How often does the teacher agree with the human and gold labels, and how well do its labels separate good from bad responses (paper Table 2)?",
            ValueKind = "gold reward of the pairs' responses",
            ExtraTitle = "label agreement and the teacher's win rate where it disagrees",
        };
        var agreement = seeds.Select(s => LabelAgreement.Compute(s.WeakLabels(), _human, _gold)).ToList();
        var tables = seeds.Select(s => GoldGapTable.Compute(_goldA, _goldB, _human, s.WeakLabels())).ToList();
        void Add(string row, string def, double? paper, Func<int, double> value) =>
            study.Rows.Add(new StudyRow(row, def, paper, Enumerable.Range(0, seeds.Count).Select(value).ToList(), null));
        void AddRate(string row, string def, double? paper, Func<int, double> value) =>
            study.Extra.Add(new StudyRow(row, def, paper, Enumerable.Range(0, seeds.Count).Select(value).ToList(), null));
        AddRate("teacher_vs_human", "fraction of pairs where the teacher's label equals the human label", 0.606, i => agreement[i].TeacherVsHuman.Rate);
        AddRate("teacher_vs_gold", "fraction of pairs where the teacher's label equals the gold preference (gold ties left out)", null, i => agreement[i].TeacherVsGold.Rate);
        AddRate("human_vs_gold", "fraction of pairs where the human label equals the gold preference (the same for every seed)", null, i => agreement[i].HumanVsGold.Rate);
        var paperGaps = new Dictionary<string, (double C, double R)>
        {
            ["human"] = (5.77, 4.23), ["weak"] = (5.63, 4.39), ["agree"] = (5.93, 3.66), ["disagree_weak"] = (5.17, 5.53),
        };
        var gapDefs = new Dictionary<string, string>
        {
            ["human"] = "all pairs, labelled by the human labels",
            ["weak"] = "all pairs, labelled by the teacher",
            ["agree"] = "pairs where teacher and human agree",
            ["disagree_weak"] = "pairs where they disagree, the teacher's choice as chosen",
            ["disagree_human"] = "pairs where they disagree, the human choice as chosen",
        };
        for (int r = 0; r < 5; r++)
        {
            int row = r;
            string source = tables[0].Rows[row].Source;
            paperGaps.TryGetValue(source, out var p);
            bool hasPaper = paperGaps.ContainsKey(source);
            Add($"{source}/chosen", $"mean gold reward of the chosen responses: {gapDefs[source]}", hasPaper ? p.C : null, i => tables[i].Rows[row].Chosen);
            Add($"{source}/rejected", $"mean gold reward of the rejected responses: {gapDefs[source]}", hasPaper ? p.R : null, i => tables[i].Rows[row].Rejected);
            Add($"{source}/gap", $"chosen minus rejected: {gapDefs[source]}", hasPaper ? Math.Round(p.C - p.R, 2) : null, i => tables[i].Rows[row].Gap);
        }
        AddRate("teacher_better_in_disagreeing", "fraction of the disagreeing pairs where the teacher's choice has the higher gold reward (ties half)", 0.443,
            i => tables[i].TeacherBetterInDisagreeing);
        var gap = study.Row("weak/gap");
        study.Verdicts.Add(new Verdict("weak labels separate better from worse responses (chosen - rejected gold gap > 0)",
            SeedStatistics.MeanInterval(gap.PerSeed), $"mean over {seeds.Count} seeds of the weak-label gold gap"));
        study.Verdicts.Add(new Verdict("on the disagreeing pairs the teacher's choice wins at least half the time (rate - 0.5 >= 0)",
            SeedStatistics.MeanInterval(study.Row("teacher_better_in_disagreeing").PerSeed.Select(v => v - 0.5).ToList()),
            $"mean over {seeds.Count} seeds of the rate minus 0.5"));
        study.PaperNote = "paper: HH-RLHF with OPT-125M teacher; rewards of the paper's gold model (not on our scale); agreement 60.6%";
        return study;
    }

    private StudyResult Subsets(IReadOnlyList<SeedRun> seeds)
    {
        double[] Agree(SeedRun s)
        {
            var w = s.WeakLabels();
            return s.GoldRewards("agree_dpo", () => s.Dpo("agree", s.Data("agree", w, Enumerable.Range(0, w.Length).Where(i => w[i] == _human[i]))));
        }
        double[] Disagree(SeedRun s)
        {
            var w = s.WeakLabels();
            return s.GoldRewards("disagree_dpo", () => s.Dpo("disagree", s.Data("disagree", w, Enumerable.Range(0, w.Length).Where(i => w[i] != _human[i]))));
        }
        double[] RandomFlip(SeedRun s)
        {
            var w = s.WeakLabels();
            double agreement = (double)Enumerable.Range(0, w.Length).Count(i => w[i] == _human[i]) / w.Length;
            var random = s.Random("random-labels");
            var flipped = _human.Select(h => random.NextDouble() < agreement ? h : 1 - h).ToArray();
            return s.GoldRewards("random_dpo", () => s.Dpo("random", s.Data("random", flipped)));
        }
        var study = Students(Studies.Subsets, "3. Training on subsets",
            "Are the teacher's 'errors' noise? Train on the agreeing pairs only, the disagreeing pairs only, and on random flips of the human labels with the teacher's agreement rate.", seeds,
        [
            ("weak_dpo", "SFT then DPO on all pairs with the teacher's labels", 4.84, s => s.WeakDpo()),
            ("agree_dpo", "SFT then DPO on the pairs where teacher and human agree only", 4.78, Agree),
            ("disagree_dpo", "SFT then DPO on the pairs where they disagree only (teacher's labels)", 4.01, Disagree),
            ("random_dpo", "SFT then DPO on all pairs, human labels each kept with probability = the teacher's agreement, else flipped", 3.91, RandomFlip),
        ]);
        study.PaperNote = "paper: OPT-125M teacher, OPT-1.3B student, HH-RLHF (not on our scale)";
        Claim(study, "weak_dpo", "agree_dpo", "all weak labels >= the agreeing subset alone");
        Claim(study, "weak_dpo", "disagree_dpo", "all weak labels >= the disagreeing subset alone");
        Claim(study, "weak_dpo", "random_dpo", "weak labels >= random labels with the same agreement");
        return study;
    }

    private StudyResult LabelledFraction(IReadOnlyList<SeedRun> seeds)
    {
        var rows = new List<(string, string, double?, Func<SeedRun, double[]>)>
        {
            ("weak_dpo", "every pair labelled by the teacher (fraction 0)", null, s => s.WeakDpo()),
        };
        double?[] paperWeak = [4.31, 4.72, 4.78, 4.84];
        foreach (var (fraction, k) in _config.HumanFractions.Select((f, k) => (f, k)))
        {
            string name = $"human_{Fraction(fraction)}";
            rows.Add((name, $"a random {Fraction(fraction)} of the pairs (per seed) keep their human label, the rest the teacher's",
                _config.HumanFractions.SequenceEqual(new ExperimentConfig { Pipeline = "" }.HumanFractions) ? paperWeak[k] : null, s =>
            {
                var w = s.WeakLabels();
                var random = s.Random($"fraction-{fraction}");
                int count = (int)Math.Round(fraction * w.Length);
                var human = Enumerable.Range(0, w.Length).OrderBy(_ => random.Next()).Take(count).ToHashSet();
                var mixed = Enumerable.Range(0, w.Length).Select(i => human.Contains(i) ? _human[i] : w[i]).ToArray();
                string folder = name.Replace('/', '-'); // human_1/16 -> human_1-16: one folder, not two
                return s.GoldRewards($"{folder}_dpo", () => s.Dpo(folder, s.Data(folder, mixed)));
            }));
        }
        rows.Add(("human_dpo", "every pair with its human label (fraction 1)", null, s => s.HumanDpo()));
        var study = Students(Studies.LabelledFraction, "4. Labelled fraction",
            "How does the student change as a growing fraction of the pairs carries human labels and the rest the teacher's?", seeds, rows);
        study.PaperNote = "paper (weak column): the fraction is the share of the data the teacher learns from, the rest labelled by it; our rows mix the labels of one teacher instead, so the paper's values are for scale only";
        Claim(study, study.Rows[^2].Name, "weak_dpo", $"{study.Rows[^2].Name} >= weak_dpo (adding human labels helps)");
        return study;
    }

    private static string Fraction(double f) => Math.Abs(1 / f - Math.Round(1 / f)) < 1e-9
        ? $"1/{Math.Round(1 / f).ToString(CultureInfo.InvariantCulture)}" : f.ToString("R", CultureInfo.InvariantCulture);

    private StudyResult Beta(IReadOnlyList<SeedRun> seeds)
    {
        var paperWeak = new Dictionary<double, double> { [0.05] = 4.81, [0.1] = 4.84, [0.2] = 4.56, [0.3] = 4.55, [0.5] = 4.44 };
        var paperHuman = new Dictionary<double, double> { [0.05] = 4.50, [0.1] = 4.63, [0.2] = 4.17, [0.3] = 4.08, [0.5] = 4.04 };
        var rows = new List<(string, string, double?, Func<SeedRun, double[]>)>();
        foreach (var beta in _config.Betas)
        {
            string b = beta.ToString("R", CultureInfo.InvariantCulture);
            rows.Add(($"weak_dpo@{b}", $"SFT then DPO with beta {b} on the teacher's labels", paperWeak.TryGetValue(beta, out var pw) ? pw : null,
                s => s.GoldRewards($"weak_dpo_beta{b}", () => s.Dpo("weak", s.WeakData(), beta))));
            rows.Add(($"human_dpo@{b}", $"SFT then DPO with beta {b} on the human labels", paperHuman.TryGetValue(beta, out var ph) ? ph : null,
                s => s.GoldRewards($"human_dpo_beta{b}", () => s.Dpo("human", s.HumanData(), beta))));
        }
        var study = Students(Studies.Beta, "5. Beta", "Does the weak-label student keep up with the human-label one across the DPO beta?", seeds, rows);
        study.PaperNote = "paper: OPT-125M teacher, OPT-1.3B student, HH-RLHF (not on our scale)";
        foreach (var beta in _config.Betas)
        {
            string b = beta.ToString("R", CultureInfo.InvariantCulture);
            Claim(study, $"weak_dpo@{b}", $"human_dpo@{b}", $"at beta {b}: weak-label student >= human-label student");
        }
        return study;
    }

    private StudyResult NoSft(IReadOnlyList<SeedRun> seeds)
    {
        var study = Students(Studies.NoSft, "6. Without the student's SFT stage",
            "How much does the student's SFT stage matter, for weak and human labels alike?", seeds,
        [
            ("weak_dpo", "SFT then DPO on the teacher's labels", 4.84, s => s.WeakDpo()),
            ("human_dpo", "SFT then DPO on the human labels", 4.63, s => s.HumanDpo()),
            ("weak_dpo_nosft", "DPO straight from the base model (also the reference) on the teacher's labels", 3.83,
                s => s.GoldRewards("weak_dpo_nosft", () => s.Dpo("weak", s.WeakData(), fromSft: false))),
            ("human_dpo_nosft", "DPO straight from the base model on the human labels", 3.77,
                s => s.GoldRewards("human_dpo_nosft", () => s.Dpo("human", s.HumanData(), fromSft: false))),
        ]);
        study.PaperNote = "paper: OPT-125M teacher, OPT-1.3B student, HH-RLHF (not on our scale)";
        Claim(study, "weak_dpo", "weak_dpo_nosft", "the SFT stage helps the weak-label student");
        Claim(study, "human_dpo", "human_dpo_nosft", "the SFT stage helps the human-label student");
        Claim(study, "weak_dpo_nosft", "human_dpo_nosft", "without SFT: weak-label student >= human-label student");
        AddLosses(study, seeds);
        return study;
    }

    private StudyResult TeacherSize(IReadOnlyList<SeedRun> seeds)
    {
        var rows = new List<(string, string, double?, Func<SeedRun, double[]>)>
        {
            ("human_dpo", "SFT then DPO on the human labels (reference row)", 4.63, s => s.HumanDpo()),
            ("weak_dpo", $"teacher: the pipeline's ({Path.GetFileName(_pipeline.Teacher.BaseModel)}, {_pipeline.Teacher.Method})", 4.84, s => s.WeakDpo()),
        };
        var agreement = new List<(string, Func<SeedRun, int[]>)> { ("weak_dpo", s => s.WeakLabels()) };
        foreach (var t in _config.Teachers)
        {
            Func<SeedRun, int[]> labels = s => s.Labels(t.Name, () => s.Teacher(t.Name, t.BaseModel, TeacherMethod.Dpo));
            rows.Add(($"teacher_{t.Name}", $"teacher: {t.Description} ({Path.GetFileName(t.BaseModel)}, DPO)", null,
                s => s.GoldRewards($"teacher_{t.Name}_dpo", () => s.Dpo($"teacher-{t.Name}", s.Data($"teacher-{t.Name}", labels(s))))));
            agreement.Add(($"teacher_{t.Name}", labels));
        }
        if (_config.RewardModelTeacher)
        {
            Func<SeedRun, int[]> labels = s => s.Labels("reward-model", () => s.Teacher("reward-model", _pipeline.Teacher.BaseModel, TeacherMethod.RewardModel));
            rows.Add(("teacher_reward_model", "teacher: the pipeline's teacher base trained as a Bradley-Terry reward model (Appendix C)", null,
                s => s.GoldRewards("teacher_reward_model_dpo", () => s.Dpo("teacher-reward-model", s.Data("teacher-reward-model", labels(s))))));
            agreement.Add(("teacher_reward_model", labels));
        }
        if (_config.GoldLabelTeacher)
        {
            var goldLabels = _gold.Select((g, i) => g == LabelAgreement.NoPreference ? _human[i] : g).ToArray();
            rows.Add(("teacher_gold", "labels from the gold preference itself (the ceiling any teacher can reach; gold ties keep the human label)", null,
                s => s.GoldRewards("teacher_gold_dpo", () => s.Dpo("gold", s.Data("gold", goldLabels)))));
            agreement.Add(("teacher_gold", _ => goldLabels));
        }
        var study = Students(Studies.TeacherSize, "7. Teacher size and kind",
            "Does the teacher's size (or kind) matter? Students aligned on the labels of teachers of several sizes, a reward-model teacher and the gold labels.", seeds, rows);
        foreach (var (row, labels) in agreement)
        {
            var rates = seeds.Select(s => (double)labels(s).Zip(_human).Count(p => p.First == p.Second) / _human.Length).ToList();
            study.Extra.Add(new StudyRow($"{row}/teacher_vs_human", $"label agreement with the human labels of the teacher behind {row}", null, rates, null));
        }
        study.PaperNote = "paper: OPT-1.3B student; teachers OPT-125M 4.84, OPT-1.3B 4.78, Llama-3-8B 4.91, GPT-4 4.52 (not on our scale)";
        foreach (var row in study.Rows.Skip(1)) Claim(study, row.Name, "human_dpo", $"{row.Name} >= human_dpo");
        return study;
    }

    private StudyResult AcrossFamilies(IReadOnlyList<SeedRun> seeds)
    {
        var t = _config.CrossFamilyTeacher!;
        Func<SeedRun, int[]> labels = s => s.Labels(t.Name, () => s.Teacher(t.Name, t.BaseModel, TeacherMethod.Dpo));
        var study = Students(Studies.AcrossFamilies, "8. Across families",
            "Does a teacher of another architecture and tokenizer than the student teach as well? Labels pass between them as text.", seeds,
        [
            ("human_dpo", "SFT then DPO on the human labels", 4.63, s => s.HumanDpo()),
            ("weak_dpo", $"teacher of the student's family ({Describe(_pipeline.Teacher.BaseModel)})", 4.84, s => s.WeakDpo()),
            ("cross_family_dpo", $"teacher {t.Description} ({Describe(t.BaseModel)})", 4.91,
                s => s.GoldRewards("cross_family_dpo", () => s.Dpo($"teacher-{t.Name}", s.Data($"teacher-{t.Name}", labels(s))))),
        ]);
        study.Extra.Add(new StudyRow("cross_family/teacher_vs_human", "label agreement of the cross-family teacher with the human labels", null,
            seeds.Select(s => (double)labels(s).Zip(_human).Count(p => p.First == p.Second) / _human.Length).ToList(), null));
        study.PaperNote = $"paper: Llama-3-8B teacher -> OPT-1.3B student 4.91, OPT-125M teacher 4.84, human 4.63 (not on our scale); student here: {Describe(_pipeline.Student.BaseModel)}";
        Claim(study, "cross_family_dpo", "human_dpo", "cross-family weak-label student >= human-label student");
        Claim(study, "cross_family_dpo", "weak_dpo", "cross-family teacher >= same-family teacher");
        return study;
    }

    private static string Describe(string modelDir)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(modelDir, "config.json")));
            var root = doc.RootElement;
            string type = root.TryGetProperty("model_type", out var mt) ? mt.GetString() ?? "?" : "?";
            string tokenizer = File.Exists(Path.Combine(modelDir, HfTokenizer.SentencePieceFile)) ? "SentencePiece" : "byte-level BPE";
            string hidden = root.TryGetProperty("hidden_size", out var h) ? h.ToString() : "?";
            string layers = root.TryGetProperty("num_hidden_layers", out var l) ? l.ToString() : "?";
            return $"{type}, hidden {hidden}, {layers} layers, {tokenizer} tokenizer";
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
            return Path.GetFileName(modelDir);
        }
    }

    private StudyResult Iterated(IReadOnlyList<SeedRun> seeds)
    {
        var prompts = PromptFile.Read(_config.Iterated.Prompts);
        int need = _config.Iterated.Rounds * _config.Iterated.PromptsPerRound;
        if (prompts.Count < need)
            throw new InvalidDataException($"{_config.Iterated.Prompts}: {prompts.Count} prompts, the iterated study needs {need} (rounds x prompts_per_round)");
        var evalPrompts = PromptFile.Read(_pipeline.Data.EvalPrompts).ToHashSet();
        var rows = new List<(string, string, double?, Func<SeedRun, double[]>)>
        {
            ("round0", "the weak-label student of study 1 (SFT then DPO on the teacher's labels): where both chains start", null, s => s.WeakDpo()),
        };
        var agreementRows = new List<StudyRow>();
        var cache = new Dictionary<(long, string, int), (string Model, double Agreement)>();
        (string Model, double Agreement) Round(SeedRun s, string chain, int round)
        {
            if (cache.TryGetValue((s.Seed, chain, round), out var done)) return done;
            string previous = round == 1 ? Dpo(s) : Round(s, chain, round - 1).Model;
            var roundPrompts = prompts.Skip((round - 1) * _config.Iterated.PromptsPerRound).Take(_config.Iterated.PromptsPerRound).ToList();
            string dir = Path.Combine(s.RunDir, "iterated", chain, $"round-{round}");
            // round 1 starts both chains from the same student: one set of on-policy pairs, labelled two ways
            string pairsPath = OnPolicyPairs(s, previous, roundPrompts, round == 1 ? Path.Combine(s.RunDir, "iterated", "round-1-pairs") : dir);
            string data;
            double agreement = double.NaN;
            if (chain == "weak")
            {
                var labelled = s.LabelFile(s.PipelineTeacherDir(), pairsPath, Path.Combine(dir, "labels"), $"iterated round {round} labels");
                data = labelled.Artifacts["labelled"];
                // the pairs file carries the gold preference as its label: the stage's human agreement is agreement with gold
                agreement = labelled.Metrics.TryGetValue("teacher_vs_human", out var a) ? a : double.NaN;
            }
            else data = pairsPath;
            string model = s.Dpo($"iterated-{chain}", data, initModel: previous, folder: $"round-{round}");
            return cache[(s.Seed, chain, round)] = (model, agreement);
        }
        static string Dpo(SeedRun s) { s.WeakDpo(); return s.Dpo("weak", s.WeakData()); }
        for (int r = 1; r <= _config.Iterated.Rounds; r++)
        {
            int round = r;
            foreach (var chain in new[] { "weak", "gold" })
                rows.Add(($"{chain}_round{round}", $"round {round}: the previous round's student answers {_config.Iterated.PromptsPerRound} fresh prompts twice; "
                    + (chain == "weak" ? "the weak teacher" : "the gold preference") + " labels the pairs; DPO from (and against) the previous student",
                    null, s => s.GoldRewards($"iterated_{chain}_round{round}", () => Round(s, chain, round).Model)));
        }
        var study = Students(Studies.Iterated, "9. Iterated on-policy feedback (open in the paper)",
            "Does machine feedback drift over rounds of on-policy training, compared with gold feedback on the same prompts?", seeds, rows);
        for (int r = 1; r <= _config.Iterated.Rounds; r++)
        {
            int round = r;
            study.Extra.Add(new StudyRow($"weak_round{round}/teacher_vs_gold", $"agreement of the weak teacher's labels with the gold preference on round {round}'s on-policy pairs",
                null, seeds.Select(s => Round(s, "weak", round).Agreement).ToList(), null));
        }
        study.PaperNote = "open in the paper: no published values";
        int last = _config.Iterated.Rounds;
        Claim(study, $"weak_round{last}", $"gold_round{last}", $"after {last} rounds: weak feedback >= gold feedback");
        Claim(study, $"weak_round{last}", "round0", $"after {last} rounds of weak feedback the student improves on round 0");
        if (prompts.Any(evalPrompts.Contains))
            study.PaperNote += $"; warning: {prompts.Count(evalPrompts.Contains)} fresh prompts also appear in the evaluation set";
        return study;
    }

    /// <summary>Two sampled answers per prompt from the current student, scored by the gold scorer; identical answers and
    /// gold ties dropped. Written with the gold preference as the label.</summary>
    private string OnPolicyPairs(SeedRun s, string modelDir, IReadOnlyList<string> prompts, string dir)
    {
        string path = Path.Combine(dir, "pairs.jsonl");
        string marker = Path.Combine(dir, "pairs.source");
        string source = $"{modelDir}\n{s.Config.Evaluation.Seed}\n{string.Join('\n', prompts)}";
        if (File.Exists(path) && File.Exists(marker) && File.ReadAllText(marker) == source) return path;
        Directory.CreateDirectory(dir);
        var c = s.Config;
        var template = PromptTemplate.Get(c.Template);
        var rendered = prompts.Select(template.RenderText).ToList();
        var request = new EvaluateRequest
        {
            Models = new Dictionary<string, string>(), PromptsPath = "", Temperature = c.Evaluation.Temperature > 0 ? c.Evaluation.Temperature : 0.7,
            TopP = c.Evaluation.TopP, TopK = c.Evaluation.TopK, MaxNewTokens = c.Evaluation.MaxNewTokens, Seed = c.Evaluation.Seed,
        };
        IReadOnlyList<string> a, b;
        using (var model = Checkpoints.PretrainedModel.Load(modelDir, new Checkpoints.ModelLoadOptions { Device = _device }))
        {
            model.eval();
            var tokenizer = HfTokenizer.Load(modelDir);
            a = Generation.Generator.GenerateText(model, tokenizer, rendered, PipelineStages.SamplingOptions(request), c.Evaluation.BatchSize);
            b = Generation.Generator.GenerateText(model, tokenizer, rendered, PipelineStages.SamplingOptions(request with { Seed = request.Seed + 1 }), c.Evaluation.BatchSize);
        }
        using var gold = GoldScorers.Open(c.Evaluation.GoldScorer, _device, c.Template);
        var ga = gold.Scorer.ScoreBatch(prompts.Zip(a).ToList());
        var gb = gold.Scorer.ScoreBatch(prompts.Zip(b).ToList());
        var rows = Enumerable.Range(0, prompts.Count).Where(i => a[i] != b[i] && ga[i] != gb[i])
            .Select(i => new LabelledRow(new UnlabelledPair(null, prompts[i], a[i], b[i], ga[i] > gb[i] ? 0 : 1), ga[i] > gb[i] ? 0 : 1)).ToList();
        if (rows.Count < 2) throw new InvalidDataException($"{dir}: the student gave fewer than 2 distinct answer pairs for {prompts.Count} prompts");
        PreferenceDataWriter.WriteLabelled(path, rows, DataFormat.Unlabelled);
        File.WriteAllText(marker, source);
        return path;
    }
}
