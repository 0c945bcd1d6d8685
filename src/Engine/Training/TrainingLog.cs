using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using WeakTeacher.Engine.Pipeline;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// Where a run's metrics go: metrics.jsonl in the output folder (one object per logged step: "step" then the TRL names),
/// a TensorBoard event file beside it (<see cref="TensorBoardWriter"/>) and an <see cref="IProgress{JobProgress}"/>
/// callback. The engine writes nothing to the console: front ends render the progress events (the CLI as a live
/// progress display, the host as structured log events).
/// </summary>
public sealed class TrainingLog : IDisposable
{
    public const string MetricsFile = "metrics.jsonl";

    private readonly string _stage;
    private readonly IProgress<JobProgress>? _progress;
    private readonly StreamWriter? _writer;
    private readonly TensorBoardWriter? _tensorBoard;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly int _startStep;

    /// <param name="truncateAfterStep">on resume: rows of metrics.jsonl with a step above this are dropped (they were logged after the checkpoint).</param>
    public TrainingLog(string stage, string? outputDir, IProgress<JobProgress>? progress, int startStep, int truncateAfterStep)
    {
        _stage = stage;
        _progress = progress;
        _startStep = startStep;
        if (outputDir is not null)
        {
            Directory.CreateDirectory(outputDir);
            var path = Path.Combine(outputDir, MetricsFile);
            if (File.Exists(path)) KeepRowsUpTo(path, truncateAfterStep);
            _writer = new StreamWriter(new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read), new UTF8Encoding(false));
            _tensorBoard = new TensorBoardWriter(outputDir, resumedAtStep: startStep);
        }
    }

    /// <summary>Writes one logged step everywhere.</summary>
    public void Log(int step, int totalSteps, IReadOnlyDictionary<string, double> metrics)
    {
        double tokensPerSecond = metrics.TryGetValue("tokens_per_second", out var t) ? t : 0;
        TimeSpan? eta = null;
        int done = step - _startStep;
        if (done > 0 && totalSteps > step)
            eta = TimeSpan.FromSeconds(_clock.Elapsed.TotalSeconds / done * (totalSteps - step));
        if (_writer is not null)
        {
            var row = new StringBuilder("{\"step\":").Append(step.ToString(CultureInfo.InvariantCulture));
            foreach (var (name, value) in metrics)
                row.Append(',').Append(JsonSerializer.Serialize(name)).Append(':').Append(FormatNumber(value));
            row.Append('}');
            Runtime.WriteFence.Check("training log"); // appends would land in another holder's log
            _writer.WriteLine(row.ToString());
            _writer.Flush();
        }
        _tensorBoard?.Write(step, metrics);
        _progress?.Report(new JobProgress(_stage, step, totalSteps, metrics, tokensPerSecond, eta));
    }

    private static string FormatNumber(double value) =>
        double.IsFinite(value) ? value.ToString("R", CultureInfo.InvariantCulture) : JsonSerializer.Serialize(value.ToString(CultureInfo.InvariantCulture));

    private static void KeepRowsUpTo(string path, int lastStep)
    {
        var kept = new List<string>();
        foreach (var line in File.ReadLines(path))
        {
            if (line.Length == 0) continue;
            try
            {
                using var doc = JsonDocument.Parse(line);
                if (doc.RootElement.TryGetProperty("step", out var s) && s.TryGetInt32(out int step) && step <= lastStep) kept.Add(line);
            }
            catch (JsonException)
            {
                // a row cut off by the interruption: dropped, as it was logged after the checkpoint
            }
        }
        AtomicFile.WriteAllText(path, string.Concat(kept.Select(line => line + "\n")));
    }

    public void Dispose()
    {
        _writer?.Dispose();
        _tensorBoard?.Dispose();
    }
}
