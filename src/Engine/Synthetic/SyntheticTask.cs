using System.Text.Encodings.Web;
using System.Text.Json;

namespace WeakTeacher.Engine.Synthetic;

/// <summary>Sizes and seed of a generated synthetic task.</summary>
public sealed record SyntheticTaskOptions
{
    public int Seed { get; init; } = 1;
    /// <summary>|D_l|: human-labelled (prompt, chosen, rejected) triplets for the weak teacher.</summary>
    public int LabelledPairs { get; init; } = 512;
    /// <summary>|D_u|: pairs the teacher labels; their human labels are kept aside for agreement and the baseline.</summary>
    public int UnlabelledPairs { get; init; } = 2048;
    /// <summary>Held-out prompts the aligned students answer at evaluation (none appears in D_l or D_u).</summary>
    public int EvalPrompts { get; init; } = 128;
    /// <summary>Documents ("Question: ...\n\nAnswer: ...") of mixed quality the base models are pretrained on.</summary>
    public int PretrainCorpusSize { get; init; } = 6000;
    /// <summary>Bradley-Terry temperature of the simulated annotators; null = the calibrated <see cref="SyntheticTask.DefaultHumanTemperature"/>.</summary>
    public double? HumanTemperature { get; init; }

    internal void Validate()
    {
        if (LabelledPairs < 0) throw new ArgumentOutOfRangeException(nameof(LabelledPairs), LabelledPairs, "must be >= 0");
        if (UnlabelledPairs < 0) throw new ArgumentOutOfRangeException(nameof(UnlabelledPairs), UnlabelledPairs, "must be >= 0");
        if (EvalPrompts < 0) throw new ArgumentOutOfRangeException(nameof(EvalPrompts), EvalPrompts, "must be >= 0");
        if (PretrainCorpusSize < 0) throw new ArgumentOutOfRangeException(nameof(PretrainCorpusSize), PretrainCorpusSize, "must be >= 0");
        if (HumanTemperature is { } t && !(t > 0 && double.IsFinite(t)))
            throw new ArgumentOutOfRangeException(nameof(HumanTemperature), t, "must be a positive finite number");
    }
}

/// <summary>A human-labelled triplet of D_l, with the gold rewards of both responses.</summary>
public sealed record LabelledPreference(string Prompt, string Chosen, string Rejected, double GoldChosen, double GoldRejected);

/// <summary>
/// A pair of D_u. <see cref="HumanLabel"/> is hidden from the teacher (0 = A preferred, 1 = B preferred);
/// <see cref="GoldLabel"/> is the gold reward's preference (never a tie: pairs are generated with distinct rewards).
/// </summary>
public sealed record UnlabelledPreference(string Prompt, string ResponseA, string ResponseB, int HumanLabel, double GoldA, double GoldB)
{
    public int GoldLabel => GoldA >= GoldB ? 0 : 1;
}

/// <summary>
/// The embedded default task: a seeded synthetic preference data set that behaves like real preference data
/// (several request kinds; response pairs differing in correctness, following the request, politeness, needless
/// length and malformed text; noisy "human" labels from a Bradley-Terry model over a gold reward that agree with
/// the gold preference on about 70% of pairs).
/// </summary>
public sealed class SyntheticTask
{
    /// <summary>Fraction of pairs on which the simulated annotators should agree with the gold preference.</summary>
    public const double TargetHumanGoldAgreement = 0.70;

    /// <summary>Prompt format of the paper's official code, used for the pretraining corpus.</summary>
    public const string DocumentFormat = "Question: {0}\n\nAnswer: {1}";

    /// <summary>
    /// The Bradley-Terry temperature T of the simulated annotators (P(A preferred) = sigmoid((gA - gB) / T)) that
    /// gives 70% expected agreement with the gold preference. Found by <see cref="CalibrateHumanTemperature"/>
    /// (2.7408 on its default 8000 pairs) and fixed here so a run does not pay for the search; a test re-runs the
    /// search and fails if the generator or the gold reward change enough to move it.
    /// </summary>
    public const double DefaultHumanTemperature = 2.74;

    /// <summary>Seed of the calibration sample, apart from every task seed.</summary>
    public const int CalibrationSeed = 20240913;
    private const double MinGoldGap = 0.1;
    private const double WideGoldGap = 4.0;
    private const double WideGapKeepProbability = 0.35;

    public SyntheticTaskOptions Options { get; }
    public double HumanTemperature { get; }
    public IReadOnlyList<LabelledPreference> Labelled { get; }
    public IReadOnlyList<UnlabelledPreference> Unlabelled { get; }
    public IReadOnlyList<string> EvalPrompts { get; }
    /// <summary>Pretraining documents in <see cref="DocumentFormat"/>.</summary>
    public IReadOnlyList<string> PretrainCorpus { get; }
    public GoldReward Gold { get; } = new();

    private SyntheticTask(SyntheticTaskOptions options, double temperature, List<LabelledPreference> labelled,
        List<UnlabelledPreference> unlabelled, List<string> evalPrompts, List<string> corpus)
    {
        Options = options;
        HumanTemperature = temperature;
        Labelled = labelled;
        Unlabelled = unlabelled;
        EvalPrompts = evalPrompts;
        PretrainCorpus = corpus;
    }

    /// <summary>Fraction of D_l pairs whose human-chosen response has the higher gold reward.</summary>
    public double LabelledHumanGoldAgreement =>
        Labelled.Count == 0 ? double.NaN : Labelled.Count(p => p.GoldChosen > p.GoldRejected) / (double)Labelled.Count;

    /// <summary>Fraction of D_u pairs whose hidden human label equals the gold label.</summary>
    public double UnlabelledHumanGoldAgreement =>
        Unlabelled.Count == 0 ? double.NaN : Unlabelled.Count(p => p.HumanLabel == p.GoldLabel) / (double)Unlabelled.Count;

    /// <summary>Generates the task; the same options give the same task, byte for byte once saved.</summary>
    public static SyntheticTask Generate(SyntheticTaskOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        double temperature = options.HumanTemperature ?? DefaultHumanTemperature;
        var gold = new GoldReward();
        ulong seed = unchecked((ulong)options.Seed);

        // Separate streams: changing one set's size or the temperature leaves the other sets' texts unchanged.
        var pairRng = new SyntheticRandom(seed, stream: 1);
        var labelRng = new SyntheticRandom(seed, stream: 2);
        var labelled = new List<LabelledPreference>(options.LabelledPairs);
        var promptsSeen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < options.LabelledPairs; i++)
        {
            var pair = GeneratePair(pairRng, gold);
            promptsSeen.Add(pair.Prompt);
            bool aPreferred = labelRng.NextDouble() < Sigmoid((pair.GoldA - pair.GoldB) / temperature);
            labelled.Add(aPreferred
                ? new LabelledPreference(pair.Prompt, pair.ResponseA, pair.ResponseB, pair.GoldA, pair.GoldB)
                : new LabelledPreference(pair.Prompt, pair.ResponseB, pair.ResponseA, pair.GoldB, pair.GoldA));
        }

        var unlabelledPairRng = new SyntheticRandom(seed, stream: 3);
        var unlabelledLabelRng = new SyntheticRandom(seed, stream: 4);
        var unlabelled = new List<UnlabelledPreference>(options.UnlabelledPairs);
        for (int i = 0; i < options.UnlabelledPairs; i++)
        {
            var pair = GeneratePair(unlabelledPairRng, gold);
            promptsSeen.Add(pair.Prompt);
            bool aPreferred = unlabelledLabelRng.NextDouble() < Sigmoid((pair.GoldA - pair.GoldB) / temperature);
            unlabelled.Add(new UnlabelledPreference(pair.Prompt, pair.ResponseA, pair.ResponseB, aPreferred ? 0 : 1, pair.GoldA, pair.GoldB));
        }

        var evalRng = new SyntheticRandom(seed, stream: 5);
        var evalPrompts = new List<string>(options.EvalPrompts);
        var evalSeen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < options.EvalPrompts; i++)
        {
            // Held out: not a training prompt and not repeated; the prompt space is large, so a few tries suffice.
            string text = SyntheticPrompt.Sample(evalRng).Text;
            for (int attempt = 0; attempt < 200 && (promptsSeen.Contains(text) || evalSeen.Contains(text)); attempt++)
                text = SyntheticPrompt.Sample(evalRng).Text;
            evalSeen.Add(text);
            evalPrompts.Add(text);
        }

        var corpusRng = new SyntheticRandom(seed, stream: 6);
        var corpus = new List<string>(options.PretrainCorpusSize);
        for (int i = 0; i < options.PretrainCorpusSize; i++)
        {
            var prompt = SyntheticPrompt.Sample(corpusRng);
            // Mixed quality: base models learn the language and the answers' forms, not which answer is preferred.
            var aspects = ResponseAspects.Sample(corpusRng, pCorrect: 0.5, pFollows: 0.75, pMalformed: 0.04);
            corpus.Add(FormatDocument(prompt.Text, ResponseGenerator.Generate(prompt, aspects, corpusRng)));
        }

        return new SyntheticTask(options, temperature, labelled, unlabelled, evalPrompts, corpus);
    }

    /// <summary>"Question: {prompt}\n\nAnswer: {response}".</summary>
    public static string FormatDocument(string prompt, string response) => string.Format(DocumentFormat, prompt, response);

    /// <summary>
    /// Smallest-to-largest search (bisection) for the temperature T at which the expected agreement of
    /// Bradley-Terry labels with the gold preference, mean over pairs of sigmoid(|gap| / T), equals <paramref name="target"/>.
    /// </summary>
    public static double CalibrateTemperature(IReadOnlyList<double> goldGaps, double target = TargetHumanGoldAgreement)
    {
        ArgumentNullException.ThrowIfNull(goldGaps);
        if (goldGaps.Count == 0) throw new ArgumentException("needs at least one gold gap", nameof(goldGaps));
        if (!(target > 0.5 && target < 1.0)) throw new ArgumentOutOfRangeException(nameof(target), target, "must be in (0.5, 1)");
        double lo = 1e-4, hi = 1e4;   // agreement falls from ~1 to ~0.5 as T grows
        for (int it = 0; it < 200; it++)
        {
            double mid = Math.Sqrt(lo * hi);
            if (ExpectedAgreement(goldGaps, mid) > target) lo = mid; else hi = mid;
        }
        return Math.Sqrt(lo * hi);
    }

    /// <summary>Mean over pairs of sigmoid(|gap| / T): the expected fraction of labels that agree with gold.</summary>
    public static double ExpectedAgreement(IReadOnlyList<double> goldGaps, double temperature)
    {
        double sum = 0;
        foreach (var g in goldGaps) sum += Sigmoid(Math.Abs(g) / temperature);
        return sum / goldGaps.Count;
    }

    /// <summary>
    /// Generates <paramref name="pairs"/> pairs exactly as the task does (from <paramref name="seed"/>'s own stream)
    /// and searches the temperature at which human labels agree with gold on <paramref name="target"/> of them in expectation.
    /// </summary>
    public static double CalibrateHumanTemperature(int pairs = 8000, int seed = CalibrationSeed, double target = TargetHumanGoldAgreement)
    {
        if (pairs <= 0) throw new ArgumentOutOfRangeException(nameof(pairs), pairs, "must be positive");
        var rng = new SyntheticRandom(unchecked((ulong)seed), stream: 99);
        var gold = new GoldReward();
        var gaps = new double[pairs];
        for (int i = 0; i < gaps.Length; i++)
        {
            var pair = GeneratePair(rng, gold);
            gaps[i] = pair.GoldA - pair.GoldB;
        }
        return CalibrateTemperature(gaps, target);
    }

    internal static double Sigmoid(double x) => x >= 0 ? 1.0 / (1.0 + Math.Exp(-x)) : Math.Exp(x) / (1.0 + Math.Exp(x));

    internal readonly record struct GeneratedPair(string Prompt, string ResponseA, string ResponseB, double GoldA, double GoldB);

    /// <summary>
    /// One pair for a prompt: two responses that differ in one or two aspects (sometimes all), as two samples
    /// of one policy do, with distinct gold rewards; the order of the two is random.
    /// </summary>
    internal static GeneratedPair GeneratePair(SyntheticRandom rng, GoldReward gold)
    {
        var prompt = SyntheticPrompt.Sample(rng);
        var first = ResponseAspects.Sample(rng);
        for (int attempt = 0; ; attempt++)
        {
            double u = rng.NextDouble();
            var second = u < 0.7 ? first.Perturb(rng, 1) : u < 0.95 ? first.Perturb(rng, 2) : ResponseAspects.Sample(rng);
            string a = ResponseGenerator.Generate(prompt, first, rng);
            string b = ResponseGenerator.Generate(prompt, second, rng);
            double ga = gold.Score(prompt.Text, a), gb = gold.Score(prompt.Text, b);
            // Hard pairs: like curated preference data, mostly moderate gold gaps; wide gaps are thinned out.
            if (Math.Abs(ga - gb) > WideGoldGap && attempt < 50 && !rng.Chance(WideGapKeepProbability)) continue;
            if ((Math.Abs(ga - gb) >= MinGoldGap && a != b) || attempt >= 50)
            {
                if (Math.Abs(ga - gb) < MinGoldGap)
                    throw new InvalidOperationException($"could not generate a pair with distinct gold rewards for prompt '{prompt.Text}'");
                return rng.Chance(0.5) ? new GeneratedPair(prompt.Text, a, b, ga, gb) : new GeneratedPair(prompt.Text, b, a, gb, ga);
            }
        }
    }

    // ---- files ----------------------------------------------------------------------------------------

    public const string LabelledFile = "labelled.jsonl";
    public const string UnlabelledFile = "unlabelled.jsonl";
    public const string UnlabelledGoldFile = "unlabelled_gold.jsonl";
    public const string EvalPromptsFile = "eval_prompts.jsonl";
    public const string PretrainFile = "pretrain.jsonl";
    public const string MetadataFile = "task.json";

    private static readonly JsonWriterOptions WriterOptions = new()
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        Indented = false,
    };

    /// <summary>
    /// Writes the task as JSONL: labelled.jsonl {prompt, chosen, rejected}; unlabelled.jsonl {prompt, response_a,
    /// response_b, label} (label 0 = A preferred by the hidden human label); unlabelled_gold.jsonl {gold_a, gold_b,
    /// gold_label, human_label} line-aligned with unlabelled.jsonl; eval_prompts.jsonl {prompt}; pretrain.jsonl
    /// {text}; task.json (sizes, seed, temperature, agreement). Prompts are raw questions; templating is the
    /// pipeline's. Returns the written paths.
    /// </summary>
    public IReadOnlyList<string> Save(string dir)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(dir);
        Directory.CreateDirectory(dir);
        var written = new List<string>
        {
            WriteJsonl(Path.Combine(dir, LabelledFile), Labelled, (w, p) =>
            {
                w.WriteString("prompt", p.Prompt);
                w.WriteString("chosen", p.Chosen);
                w.WriteString("rejected", p.Rejected);
            }),
            WriteJsonl(Path.Combine(dir, UnlabelledFile), Unlabelled, (w, p) =>
            {
                w.WriteString("prompt", p.Prompt);
                w.WriteString("response_a", p.ResponseA);
                w.WriteString("response_b", p.ResponseB);
                w.WriteNumber("label", p.HumanLabel);
            }),
            WriteJsonl(Path.Combine(dir, UnlabelledGoldFile), Unlabelled, (w, p) =>
            {
                w.WriteNumber("gold_a", Math.Round(p.GoldA, 6));
                w.WriteNumber("gold_b", Math.Round(p.GoldB, 6));
                w.WriteNumber("gold_label", p.GoldLabel);
                w.WriteNumber("human_label", p.HumanLabel);
            }),
            WriteJsonl(Path.Combine(dir, EvalPromptsFile), EvalPrompts, (w, p) => w.WriteString("prompt", p)),
            WriteJsonl(Path.Combine(dir, PretrainFile), PretrainCorpus, (w, t) => w.WriteString("text", t)),
        };

        string metaPath = Path.Combine(dir, MetadataFile);
        using (var stream = new MemoryStream())
        {
            using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                w.WriteStartObject();
                w.WriteString("task", "weak-teacher synthetic preference task");
                w.WriteNumber("seed", Options.Seed);
                w.WriteNumber("human_temperature", HumanTemperature);
                w.WriteNumber("target_human_gold_agreement", TargetHumanGoldAgreement);
                WriteNumberOrNull(w, "labelled_human_gold_agreement", LabelledHumanGoldAgreement);
                WriteNumberOrNull(w, "unlabelled_human_gold_agreement", UnlabelledHumanGoldAgreement);
                w.WriteString("document_format", DocumentFormat);
                w.WriteString("gold_reward", Gold.Name);
                w.WriteStartObject("counts");
                w.WriteNumber("labelled", Labelled.Count);
                w.WriteNumber("unlabelled", Unlabelled.Count);
                w.WriteNumber("eval_prompts", EvalPrompts.Count);
                w.WriteNumber("pretrain", PretrainCorpus.Count);
                w.WriteEndObject();
                w.WriteStartObject("files");
                w.WriteString("labelled", LabelledFile);
                w.WriteString("unlabelled", UnlabelledFile);
                w.WriteString("unlabelled_gold", UnlabelledGoldFile);
                w.WriteString("eval_prompts", EvalPromptsFile);
                w.WriteString("pretrain", PretrainFile);
                w.WriteEndObject();
                w.WriteEndObject();
            }
            stream.WriteByte((byte)'\n');
            File.WriteAllBytes(metaPath, stream.ToArray());
        }
        written.Add(metaPath);
        return written;
    }

    private static void WriteNumberOrNull(Utf8JsonWriter w, string name, double value)
    {
        if (double.IsFinite(value)) w.WriteNumber(name, value); else w.WriteNull(name);
    }

    private static string WriteJsonl<T>(string path, IEnumerable<T> rows, Action<Utf8JsonWriter, T> writeFields)
    {
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        using var buffer = new MemoryStream();
        foreach (var row in rows)
        {
            buffer.SetLength(0);
            using (var w = new Utf8JsonWriter(buffer, WriterOptions))
            {
                w.WriteStartObject();
                writeFields(w, row);
                w.WriteEndObject();
            }
            buffer.WriteByte((byte)'\n');
            file.Write(buffer.GetBuffer(), 0, (int)buffer.Length);
        }
        return path;
    }
}
