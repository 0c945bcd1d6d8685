using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace WeakTeacher.Engine.Evaluation;

/// <summary>A training metric over steps for one run (for example run "weak_dpo", metric "rewards/accuracies").</summary>
public sealed record TrainingCurve(string Run, string Metric, IReadOnlyList<(int Step, double Value)> Points);

/// <summary>Wall-clock seconds of one pipeline stage.</summary>
public sealed record StageTiming(string Stage, double Seconds);

/// <summary>
/// Everything a run reports: label agreement, the paper's Table 2, the students' gold reward and win rates, and
/// timings; written as JSON (report.json), Markdown (report.md), plain-text tables and PNG plots. Parts not
/// measured stay null and are written as null, so the JSON keeps its shape.
/// </summary>
public sealed class EvaluationReport
{
    public string Title { get; set; } = "Weak-teacher alignment report";
    /// <summary>Name of the gold scorer used for every gold number in the report.</summary>
    public string? GoldScorer { get; set; }
    public LabelAgreement? Labels { get; set; }
    public GoldGapTable? GoldGap { get; set; }
    /// <summary>Students in display order; the paper's are named <see cref="StudentScores.Sft"/>, <see cref="StudentScores.HumanDpo"/>, <see cref="StudentScores.WeakDpo"/>.</summary>
    public List<StudentScore> Students { get; } = [];
    public List<WinRateEntry> WinRates { get; } = [];
    public List<StageTiming> Stages { get; } = [];
    /// <summary>Total wall-clock seconds of the run (not necessarily the sum of <see cref="Stages"/>).</summary>
    public double TotalSeconds { get; set; }
    public List<TrainingCurve> Curves { get; } = [];
    /// <summary>Free-form facts about the run (device, models, seed, data sizes), written as strings.</summary>
    public SortedDictionary<string, string> Info { get; } = new(StringComparer.Ordinal);

    private static readonly string[] CanonicalStudents = [StudentScores.Sft, StudentScores.HumanDpo, StudentScores.WeakDpo];

    public StudentScore? Student(string name) => Students.FirstOrDefault(s => s.Name == name);

    // ---- JSON -------------------------------------------------------------------------------------------

    /// <summary>
    /// {"labels": {"teacher_vs_human", "teacher_vs_gold", "human_vs_gold", "counts"}, "gold_gap": {"human": {"chosen",
    /// "rejected", "gap", "count"}, "weak", "agree", "disagree_weak", "disagree_human", "teacher_better_in_disagreeing"},
    /// "students": {name: {"gold_reward", "stderr", "count"}}, "win_rates": {"a_vs_b": {...}}, "seconds": {"total",
    /// "stages"}, ...}. NaN and missing values are null.
    /// </summary>
    public string ToJson()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteString("title", Title);
            if (GoldScorer is null) w.WriteNull("gold_scorer"); else w.WriteString("gold_scorer", GoldScorer);

            w.WriteStartObject("labels");
            Number(w, "teacher_vs_human", Labels?.TeacherVsHuman.Rate);
            Number(w, "teacher_vs_gold", Labels?.TeacherVsGold.Rate);
            Number(w, "human_vs_gold", Labels?.HumanVsGold.Rate);
            if (Labels is not null)
            {
                w.WriteStartObject("counts");
                foreach (var (key, count) in new[] { ("teacher_vs_human", Labels.TeacherVsHuman), ("teacher_vs_gold", Labels.TeacherVsGold), ("human_vs_gold", Labels.HumanVsGold) })
                {
                    w.WriteStartObject(key);
                    w.WriteNumber("agree", count.Agree);
                    w.WriteNumber("total", count.Total);
                    w.WriteEndObject();
                }
                w.WriteEndObject();
            }
            w.WriteEndObject();

            w.WriteStartObject("gold_gap");
            GapRow(w, "human", GoldGap?.Human);
            GapRow(w, "weak", GoldGap?.Weak);
            if (GoldGap is not null)
            {
                GapRow(w, "agree", GoldGap.Agreeing);
                GapRow(w, "disagree_weak", GoldGap.DisagreeingWeak);
                GapRow(w, "disagree_human", GoldGap.DisagreeingHuman);
                Number(w, "teacher_better_in_disagreeing", GoldGap.TeacherBetterInDisagreeing);
            }
            w.WriteEndObject();

            w.WriteStartObject("students");
            foreach (var name in CanonicalStudents.Concat(Students.Select(s => s.Name).Where(n => !CanonicalStudents.Contains(n))))
            {
                var s = Student(name);
                w.WriteStartObject(name);
                Number(w, "gold_reward", s?.Mean);
                Number(w, "stderr", s?.StdErr);
                w.WriteNumber("count", s?.Count ?? 0);
                w.WriteEndObject();
            }
            w.WriteEndObject();

            w.WriteStartObject("win_rates");
            foreach (var e in WinRates)
            {
                w.WriteStartObject($"{e.Student}_vs_{e.Opponent}");
                Number(w, "rate", e.Result.Rate);
                Number(w, "stderr", e.Result.StdErr);
                w.WriteNumber("wins", e.Result.Wins);
                w.WriteNumber("ties", e.Result.Ties);
                w.WriteNumber("losses", e.Result.Losses);
                w.WriteEndObject();
            }
            w.WriteEndObject();

            w.WriteStartObject("seconds");
            Number(w, "total", TotalSeconds);
            w.WriteStartObject("stages");
            foreach (var s in Stages) Number(w, s.Stage, s.Seconds);
            w.WriteEndObject();
            w.WriteEndObject();

            w.WriteStartObject("info");
            foreach (var (k, v) in Info) w.WriteString(k, v);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray()) + "\n";
    }

    private static void Number(Utf8JsonWriter w, string name, double? value)
    {
        if (value is { } v && double.IsFinite(v)) w.WriteNumber(name, Math.Round(v, 6));
        else w.WriteNull(name);
    }

    private static void GapRow(Utf8JsonWriter w, string name, GoldGapRow? row)
    {
        w.WriteStartObject(name);
        Number(w, "chosen", row?.Chosen);
        Number(w, "rejected", row?.Rejected);
        Number(w, "gap", row?.Gap);
        w.WriteNumber("count", row?.Count ?? 0);
        w.WriteEndObject();
    }

    // ---- tables -----------------------------------------------------------------------------------------

    /// <summary>A titled table: header row and body rows of cells.</summary>
    /// <summary>One of the report's tables as text cells (the first column is a row label, the others values), for a front end to render.</summary>
    public sealed record Table(string Title, string[] Header, List<string[]> Rows, string? Note = null);

    private static string F(double v, int digits = 2) => double.IsFinite(v) ? v.ToString("F" + digits, CultureInfo.InvariantCulture) : "-";
    private static string Pct(double v) => double.IsFinite(v) ? (100 * v).ToString("F1", CultureInfo.InvariantCulture) + "%" : "-";

    private static string RowLabel(string source) => source switch
    {
        "human" => "human labels",
        "weak" => "weak labels",
        "agree" => "agreeing subset",
        "disagree_weak" => "disagreeing subset, weak labels",
        "disagree_human" => "disagreeing subset, human labels",
        _ => source,
    };

    /// <summary>The paper-style tables of this report, in the order report.md shows them.</summary>
    public List<Table> Tables()
    {
        var tables = new List<Table>();
        if (Labels is not null)
        {
            tables.Add(new Table("Label agreement on the unlabelled set", ["comparison", "agreement", "agree / total"],
            [
                ["teacher vs human", Pct(Labels.TeacherVsHuman.Rate), $"{Labels.TeacherVsHuman.Agree} / {Labels.TeacherVsHuman.Total}"],
                ["teacher vs gold", Pct(Labels.TeacherVsGold.Rate), $"{Labels.TeacherVsGold.Agree} / {Labels.TeacherVsGold.Total}"],
                ["human vs gold", Pct(Labels.HumanVsGold.Rate), $"{Labels.HumanVsGold.Agree} / {Labels.HumanVsGold.Total}"],
            ]));
        }
        if (GoldGap is not null)
        {
            tables.Add(new Table("Gold reward of chosen and rejected responses (paper Table 2)", ["labels", "pairs", "chosen", "rejected", "gap"],
                GoldGap.Rows.Select(r => new[] { RowLabel(r.Source), r.Count.ToString(CultureInfo.InvariantCulture), F(r.Chosen), F(r.Rejected), F(r.Gap) }).ToList(),
                $"In the disagreeing subset the teacher's choice has the higher gold reward in {Pct(GoldGap.TeacherBetterInDisagreeing)} of pairs."));
        }
        if (Students.Count > 0)
        {
            tables.Add(new Table("Students: gold reward on held-out prompts", ["student", "gold reward", "stderr", "prompts"],
                Students.Select(s => new[] { s.Name, F(s.Mean), F(s.StdErr), s.Count.ToString(CultureInfo.InvariantCulture) }).ToList()));
        }
        if (WinRates.Count > 0)
        {
            tables.Add(new Table("Win rate by gold reward, per prompt (ties count half)", ["student", "over", "win rate", "wins", "ties", "losses"],
                WinRates.Select(e => new[]
                {
                    e.Student, e.Opponent, Pct(e.Result.Rate), e.Result.Wins.ToString(CultureInfo.InvariantCulture),
                    e.Result.Ties.ToString(CultureInfo.InvariantCulture), e.Result.Losses.ToString(CultureInfo.InvariantCulture),
                }).ToList()));
        }
        var timing = Stages.Select(s => new[] { s.Stage, F(s.Seconds, 1) }).ToList();
        timing.Add(["total", F(TotalSeconds, 1)]);
        tables.Add(new Table("Timings", ["stage", "seconds"], timing));
        return tables;
    }

    /// <summary>Markdown report with paper-style tables.</summary>
    public string ToMarkdown()
    {
        var sb = new StringBuilder();
        sb.Append("# ").Append(Title).Append("\n\n");
        if (GoldScorer is not null) sb.Append("Gold scorer: `").Append(GoldScorer).Append("`\n\n");
        if (Info.Count > 0)
        {
            foreach (var (k, v) in Info) sb.Append("- ").Append(k).Append(": ").Append(v).Append('\n');
            sb.Append('\n');
        }
        foreach (var t in Tables())
        {
            sb.Append("## ").Append(t.Title).Append("\n\n");
            sb.Append("| ").Append(string.Join(" | ", t.Header)).Append(" |\n");
            sb.Append('|').Append(string.Join("|", t.Header.Select((_, i) => i == 0 ? "---" : "---:"))).Append("|\n");
            foreach (var row in t.Rows) sb.Append("| ").Append(string.Join(" | ", row.Select(c => c.Replace("|", "\\|")))).Append(" |\n");
            if (t.Note is not null) sb.Append('\n').Append(t.Note).Append('\n');
            sb.Append('\n');
        }
        return sb.ToString();
    }

    // ---- files ------------------------------------------------------------------------------------------

    /// <summary>Writes report.json, report.md and the PNG plots into <paramref name="dir"/>; returns the paths.</summary>
    public IReadOnlyList<string> Save(string dir)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(dir);
        Directory.CreateDirectory(dir);
        string json = Path.Combine(dir, "report.json"), md = Path.Combine(dir, "report.md");
        AtomicFile.WriteAllText(json, ToJson());
        AtomicFile.WriteAllText(md, ToMarkdown());
        var paths = new List<string> { json, md };
        paths.AddRange(SavePlots(dir));
        return paths;
    }

    /// <summary>
    /// PNG plots: one training-curve plot per metric (a line per run), the students' gold reward (bars with
    /// standard error) and the chosen/rejected gold reward per label source. Returns the written paths.
    /// </summary>
    public IReadOnlyList<string> SavePlots(string dir) => ReportPlots.Save(this, dir);
}
