using System.Diagnostics;
using EngineProgress = WeakTeacher.Engine.Pipeline.JobProgress;

namespace WeakTeacher.GrpcHost.Observability;

/// <summary>
/// The engine's progress events as structured log events (event "JobProgress": Stage, Step, TotalSteps, Loss,
/// TokensPerSecond, EtaSeconds, inside the job's scope): the first and the last of each stage and at most one per
/// <see cref="Interval"/> between, so a long job's log stays small. Watchers get every event through WatchJob.
/// </summary>
internal sealed partial class ProgressLog(ILogger logger) : IProgress<EngineProgress>
{
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(10);

    private readonly Lock _gate = new();
    private readonly Stopwatch _sinceLogged = new();
    private string? _stage;

    public void Report(EngineProgress p)
    {
        lock (_gate)
        {
            bool newStage = p.Stage != _stage;
            bool last = p.TotalSteps > 0 && p.Step >= p.TotalSteps;
            if (!newStage && !last && _sinceLogged.Elapsed < Interval) return;
            _stage = p.Stage;
            _sinceLogged.Restart();
        }
        double? loss = p.Metrics.TryGetValue("loss", out var l) ? l : null;
        Progress(logger, p.Stage, p.Step, p.TotalSteps, loss, Math.Round(p.TokensPerSecond, 1), p.Eta is { } eta ? Math.Round(eta.TotalSeconds) : null);
    }

    [LoggerMessage(EventId = 100, EventName = "JobProgress", Level = LogLevel.Information,
        Message = "Progress {Stage} {Step}/{TotalSteps} loss {Loss} at {TokensPerSecond} tokens/s, eta {EtaSeconds} s")]
    private static partial void Progress(ILogger logger, string stage, long step, long totalSteps, double? loss, double tokensPerSecond, double? etaSeconds);
}
