using System.Text.Json;
using WeakTeacher.Engine.Evaluation;
using Xunit;

namespace WeakTeacher.Tests.Evaluation;

public sealed class EvaluationReportTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "wt-eval-tests-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    private static EvaluationReport Sample()
    {
        var report = new EvaluationReport { GoldScorer = "synthetic-gold", TotalSeconds = 42.5 };
        report.Labels = LabelAgreement.Compute([0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]);
        report.GoldGap = GoldGapTable.Compute([1, 2, 3, 4], [2, 1, 5, 0], [1, 0, 1, 0], [1, 1, 0, 0]);
        report.Students.Add(StudentScores.Compute(StudentScores.Sft, [1.0, 2.0, 3.0]));
        report.Students.Add(StudentScores.Compute(StudentScores.HumanDpo, [2.0, 3.0, 4.0]));
        report.Students.Add(StudentScores.Compute(StudentScores.WeakDpo, [2.5, 3.0, 4.0]));
        report.WinRates.Add(new WinRateEntry(StudentScores.WeakDpo, StudentScores.HumanDpo, WinRate.Compute([1, 2, 3], [1, 1, 4])));
        report.Stages.Add(new StageTiming("teacher_sft", 3.25));
        report.Curves.Add(new TrainingCurve("weak_dpo", "loss", Enumerable.Range(0, 30).Select(i => (i, 0.69 - 0.01 * i)).ToList()));
        report.Curves.Add(new TrainingCurve("human_dpo", "loss", Enumerable.Range(0, 30).Select(i => (i, 0.69 - 0.008 * i)).ToList()));
        report.Curves.Add(new TrainingCurve("weak_dpo", "rewards/accuracies", [(0, 0.5), (10, 0.6), (20, 0.7)]));
        report.Info["seed"] = "1";
        return report;
    }

    [Fact]
    public void JsonHasTheRequiredShape()
    {
        using var doc = JsonDocument.Parse(Sample().ToJson());
        var root = doc.RootElement;
        var labels = root.GetProperty("labels");
        Assert.Equal(0.75, labels.GetProperty("teacher_vs_human").GetDouble());
        Assert.Equal(0.25, labels.GetProperty("teacher_vs_gold").GetDouble());
        Assert.Equal(0.5, labels.GetProperty("human_vs_gold").GetDouble());
        Assert.Equal(4, labels.GetProperty("counts").GetProperty("teacher_vs_gold").GetProperty("total").GetInt32());
        var gap = root.GetProperty("gold_gap");
        Assert.Equal(3.25, gap.GetProperty("human").GetProperty("chosen").GetDouble());
        Assert.Equal(1.25, gap.GetProperty("human").GetProperty("rejected").GetDouble());
        Assert.Equal(2.5, gap.GetProperty("weak").GetProperty("chosen").GetDouble());
        Assert.Equal(2.0, gap.GetProperty("weak").GetProperty("rejected").GetDouble());
        var students = root.GetProperty("students");
        Assert.Equal(2.0, students.GetProperty("sft").GetProperty("gold_reward").GetDouble());
        Assert.Equal(3.0, students.GetProperty("human_dpo").GetProperty("gold_reward").GetDouble());
        Assert.Equal(Math.Round(9.5 / 3, 6), students.GetProperty("weak_dpo").GetProperty("gold_reward").GetDouble());
        Assert.Equal(42.5, root.GetProperty("seconds").GetProperty("total").GetDouble());
        Assert.Equal(0.5, root.GetProperty("win_rates").GetProperty("weak_dpo_vs_human_dpo").GetProperty("rate").GetDouble());
    }

    [Fact]
    public void EmptyReportKeepsTheShapeWithNulls()
    {
        using var doc = JsonDocument.Parse(new EvaluationReport().ToJson());
        var root = doc.RootElement;
        Assert.Equal(JsonValueKind.Null, root.GetProperty("labels").GetProperty("teacher_vs_human").ValueKind);
        Assert.Equal(JsonValueKind.Null, root.GetProperty("gold_gap").GetProperty("weak").GetProperty("chosen").ValueKind);
        Assert.Equal(JsonValueKind.Null, root.GetProperty("students").GetProperty("weak_dpo").GetProperty("gold_reward").ValueKind);
        Assert.Equal(JsonValueKind.Number, root.GetProperty("seconds").GetProperty("total").ValueKind);
    }

    [Fact]
    public void MarkdownAndTableCellsShowThePaperTables()
    {
        var report = Sample();
        string md = report.ToMarkdown();
        Assert.Contains("| teacher vs human | 75.0% | 3 / 4 |", md);
        Assert.Contains("(paper Table 2)", md);
        Assert.Contains("| human labels | 4 | 3.25 | 1.25 | 2.00 |", md);
        Assert.Contains("| disagreeing subset, weak labels | 2 | 2.00 | 3.50 | -1.50 |", md);
        Assert.Contains("| weak_dpo | human_dpo | 50.0% | 1 | 1 | 1 |", md);
        Assert.Contains("| total | 42.5 |", md);
        // the same tables as cells, for the CLI to render
        var tables = report.Tables();
        Assert.Equal(["comparison", "agreement", "agree / total"], tables[0].Header);
        Assert.Equal(["teacher vs human", "75.0%", "3 / 4"], tables[0].Rows[0]);
        Assert.Equal(tables.Count, md.Split('\n').Count(l => l.StartsWith("## ", StringComparison.Ordinal)));
    }

    [Fact]
    public void SaveWritesJsonMarkdownAndPngPlots()
    {
        var paths = Sample().Save(_dir);
        Assert.Contains(Path.Combine(_dir, "report.json"), paths);
        Assert.Contains(Path.Combine(_dir, "report.md"), paths);
        var pngs = paths.Where(p => p.EndsWith(".png", StringComparison.Ordinal)).Select(Path.GetFileName).ToList();
        Assert.Equal(["curve_loss.png", "curve_rewards_accuracies.png", "gold_reward_students.png", "gold_reward_label_sources.png"], pngs);
        byte[] signature = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];
        foreach (var png in paths.Where(p => p.EndsWith(".png", StringComparison.Ordinal)))
        {
            var bytes = File.ReadAllBytes(png);
            Assert.True(bytes.Length > 1000, $"{png} is only {bytes.Length} bytes");
            Assert.Equal(signature, bytes[..8]);
        }
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "report.json")));
        Assert.Equal(42.5, doc.RootElement.GetProperty("seconds").GetProperty("total").GetDouble());
    }
}
