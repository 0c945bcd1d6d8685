using System.Diagnostics;
using System.Text.Json;
using Grpc.Core;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Observability;
using WeakTeacher.GrpcHost.Storage;
using EngineProgress = WeakTeacher.Engine.Pipeline.JobProgress;

namespace WeakTeacher.GrpcHost.Jobs;

/// <summary>
/// One worker per device: takes jobs off the queue one at a time (so GPU work is serialised), runs the stage in the
/// job's work folder, registers its outputs and records the final state. A host shutdown leaves the job "running" in
/// the database, so the next start resumes it from its last checkpoint.
/// </summary>
internal sealed partial class JobWorker(string device, JobManager jobs, Store store, StageRunner runner, DataLayout layout,
    HostMetrics metrics, ILogger<JobWorker> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        await Task.Yield();
        try
        {
            await foreach (var id in jobs.Reader.ReadAllAsync(stoppingToken))
            {
                jobs.Dequeued();
                await RunOne(id, stoppingToken);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested) { }
    }

    private async Task RunOne(string id, CancellationToken stoppingToken)
    {
        var job = store.GetJob(id);
        if (job is null || job.State is not ((int)JobState.Queued or (int)JobState.Running)) return; // cancelled while queued
        var kind = ((JobKind)job.Kind).ToString().ToLowerInvariant();
        using var scope = logger.BeginScope(new Dictionary<string, object> { ["JobId"] = id, ["JobKind"] = kind, ["Device"] = device });
        var cts = jobs.Started(id, stoppingToken);
        var clock = Stopwatch.StartNew();
        var finalState = JobState.Failed;
        try
        {
            bool resumed = job.State == (int)JobState.Running;
            store.MarkJobStarted(id, (int)JobState.Running, DateTimeOffset.UtcNow);
            jobs.PublishState(id, JobState.Running);
            logger.LogInformation(resumed ? "Job resumed (attempt {Attempt})" : "Job started (attempt {Attempt})", job.Attempts + 1);
            var workDir = layout.JobWorkDir(id);
            var progress = new ProgressSink(id, kind, jobs, store, metrics, new ProgressLog(logger));
            // Stages are CPU/GPU-bound and synchronous inside; keep them off the request threads.
            var output = await Task.Run(() => runner.RunAsync(job, device, workDir, progress, cts.Token), cts.Token);
            progress.Flush();
            var artifacts = await Task.Run(() => runner.Register(job, output, workDir, OutputName(job)), CancellationToken.None);
            if (store.FinishJob(id, (int)JobState.Succeeded, [(int)JobState.Running], JsonSerializer.Serialize(artifacts),
                    JsonSerializer.Serialize(output.Metrics), "", "", DateTimeOffset.UtcNow))
            {
                finalState = JobState.Succeeded;
                jobs.PublishState(id, JobState.Succeeded);
                logger.LogInformation("Job succeeded in {Seconds:F1}s with {Artifacts} artifacts", clock.Elapsed.TotalSeconds, artifacts.Count);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            finalState = JobState.Running;
            logger.LogWarning("Host stopping: job left running, it resumes from its checkpoint at the next start");
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            finalState = JobState.Cancelled;
            Finish(id, JobState.Cancelled, "cancelled by a client", "CANCELLED");
            logger.LogInformation("Job cancelled");
        }
        catch (Exception e)
        {
            var (code, message) = Classify(e);
            Finish(id, JobState.Failed, message, ToCodeName(code));
            if (code == StatusCode.ResourceExhausted) logger.LogError(e, "Job failed: device out of memory");
            else logger.LogError(e, "Job failed: {Error}", message);
        }
        finally
        {
            jobs.Ended(id);
            if (finalState != JobState.Running) metrics.JobFinished(kind, finalState.ToString().ToLowerInvariant(), clock.Elapsed);
        }
    }

    private void Finish(string id, JobState state, string error, string code)
    {
        if (store.FinishJob(id, (int)state, [(int)JobState.Running], "[]", "{}", error, code, DateTimeOffset.UtcNow))
            jobs.PublishState(id, state, error, code);
    }

    /// <summary>Device out-of-memory is RESOURCE_EXHAUSTED; a status the request resolution raised keeps its code.</summary>
    internal static (StatusCode Code, string Message) Classify(Exception e)
    {
        for (var inner = e; inner is not null; inner = inner.InnerException)
            if (inner.Message.Contains("out of memory", StringComparison.OrdinalIgnoreCase))
                return (StatusCode.ResourceExhausted, $"device out of memory: {ForClient(inner.Message)}");
        if (e is RpcException rpc) return (rpc.StatusCode, rpc.Status.Detail);
        if (e is AggregateException { InnerExceptions.Count: 1 } aggregate) return Classify(aggregate.InnerExceptions[0]);
        return (StatusCode.Internal, $"{e.GetType().Name}: {ForClient(e.Message)} (details in the host log)");
    }

    /// <summary>
    /// What a client may see of an engine message: its first line (native errors append their C++ stack), with every
    /// absolute server path cut to its last component. The full exception goes to the host log.
    /// </summary>
    internal static string ForClient(string message)
    {
        var firstLine = message.Split('\n', 2)[0].Trim();
        var redacted = ServerPath().Replace(firstLine, m => Path.GetFileName(m.Value.TrimEnd('/')) is { Length: > 0 } name ? name : "<path>");
        return redacted.Length > 300 ? redacted[..300] + "..." : redacted;
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"(?<![\w.])/(?:[^\s'"",:;()]+/)*[^\s'"",:;()]*")]
    private static partial System.Text.RegularExpressions.Regex ServerPath();

    internal static string ToCodeName(StatusCode code) =>
        string.Concat(code.ToString().Select((c, i) => i > 0 && char.IsUpper(c) ? "_" + c : c.ToString())).ToUpperInvariant();

    private static string? OutputName(JobRecord job)
    {
        try
        {
            using var doc = JsonDocument.Parse(job.ConfigJson);
            return doc.RootElement.TryGetProperty("outputName", out var name) && name.GetString() is { Length: > 0 } s ? s : null;
        }
        catch (JsonException) { return null; }
    }

    /// <summary>Progress from the stage: to watchers at once, to the database at most twice a second, to the log as
    /// structured events (<see cref="ProgressLog"/>).</summary>
    private sealed class ProgressSink(string id, string kind, JobManager jobs, Store store, HostMetrics metrics, ProgressLog log) : IProgress<EngineProgress>
    {
        private readonly Stopwatch sinceWrite = Stopwatch.StartNew();
        private Grpc.V1.JobProgress? unsaved;
        private readonly Lock gate = new();

        public void Report(EngineProgress value)
        {
            var progress = JobManager.ToProto(value);
            jobs.PublishProgress(id, progress);
            log.Report(value);
            if (value.TokensPerSecond > 0) metrics.Throughput(kind, value.Stage, value.TokensPerSecond);
            lock (gate)
            {
                unsaved = progress;
                if (sinceWrite.ElapsedMilliseconds >= 500 || value.Step >= value.TotalSteps) Flush();
            }
        }

        public void Flush()
        {
            lock (gate)
            {
                if (unsaved is null) return;
                store.UpdateJobProgress(id, JobManager.Json.Format(unsaved));
                unsaved = null;
                sinceWrite.Restart();
            }
        }
    }
}
