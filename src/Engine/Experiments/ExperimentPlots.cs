using System.Globalization;
using ScottPlot;

namespace WeakTeacher.Engine.Experiments;

/// <summary>One PNG per study: our rows as bars (mean over seeds, 95% CI as error bars), the paper's values as
/// diamonds on a right-hand axis of their own (the paper's gold reward is on another scale), legend outside the data.</summary>
internal static class ExperimentPlots
{
    private const int Width = 1000, Height = 560;

    public static void Save(StudyResult study, string dir, int seeds)
    {
        var rows = study.Rows.Where(r => double.IsFinite(r.Value.Mean)).ToList();
        if (rows.Count == 0) return;
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var bars = rows.Select((r, i) => new Bar
        {
            Position = i,
            Value = r.Value.Mean,
            Error = double.IsFinite(r.Value.HalfWidth) ? r.Value.HalfWidth : 0,
            FillColor = palette.GetColor(0).WithAlpha(0.75),
            Label = r.Value.Mean.ToString("F2", CultureInfo.InvariantCulture),
        }).ToList();
        plot.Add.Bars(bars);
        plot.Axes.Bottom.SetTicks(rows.Select((_, i) => (double)i).ToArray(), rows.Select(r => r.Name).ToArray());
        plot.Axes.Bottom.TickLabelStyle.Rotation = rows.Count > 5 ? 30 : 0;
        plot.Axes.Bottom.TickLabelStyle.Alignment = rows.Count > 5 ? Alignment.MiddleLeft : Alignment.UpperCenter;
        plot.Add.HorizontalLine(0, 1, Colors.Gray);
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = $"ours: mean over {seeds} seeds, bar = 95% CI", FillColor = palette.GetColor(0) });
        var paper = rows.Select((r, i) => (r, i)).Where(x => x.r.Paper is not null).ToList();
        if (paper.Count > 0)
        {
            var marks = plot.Add.Scatter(paper.Select(x => (double)x.i).ToArray(), paper.Select(x => x.r.Paper!.Value).ToArray());
            marks.LineWidth = 0;
            marks.MarkerShape = MarkerShape.FilledDiamond;
            marks.MarkerSize = 12;
            marks.Color = palette.GetColor(3);
            marks.Axes.YAxis = plot.Axes.Right;
            marks.LegendText = "paper (right axis, its own scale)";
            plot.Axes.Right.Label.Text = "paper's value";
        }
        plot.Title(study.Title);
        plot.YLabel(study.ValueKind == "metric" ? "value" : "mean gold reward (held-out prompts)");
        plot.ShowLegend(Edge.Bottom);
        string file = $"study-{study.Name}.png";
        plot.SavePng(Path.Combine(dir, file), Width, Height);
        study.Plot = file;
        study.PlotCaption = $"{study.Title}: bars are our means over {seeds} seeds; error bars are 95% confidence intervals "
            + $"(t-distribution, {Math.Max(seeds - 1, 0)} degrees of freedom) of the per-seed values"
            + (paper.Count > 0 ? "; diamonds are the paper's values on the right-hand axis (a different gold reward model, so a different scale)." : ".");
    }
}
