using System.Globalization;
using Spectre.Console;
using Spectre.Console.Rendering;
using WeakTeacher.Engine.Pipeline;

namespace WeakTeacher.Cli;

/// <summary>
/// The CLI's one progress renderer: the engine's progress events (local runs, and a remote job's WatchJob stream) as a
/// Spectre.Console live display, one bar per stage with its step, loss, accuracy, tokens/s and the engine's ETA (which
/// knows about resumed steps). When output is redirected, Spectre's fallback prints each stage at 25/50/75% and this a
/// line at its end.
/// Anything else printed while it runs goes through <see cref="AnsiConsole"/>, which keeps it above the bars.
/// </summary>
public static class ProgressDisplay
{
    public static T Run<T>(Func<IProgress<JobProgress>, T> work)
    {
        T result = default!;
        Create().Start(ctx => { result = work(new Sink(ctx)); });
        return result;
    }

    public static Task RunAsync(Func<IProgress<JobProgress>, Task> work) => Create().StartAsync(ctx => work(new Sink(ctx)));

    /// <summary>Whether Spectre renders live bars (the condition its Progress uses) or its milestone fallback.</summary>
    private static bool LiveDisplay => AnsiConsole.Profile.Capabilities is { Interactive: true, Ansi: true };

    private static Progress Create() => AnsiConsole.Progress()
        .AutoClear(false)
        .HideCompleted(false)
        .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new StepColumn(), new EtaColumn());

    /// <summary>The line after a stage's name: loss, accuracy and tokens/s when the stage reports them.</summary>
    private static string Metrics(JobProgress p)
    {
        var parts = new List<string>();
        if (p.Metrics.TryGetValue("loss", out var loss)) parts.Add(string.Create(CultureInfo.InvariantCulture, $"loss {loss:F4}"));
        if (p.Metrics.TryGetValue("rewards/accuracies", out var acc)) parts.Add(string.Create(CultureInfo.InvariantCulture, $"acc {acc:F2}"));
        if (p.TokensPerSecond > 0) parts.Add(string.Create(CultureInfo.InvariantCulture, $"{p.TokensPerSecond:F0} tok/s"));
        return string.Join("  ", parts);
    }

    private sealed class Sink(ProgressContext context) : IProgress<JobProgress>
    {
        private readonly Dictionary<string, ProgressTask> _stages = new(StringComparer.Ordinal);
        private readonly HashSet<string> _ended = new(StringComparer.Ordinal);
        private readonly Lock _gate = new();

        public void Report(JobProgress value)
        {
            lock (_gate)
            {
                if (!_stages.TryGetValue(value.Stage, out var task))
                {
                    // a new stage: the ones before it have ended (stages run one after another)
                    foreach (var earlier in _stages.Values) if (!earlier.IsFinished) earlier.StopTask();
                    task = context.AddTask(Markup.Escape(value.Stage), maxValue: Math.Max(1, value.TotalSteps));
                    _stages[value.Stage] = task;
                }
                task.MaxValue = Math.Max(1, value.TotalSteps);
                task.Value = Math.Min(value.Step, task.MaxValue);
                string metrics = Metrics(value);
                task.Description = metrics.Length == 0 ? Markup.Escape(value.Stage) : $"{Markup.Escape(value.Stage)}  [grey]{Markup.Escape(metrics)}[/]";
                task.State.Update<double>(EtaColumn.Key, _ => value.Eta?.TotalSeconds ?? -1);
                task.State.Update<long>(StepColumn.Key, _ => value.Step);
                if (value.TotalSteps > 0 && value.Step >= value.TotalSteps && _ended.Add(value.Stage))
                {
                    task.StopTask();
                    // Spectre's fallback for redirected output prints milestones of running tasks only: say each end once
                    if (!LiveDisplay)
                        AnsiConsole.MarkupLine($"{Markup.Escape(value.Stage)}: done, {value.Step}/{value.TotalSteps}{(metrics.Length > 0 ? "  " + Markup.Escape(metrics) : "")}");
                }
            }
        }
    }

    /// <summary>"step/total" as the engine counts them (optimizer steps, batches or pairs).</summary>
    private sealed class StepColumn : ProgressColumn
    {
        public const string Key = "wt.step";
        public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime) =>
            new Text(string.Create(CultureInfo.InvariantCulture, $"{task.State.Get<long>(Key)}/{task.MaxValue:F0}"));
    }

    /// <summary>The engine's own estimate of the time left in the stage.</summary>
    private sealed class EtaColumn : ProgressColumn
    {
        public const string Key = "wt.eta";
        public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime)
        {
            double seconds = task.State.Get<double>(Key);
            if (task.IsFinished) return new Text("done", new Style(Color.Green));
            if (seconds < 0) return new Text("eta --:--", new Style(Color.Grey));
            var eta = TimeSpan.FromSeconds(seconds);
            return new Text("eta " + eta.ToString(eta.TotalHours >= 1 ? @"h\:mm\:ss" : @"m\:ss", CultureInfo.InvariantCulture), new Style(Color.Grey));
        }
    }
}
