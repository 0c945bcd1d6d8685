using System.Diagnostics;
using System.Text.Json;
using Grpc.Core;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Observability;
using WeakTeacher.GrpcHost.Storage;
using EngineProgress = WeakTeacher.Engine.Pipeline.JobProgress;

namespace WeakTeacher.GrpcHost.Jobs;

/// <summary>
/// One worker per device: claims jobs from the store one at a time (so GPU work is serialised), runs the stage in the
/// job's work folder, publishes its outputs and records the final state, which lists them (one transaction). While a
/// job runs the worker renews its lease; if the host dies the lease lapses and any host sharing the store claims the
/// job again, resuming from its last checkpoint in the shared data folder. A host shutdown leaves the job "running" with its lease given up, so the next
/// host to look (this one at its next start) resumes it.
/// </summary>
internal sealed partial class JobWorker(string device, JobManager jobs, Store store, StageRunner runner, DataLayout layout,
    HostMetrics metrics, ServiceOptions options, ILogger<JobWorker> logger) : BackgroundService
{
    private TimeSpan Lease => options.JobStore.Lease;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        await Task.Yield();
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                JobClaim? claim;
                // the lease runs from when the claim was sent at the latest
                var claimSent = Stopwatch.GetTimestamp();
                try { claim = store.ClaimJob(jobs.HostId, Lease, DateTimeOffset.UtcNow); }
                catch (System.Data.Common.DbException e)
                {
                    logger.LogWarning("Job store unreachable, retrying: {Error}", e.Message);
                    claim = null;
                }
                if (claim is null) await jobs.WaitForWorkAsync(stoppingToken);
                else await RunOne(claim, claimSent, stoppingToken);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested) { }
    }

    private async Task RunOne(JobClaim claim, long claimSent, CancellationToken stoppingToken)
    {
        var job = claim.Job;
        var id = job.Id;
        var kind = ((JobKind)job.Kind).ToString().ToLowerInvariant();
        using var scope = logger.BeginScope(new Dictionary<string, object> { ["JobId"] = id, ["JobKind"] = kind, ["Device"] = device, ["Attempt"] = job.Attempts });
        var cts = jobs.Started(id, stoppingToken);
        var clock = Stopwatch.StartNew();
        var finalState = JobState.Failed;
        var outcome = "failed";
        var lease = new LeaseKeeper(store, id, job.Attempts, jobs.HostId, Lease, claimSent, cts, logger);
        // every publishing write of the stage and of the registration first checks that this attempt still holds the job
        using var fence = Engine.Runtime.WriteFence.Enter(lease.WriteRefusal);
        if (claim.CancelRequested) cts.Cancel();
        var renewing = lease.RunAsync();
        try
        {
            jobs.PublishState(id, JobState.Running);
            logger.LogInformation(job.Attempts > 1 ? "Job resumed (attempt {Attempt}) by {Host}" : "Job started (attempt {Attempt}) by {Host}",
                job.Attempts, jobs.HostId);
            if (StageRunner.ShardsOf(job) is { } shards)
            {
                finalState = JobState.Running;
                if (store.SplitJob(id, job.Attempts, jobs.HostId, shards))
                {
                    outcome = $"split into {shards.Count} shards";
                    jobs.Queued(shards.Count);
                    logger.LogInformation("Job split into {Shards} shards; any host may run them, and it merges them when they all succeeded", shards.Count);
                }
                else outcome = "lease lost";
                return;
            }
            // a shard works in its parent's folder, which holds every shard and, after the merge, the labelled set
            var workDir = layout.JobWorkDir(job.ParentId ?? id);
            var progress = new ProgressSink(id, kind, jobs, store, metrics, new ProgressLog(logger));
            // Stages are CPU/GPU-bound and synchronous inside; keep them off the request threads.
            var output = await Task.Run(() => runner.RunAsync(job, device, workDir, progress, cts.Token), cts.Token);
            progress.Flush();
            var outputs = await Task.Run(() => runner.Register(job, output, workDir, OutputName(job)), CancellationToken.None);
            var artifacts = outputs.Artifacts;
            if (store.FinishJob(id, (int)JobState.Succeeded, [(int)JobState.Running], JsonSerializer.Serialize(artifacts),
                    JsonSerializer.Serialize(output.Metrics), "", "", DateTimeOffset.UtcNow, (jobs.HostId, job.Attempts), outputs.Models, outputs.Datasets))
            {
                finalState = JobState.Succeeded;
                outcome = "succeeded";
                jobs.PublishState(id, JobState.Succeeded);
                logger.LogInformation("Job succeeded in {Seconds:F1}s with {Artifacts} artifacts", clock.Elapsed.TotalSeconds, artifacts.Count);
            }
            else
            {
                finalState = JobState.Running;
                outcome = "lease lost";
                logger.LogWarning("Job finished here but its lease was lost meanwhile; the record is left to the host that holds it");
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            finalState = JobState.Running;
            outcome = "host stopped";
            Try(() => store.ReleaseLeases(jobs.HostId, id));
            logger.LogWarning("Host stopping: job left running, it resumes from its checkpoint at the next start (or on another host)");
        }
        catch (Exception e) when (lease.Lost)
        {
            // whatever the stage threw once the lease was gone (a refused write, a cancel, an error of a half-stopped
            // stage): the job is another host's to finish, never failed from here
            finalState = JobState.Running;
            outcome = e is Engine.Runtime.FencedWriteException ? "lease lost, write refused" : "lease lost";
            if (e is Engine.Runtime.FencedWriteException) logger.LogWarning("Job stopped: {Error}; another host may hold it now", e.Message);
            else logger.LogWarning("Job stopped: its lease could not be renewed, so another host may run it now");
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            finalState = JobState.Cancelled;
            outcome = "cancelled";
            Finish(id, job.Attempts, JobState.Cancelled, "cancelled by a client", "CANCELLED");
            logger.LogInformation("Job cancelled");
        }
        catch (Exception e)
        {
            var (code, message) = Classify(e);
            Finish(id, job.Attempts, JobState.Failed, message, ToCodeName(code));
            if (code == StatusCode.ResourceExhausted) logger.LogError(e, "Job failed: device out of memory");
            else logger.LogError(e, "Job failed: {Error}", message);
        }
        finally
        {
            lease.Stop();
            await renewing;
            Try(() => store.EndAttempt(id, job.Attempts, outcome));
            jobs.Ended(id);
            if (finalState != JobState.Running) metrics.JobFinished(kind, finalState.ToString().ToLowerInvariant(), clock.Elapsed);
        }
    }

    private void Try(Action write)
    {
        try { write(); }
        catch (System.Data.Common.DbException e) { logger.LogWarning("Job store write failed: {Error}", e.Message); }
    }

    /// <summary>
    /// Renews a running job's lease every third of its length. A client's cancel (from any host) cancels the run; so
    /// does a lease that could not be renewed, before it lapses, so that a host cut off from the store stops before
    /// another host may claim the job. It is also the job's write fence (<see cref="WriteRefusal"/>).
    /// </summary>
    private sealed class LeaseKeeper(Store store, string id, int attempt, string owner, TimeSpan lease, long claimSent,
        CancellationTokenSource run, ILogger logger)
    {
        private readonly CancellationTokenSource stop = new();
        private volatile bool lost;
        // Stopwatch timestamp of sending the last renewal (or the claim) that the store confirmed: the lease lasts at
        // least a lease from then. Monotonic, so it keeps counting while the process is stopped or paused.
        private long confirmedSent = claimSent;
        public bool Lost => lost;

        /// <summary>
        /// Null while this attempt may write into the job's folder; otherwise why not. Refused once the lease is lost,
        /// or when 2/3 of the lease passed since the last confirmed renewal was sent (the process stalled, or the store
        /// is unreachable): another host may claim the job from the full lease on, and the margin absorbs clock-rate
        /// differences. A refusal stops the run as a lost lease does.
        /// </summary>
        public string? WriteRefusal()
        {
            if (lost) return "this host's lease on the job was lost";
            var since = Stopwatch.GetElapsedTime(Interlocked.Read(ref confirmedSent));
            if (since < lease * 2 / 3) return null;
            lost = true;
            Cancel();
            return $"attempt {attempt}'s lease was last confirmed {since.TotalSeconds:F1}s ago (lease {lease.TotalSeconds:F0}s)";
        }

        public void Stop() => stop.Cancel();

        public async Task RunAsync()
        {
            var renewed = Stopwatch.StartNew();
            try
            {
                while (true)
                {
                    await Task.Delay(lease / 3, stop.Token);
                    // This late (the process starved), the lease may lapse before a renewal lands: stop rather than
                    // risk another host running the job at the same time.
                    if (renewed.Elapsed >= lease * 2 / 3)
                    {
                        logger.LogWarning("Lease not renewed for {Seconds:F1}s; stopping the job", renewed.Elapsed.TotalSeconds);
                        lost = true;
                        Cancel();
                        return;
                    }
                    LeaseState state;
                    var sent = Stopwatch.GetTimestamp();
                    try { state = store.RenewLease(id, attempt, owner, lease); }
                    catch (System.Data.Common.DbException e)
                    {
                        logger.LogWarning("Lease renewal failed: {Error}", e.Message);
                        continue;
                    }
                    if (state == LeaseState.Lost)
                    {
                        lost = true;
                        Cancel();
                        return;
                    }
                    renewed.Restart();
                    Interlocked.Exchange(ref confirmedSent, sent);
                    if (state == LeaseState.CancelRequested) Cancel();
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
        }

        private void Cancel()
        {
            try { run.Cancel(); } catch (ObjectDisposedException) { }
        }
    }

    private void Finish(string id, int attempt, JobState state, string error, string code)
    {
        if (store.FinishJob(id, (int)state, [(int)JobState.Running], "[]", "{}", error, code, DateTimeOffset.UtcNow, (jobs.HostId, attempt)))
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
