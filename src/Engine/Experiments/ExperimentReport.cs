using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using WeakTeacher.Engine.Pipeline;

namespace WeakTeacher.Engine.Experiments;

/// <summary>One row of a study: a value per seed (and, for students, the per-prompt gold rewards behind it).</summary>
public sealed record StudyRow(string Name, string Definition, double? Paper, IReadOnlyList<double> PerSeed,
    IReadOnlyList<IReadOnlyList<double>>? PerPrompt)
{
    public Interval Value => SeedStatistics.MeanInterval(PerSeed);
}

/// <summary>A PNG of a study (file name relative to the report) with its caption.</summary>
public sealed record StudyPlot(string File, string Caption);

/// <summary>One student's training loss per logged step in one seed.</summary>
public sealed record LossCurve(string Row, string Stage, long Seed, IReadOnlyList<(int Step, double Loss)> Points);

/// <summary>A study's rows, claims and plots.</summary>
public sealed class StudyResult
{
    public const string GoldReward = "gold reward", Fraction = "fraction";

    public required string Name { get; init; }
    public required string Title { get; init; }
    public required string Question { get; init; }
    /// <summary>What the rows measure: <see cref="GoldReward"/> for students, <see cref="Fraction"/> for rates.</summary>
    public string ValueKind { get; init; } = GoldReward;
    public List<StudyRow> Rows { get; } = [];
    /// <summary>Rows shown in a second table and panel (e.g. each teacher's label agreement).</summary>
    public List<StudyRow> Extra { get; } = [];
    public string ExtraKind { get; init; } = Fraction;
    public string ExtraTitle { get; init; } = "label agreement of the teachers behind the rows";
    public List<Verdict> Verdicts { get; } = [];
    public string PaperNote { get; set; } = "";
    public double Seconds { get; set; }
    public List<StudyPlot> Plots { get; } = [];
    public List<LossCurve> Losses { get; } = [];

    public StudyRow Row(string name) => Rows.Concat(Extra).FirstOrDefault(r => r.Name == name)
        ?? throw new KeyNotFoundException($"study {Name} has no row '{name}'");
}

/// <summary>The experiments' report: report.md (every plot linked, every row defined, settings and seeds listed) and
/// report.json with the same numbers.</summary>
public sealed class ExperimentReport
{
    public List<long> Seeds { get; init; } = [];
    public required ExperimentConfig Config { get; init; }
    public required PipelineConfig Pipeline { get; init; }
    public int UnlabelledPairs { get; init; }
    public int EvalPrompts { get; init; }
    public List<StudyResult> Studies { get; } = [];
    public double TotalSeconds { get; set; }

    private static string F(double v, string f = "F2") => double.IsFinite(v) ? v.ToString(f, CultureInfo.InvariantCulture) : "n/a";

    public void Save(string dir)
    {
        foreach (var study in Studies) ExperimentPlots.Save(study, dir, Seeds.Count);
        AtomicFile.WriteAllText(Path.Combine(dir, "report.md"), ToMarkdown());
        AtomicFile.WriteAllText(Path.Combine(dir, "report.json"), ToJson());
    }

    public IEnumerable<string> VerdictLines() => Studies.SelectMany(s => s.Verdicts.Select(v => $"[{s.Name}] {v.Line}"));

    public string ToMarkdown()
    {
        var sb = new StringBuilder();
        sb.AppendLine("# Weak teacher -> strong student: the paper's studies over seeds").AppendLine();
        sb.AppendLine($"Seeds: {string.Join(", ", Seeds)} ({Seeds.Count}). Unlabelled pairs: {UnlabelledPairs}; held-out prompts: {EvalPrompts}; "
            + $"gold scorer: {Pipeline.Evaluation.GoldScorer}. Total time: {F(TotalSeconds, "F0")} s.").AppendLine();
        sb.AppendLine("## How to read this report").AppendLine();
        sb.AppendLine("- Every value is measured once per seed (the seed sets every training, LoRA-initialisation, shuffling and sampling seed; "
            + "data and base models are the same for all seeds) and shown as the mean over seeds with its 95% confidence interval "
            + "from the t-distribution with (seeds - 1) degrees of freedom: `mean [low, high]`.");
        sb.AppendLine("- A student's value is the mean gold reward of its answers to the held-out prompts.");
        sb.AppendLine("- A claim \"A >= B\" compares two students by the paired per-prompt difference of their gold rewards (same prompt, same seed), "
            + "pooled over seeds (n = seeds x prompts, treated as independent), with its 95% t-interval. It is *supported at 95%* when the whole "
            + "interval lies above 0, and *not supported* otherwise (the verdict says whether the interval contains 0 or lies below it).");
        sb.AppendLine("- The paper's values are for OPT models on HH-RLHF scored by the paper's gold reward model: a different scale; compare directions and orderings, not levels.");
        sb.AppendLine();
        sb.AppendLine("## Verdicts").AppendLine();
        foreach (var line in VerdictLines()) sb.AppendLine($"- {line}");
        sb.AppendLine();
        foreach (var study in Studies)
        {
            sb.AppendLine($"## {study.Title}").AppendLine();
            sb.AppendLine(study.Question).AppendLine();
            AppendTable(sb, study.Rows, study.ValueKind);
            if (study.Extra.Count > 0) sb.AppendLine($"{char.ToUpperInvariant(study.ExtraTitle[0])}{study.ExtraTitle[1..]}:").AppendLine();
            if (study.Extra.Count > 0) AppendTable(sb, study.Extra, study.ExtraKind);
            if (study.PaperNote.Length > 0) sb.AppendLine($"Paper column: {study.PaperNote}.").AppendLine();
            foreach (var v in study.Verdicts) sb.AppendLine($"- {v.Line}");
            sb.AppendLine();
            foreach (var plot in study.Plots)
                sb.AppendLine($"[![{study.Title}]({plot.File})]({plot.File})").AppendLine().AppendLine($"*{plot.Caption}*").AppendLine();
            sb.AppendLine($"Time of this study in this invocation: {F(study.Seconds, "F0")} s (stages an earlier study made are reused).").AppendLine();
        }
        sb.AppendLine("## Settings").AppendLine();
        sb.AppendLine("Experiment config (`experiments-config.json`):").AppendLine().AppendLine("```json").AppendLine(Config.ToJson()).AppendLine("```").AppendLine();
        sb.AppendLine("Pipeline config every study starts from (`pipeline-config.json`; per seed s the trainers' seeds are 1000 s + 1..6):")
            .AppendLine().AppendLine("```json").AppendLine(Pipeline.ToJson()).AppendLine("```");
        return sb.ToString();
    }

    private void AppendTable(StringBuilder sb, IReadOnlyList<StudyRow> rows, string kind)
    {
        sb.AppendLine($"| row | {kind}, mean [95% CI] | per seed ({string.Join(", ", Seeds)}) | paper | definition |");
        sb.AppendLine("|---|---|---|---|---|");
        foreach (var r in rows)
            sb.AppendLine($"| `{r.Name}` | {r.Value.Format()} | {string.Join(", ", r.PerSeed.Select(v => F(v)))} | {(r.Paper is { } p ? F(p) : "-")} | {r.Definition} |");
        sb.AppendLine();
    }

    public string ToJson()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteStartArray("seeds");
            foreach (var s in Seeds) w.WriteNumberValue(s);
            w.WriteEndArray();
            w.WriteNumber("unlabelled_pairs", UnlabelledPairs);
            w.WriteNumber("eval_prompts", EvalPrompts);
            w.WriteString("gold_scorer", Pipeline.Evaluation.GoldScorer);
            w.WriteNumber("total_seconds", Math.Round(TotalSeconds, 1));
            w.WriteStartObject("studies");
            foreach (var study in Studies)
            {
                w.WriteStartObject(study.Name);
                w.WriteString("title", study.Title);
                w.WriteString("question", study.Question);
                w.WriteString("value", study.ValueKind);
                w.WriteString("extra_value", study.ExtraKind);
                w.WriteString("paper_note", study.PaperNote);
                w.WriteNumber("seconds", Math.Round(study.Seconds, 1));
                w.WriteStartArray("plots");
                foreach (var plot in study.Plots)
                {
                    w.WriteStartObject();
                    w.WriteString("file", plot.File);
                    w.WriteString("caption", plot.Caption);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                WriteRows(w, "rows", study.Rows);
                WriteRows(w, "extra", study.Extra);
                w.WriteStartArray("verdicts");
                foreach (var v in study.Verdicts)
                {
                    w.WriteStartObject();
                    w.WriteString("claim", v.Claim);
                    w.WriteString("outcome", v.Outcome.ToString().ToLowerInvariant());
                    WriteInterval(w, "difference", v.Difference);
                    w.WriteString("basis", v.Basis);
                    w.WriteString("line", v.Line);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray()) + "\n";
    }

    private static void WriteRows(Utf8JsonWriter w, string name, IReadOnlyList<StudyRow> rows)
    {
        w.WriteStartObject(name);
        foreach (var r in rows)
        {
            w.WriteStartObject(r.Name);
            w.WriteString("definition", r.Definition);
            WriteInterval(w, "value", r.Value);
            w.WriteStartArray("per_seed");
            foreach (var v in r.PerSeed) Number(w, v);
            w.WriteEndArray();
            if (r.Paper is { } p) w.WriteNumber("paper", p); else w.WriteNull("paper");
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    private static void WriteInterval(Utf8JsonWriter w, string name, Interval i)
    {
        w.WriteStartObject(name);
        w.WritePropertyName("mean"); Number(w, i.Mean);
        w.WritePropertyName("ci95_low"); Number(w, i.Low);
        w.WritePropertyName("ci95_high"); Number(w, i.High);
        w.WriteNumber("n", i.Count);
        w.WriteEndObject();
    }

    private static void Number(Utf8JsonWriter w, double v)
    {
        if (double.IsFinite(v)) w.WriteNumberValue(Math.Round(v, 6)); else w.WriteNullValue();
    }
}
