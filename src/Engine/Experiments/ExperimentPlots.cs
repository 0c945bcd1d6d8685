using ScottPlot;

namespace WeakTeacher.Engine.Experiments;

/// <summary>
/// The PNGs of a study. Rows run down the left axis (their names need no rotation); each row shows the mean over seeds
/// (filled circle), its 95% interval (line with caps) and every seed's value (open circles); the paper's values are
/// diamonds on the top axis when on another scale (gold rewards of the paper's reward model), on the same axis when
/// they are fractions. Legends sit below the panels, clear of the data. A study with a second table (label
/// agreements) gets a second panel; training losses get a plot of their own with SFT and DPO on separate axes.
/// </summary>
internal static class ExperimentPlots
{
    private const int PanelWidth = 760, RowHeight = 42, Chrome = 190;
    private static readonly Color Ours = new ScottPlot.Palettes.Category10().GetColor(0),
        Seed = Colors.Gray, Paper = new ScottPlot.Palettes.Category10().GetColor(3);

    public static void Save(StudyResult study, string dir, int seeds)
    {
        study.Plots.Clear();
        var panels = new List<(string Title, IReadOnlyList<StudyRow> Rows, string Axis, bool PaperSameScale)>();
        var rows = Finite(study.Rows);
        if (rows.Count > 0) panels.Add((study.Title, rows, AxisLabel(study.ValueKind), study.ValueKind == StudyResult.Fraction));
        var extra = Finite(study.Extra);
        if (extra.Count > 0) panels.Add((study.ExtraTitle, extra, AxisLabel(study.ExtraKind), study.ExtraKind == StudyResult.Fraction));
        if (panels.Count > 0)
        {
            string file = $"study-{study.Name}.png";
            Render(Path.Combine(dir, file), panels.Count, panels.Max(p => p.Rows.Count), (plot, i) =>
            {
                var p = panels[i];
                Dots(plot, p.Rows, p.Axis, p.PaperSameScale, seeds);
                plot.Title(panels.Count > 1 && i > 0 ? p.Title : study.Title);
            });
            bool paper = panels.Any(p => p.Rows.Any(r => r.Paper is not null));
            bool paperOwnScale = panels.Any(p => !p.PaperSameScale && p.Rows.Any(r => r.Paper is not null));
            study.Plots.Add(new StudyPlot(file, $"{study.Title}. Filled circles: our mean over {seeds} seeds; line with caps: its 95% confidence "
                + $"interval (t-distribution, {Math.Max(seeds - 1, 0)} degrees of freedom, over the per-seed values); open circles: each seed's value"
                + (paper ? paperOwnScale
                    ? "; diamonds: the paper's value, on the top axis where it is a gold reward (the paper's reward model has another scale, so compare orderings, not levels)"
                    : "; diamonds: the paper's value on the same axis" : "")
                + (panels.Count > 1 ? $". Right panel: {study.ExtraTitle}." : ".")));
        }
        if (study.Losses.Count > 0)
        {
            var stages = study.Losses.Select(l => l.Stage).Distinct().ToList();
            string file = $"study-{study.Name}-losses.png";
            Render(Path.Combine(dir, file), stages.Count, 8, (plot, i) => Losses(plot, stages[i], study.Losses.Where(l => l.Stage == stages[i]).ToList()));
            study.Plots.Add(new StudyPlot(file, $"Training losses of the students in {study.Title}, per logged optimiser step, mean over {seeds} seeds. "
                + "SFT (token cross-entropy, nats) and DPO (sigmoid preference loss; ln 2 = 0.693 where policy and reference agree) are on "
                + "separate axes because they are different quantities."));
        }
    }

    private static List<StudyRow> Finite(IEnumerable<StudyRow> rows) => rows.Where(r => double.IsFinite(r.Value.Mean)).ToList();

    private static string AxisLabel(string kind) => kind switch
    {
        StudyResult.GoldReward => "mean gold reward on the held-out prompts",
        StudyResult.Fraction => "fraction of pairs",
        _ => kind,
    };

    private static void Render(string path, int panels, int rows, Action<Plot, int> draw)
    {
        int height = Chrome + RowHeight * rows;
        if (panels == 1)
        {
            var plot = new Plot();
            draw(plot, 0);
            plot.SavePng(path, PanelWidth, height);
            return;
        }
        var multiplot = new Multiplot();
        multiplot.AddPlots(panels);
        multiplot.Layout = new ScottPlot.MultiplotLayouts.Columns();
        for (int i = 0; i < panels; i++) draw(multiplot.GetPlot(i), i);
        multiplot.SavePng(path, PanelWidth * panels, height);
    }

    private static void Dots(Plot plot, IReadOnlyList<StudyRow> rows, string axis, bool paperSameScale, int seeds)
    {
        int n = rows.Count;
        double Y(int i) => n - 1 - i; // first row on top
        for (int i = 0; i < n; i++)
        {
            var v = rows[i].Value;
            if (!double.IsFinite(v.Low)) continue;
            Line(plot, v.Low, Y(i), v.High, Y(i));
            Line(plot, v.Low, Y(i) - 0.18, v.Low, Y(i) + 0.18);
            Line(plot, v.High, Y(i) - 0.18, v.High, Y(i) + 0.18);
        }
        var perSeed = rows.SelectMany((r, i) => r.PerSeed.Where(double.IsFinite).Select(x => (x, y: Y(i)))).ToList();
        var seedMarks = plot.Add.Scatter(perSeed.Select(p => p.x).ToArray(), perSeed.Select(p => p.y).ToArray());
        Marks(seedMarks, MarkerShape.OpenCircle, 7, Seed, "ours: one seed");
        var means = plot.Add.Scatter(rows.Select(r => r.Value.Mean).ToArray(), rows.Select((_, i) => Y(i)).ToArray());
        Marks(means, MarkerShape.FilledCircle, 11, Ours, $"ours: mean over {seeds} seeds, line = 95% CI");
        var paper = rows.Select((r, i) => (r, i)).Where(x => x.r.Paper is not null).ToList();
        if (paper.Count > 0)
        {
            var marks = plot.Add.Scatter(paper.Select(x => x.r.Paper!.Value).ToArray(), paper.Select(x => Y(x.i)).ToArray());
            Marks(marks, MarkerShape.FilledDiamond, 12, Paper, paperSameScale ? "paper" : "paper (top axis, its own scale)");
            if (!paperSameScale) marks.Axes.XAxis = plot.Axes.Top; // no axis label: it would collide with the title
        }
        plot.Axes.Left.SetTicks(rows.Select((_, i) => Y(i)).ToArray(), rows.Select(r => r.Name).ToArray());
        plot.Axes.Left.MajorTickStyle.Length = 0;
        plot.Axes.SetLimitsY(-0.6, n - 0.4);
        plot.XLabel(axis);
        plot.ShowLegend(Edge.Bottom);
    }

    private static void Losses(Plot plot, string stage, IReadOnlyList<LossCurve> curves)
    {
        var palette = new ScottPlot.Palettes.Category10();
        int k = 0;
        foreach (var group in curves.GroupBy(c => c.Row))
        {
            // mean over seeds at each logged step (every seed logs the same steps: same data, same batch size)
            var mean = group.SelectMany(c => c.Points).GroupBy(p => p.Step).OrderBy(g => g.Key)
                .Select(g => (Step: (double)g.Key, Loss: g.Average(p => p.Loss))).ToList();
            var line = plot.Add.Scatter(mean.Select(p => p.Step).ToArray(), mean.Select(p => p.Loss).ToArray());
            line.LegendText = group.Key;
            line.Color = palette.GetColor(k++);
            line.MarkerSize = mean.Count > 40 ? 0 : 4;
        }
        plot.Title(stage == "sft" ? "SFT loss" : "DPO loss");
        plot.XLabel("optimiser step");
        plot.YLabel(stage == "sft" ? "token cross-entropy (nats)" : "DPO sigmoid loss");
        plot.ShowLegend(Edge.Bottom);
    }

    private static void Line(Plot plot, double x1, double y1, double x2, double y2)
    {
        var line = plot.Add.Line(x1, y1, x2, y2);
        line.Color = Ours;
        line.LineWidth = 2;
        line.MarkerSize = 0;
    }

    private static void Marks(ScottPlot.Plottables.Scatter s, MarkerShape shape, float size, Color color, string legend)
    {
        s.LineWidth = 0;
        s.MarkerShape = shape;
        s.MarkerSize = size;
        s.Color = color;
        s.LegendText = legend;
    }
}
