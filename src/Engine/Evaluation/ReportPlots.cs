using System.Text;
using ScottPlot;

namespace WeakTeacher.Engine.Evaluation;

/// <summary>PNG plots of an <see cref="EvaluationReport"/> (ScottPlot 5, rendered headless through SkiaSharp).</summary>
internal static class ReportPlots
{
    private const int Width = 800, Height = 500;

    public static IReadOnlyList<string> Save(EvaluationReport report, string dir)
    {
        ArgumentNullException.ThrowIfNull(report);
        ArgumentException.ThrowIfNullOrWhiteSpace(dir);
        Directory.CreateDirectory(dir);
        var written = new List<string>();

        foreach (var metric in report.Curves.Select(c => c.Metric).Distinct(StringComparer.Ordinal))
        {
            var curves = report.Curves.Where(c => c.Metric == metric && c.Points.Count > 0).ToList();
            if (curves.Count == 0) continue;
            written.Add(SaveCurves(Path.Combine(dir, $"curve_{FileSafe(metric)}.png"), metric, curves));
        }
        if (report.Students.Any(s => double.IsFinite(s.Mean)))
            written.Add(SaveStudents(Path.Combine(dir, "gold_reward_students.png"), report));
        if (report.GoldGap is not null)
            written.Add(SaveGoldGap(Path.Combine(dir, "gold_reward_label_sources.png"), report.GoldGap));
        return written;
    }

    private static string SaveCurves(string path, string metric, List<TrainingCurve> curves)
    {
        var plot = new Plot();
        foreach (var curve in curves)
        {
            var points = curve.Points.Where(p => double.IsFinite(p.Value)).OrderBy(p => p.Step).ToList();
            if (points.Count == 0) continue;
            var line = plot.Add.Scatter(points.Select(p => (double)p.Step).ToArray(), points.Select(p => p.Value).ToArray());
            line.LegendText = curve.Run;
            line.MarkerSize = points.Count > 50 ? 0 : 4;
        }
        plot.Title(metric);
        plot.XLabel("step");
        plot.YLabel(metric);
        plot.ShowLegend();
        plot.SavePng(path, Width, Height);
        return path;
    }

    private static string SaveStudents(string path, EvaluationReport report)
    {
        var plot = new Plot();
        var students = report.Students.Where(s => double.IsFinite(s.Mean)).ToList();
        var palette = new ScottPlot.Palettes.Category10();
        var bars = students.Select((s, i) => new Bar
        {
            Position = i,
            Value = s.Mean,
            Error = double.IsFinite(s.StdErr) ? s.StdErr : 0,
            FillColor = palette.GetColor(i),
            Label = s.Mean.ToString("F2", System.Globalization.CultureInfo.InvariantCulture),
        }).ToList();
        plot.Add.Bars(bars);
        plot.Axes.Bottom.SetTicks(students.Select((_, i) => (double)i).ToArray(), students.Select(s => s.Name).ToArray());
        plot.Add.HorizontalLine(0, 1, Colors.Gray);
        plot.Title("Gold reward of the students on held-out prompts");
        plot.YLabel("mean gold reward");
        plot.SavePng(path, Width, Height);
        return path;
    }

    private static string SaveGoldGap(string path, GoldGapTable table)
    {
        var plot = new Plot();
        var rows = table.Rows.Where(r => r.Count > 0).ToList();
        var palette = new ScottPlot.Palettes.Category10();
        Color chosenColor = palette.GetColor(2), rejectedColor = palette.GetColor(3);
        var bars = new List<Bar>();
        for (int i = 0; i < rows.Count; i++)
        {
            bars.Add(new Bar { Position = 3 * i, Value = rows[i].Chosen, FillColor = chosenColor });
            bars.Add(new Bar { Position = 3 * i + 1, Value = rows[i].Rejected, FillColor = rejectedColor });
        }
        plot.Add.Bars(bars);
        plot.Axes.Bottom.SetTicks(rows.Select((_, i) => 3.0 * i + 0.5).ToArray(), rows.Select(r => r.Source).ToArray());
        plot.Add.HorizontalLine(0, 1, Colors.Gray);
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "chosen", FillColor = chosenColor });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "rejected", FillColor = rejectedColor });
        plot.ShowLegend();
        plot.Title("Gold reward of chosen and rejected responses per label source");
        plot.YLabel("mean gold reward");
        plot.SavePng(path, Width, Height);
        return path;
    }

    /// <summary>"rewards/accuracies" -> "rewards_accuracies".</summary>
    internal static string FileSafe(string name)
    {
        var sb = new StringBuilder(name.Length);
        foreach (char c in name) sb.Append(char.IsAsciiLetterOrDigit(c) || c is '-' or '.' ? c : '_');
        return sb.ToString();
    }
}
