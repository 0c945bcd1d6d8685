using System.Collections.Concurrent;
using System.Threading.Channels;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Storage;
using WeakTeacher.GrpcHost.Validation;
using EngineProgress = WeakTeacher.Engine.Pipeline.JobProgress;

namespace WeakTeacher.GrpcHost.Jobs;

internal sealed record ArtifactEntry(string Name, int Kind, string Id);

/// <summary>
/// The job queue (bounded: a start beyond Limits:QueueCapacity is refused), the cancellation handles of this host's
/// running jobs, and the fan-out of progress events to WatchJob streams. The queue itself is the store's jobs table
/// (workers claim from it, so with a shared store any host's worker may take a job queued at another); this holds
/// only what is in flight here.
/// </summary>
internal sealed class JobManager
{
    private readonly ConcurrentDictionary<string, CancellationTokenSource> running = new();
    private readonly ConcurrentDictionary<string, ConcurrentDictionary<Guid, Channel<JobEvent>>> watchers = new();
    // Wakes an idle worker when a job is queued here; jobs queued at other hosts are found by polling.
    private readonly SemaphoreSlim queued = new(0);
    private readonly Store store;
    private readonly ServiceOptions options;

    public JobManager(Store store, ServiceOptions options)
    {
        this.store = store;
        this.options = options;
        HostId = options.JobStore.ResolvedHostId;
    }

    /// <summary>This host's name in the jobs' lease records.</summary>
    public string HostId { get; }

    public static readonly JsonFormatter Json = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(false));
    public static readonly JsonParser Parser = new(JsonParser.Settings.Default.WithIgnoreUnknownFields(false));

    public int QueueLength => store.CountJobs(JobState.Queued);
    public int RunningCount => running.Count;
    public bool IsRunningHere(string id) => running.ContainsKey(id);

    /// <summary>Wakes this host's idle workers for <paramref name="count"/> jobs queued here (a job's shards).</summary>
    public void Queued(int count) => queued.Release(count);

    /// <summary>Waits until a job is queued at this host or the poll interval passed.</summary>
    public Task WaitForWorkAsync(CancellationToken ct) => queued.WaitAsync(options.JobStore.Poll, ct);

    /// <summary>
    /// Records a job as queued and puts it on the queue, or refuses with RESOURCE_EXHAUSTED when the queue is full.
    /// A <paramref name="requestId"/> already used returns the job it made (same kind and request) or ALREADY_EXISTS.
    /// </summary>
    public (JobRecord Job, bool Created) Enqueue(JobKind kind, IMessage request, string requestId)
    {
        var config = Json.Format(request);
        if (requestId.Length > 0 && store.JobByRequestId(requestId) is { } earlier) return (SameRequest(earlier, kind, config, requestId), false);
        if (store.CountJobs(JobState.Queued) >= options.Limits.QueueCapacity)
        {
            throw new RpcException(new Status(StatusCode.ResourceExhausted,
                $"job queue is full ({options.Limits.QueueCapacity} waiting, Limits:QueueCapacity); retry later"));
        }
        var record = new JobRecord(DataLayout.NewId("job"), (int)kind, (int)JobState.Queued, config, null, "[]", "{}",
            "", "", DateTimeOffset.UtcNow, null, null, 0);
        if (store.InsertJob(record, requestId) is { } raced) return (SameRequest(raced, kind, config, requestId), false);
        queued.Release();
        return (record, true);
    }

    private static JobRecord SameRequest(JobRecord earlier, JobKind kind, string config, string requestId) =>
        earlier.Kind == (int)kind && earlier.ConfigJson == config ? earlier
            : throw new RpcException(new Status(StatusCode.AlreadyExists,
                $"request_id: '{RequestErrors.Echo(requestId)}' was used by job {earlier.Id} for a different request; use a new request_id"));

    /// <summary>
    /// At start-up: frees the leases this host held before it stopped (the embedded store's are all this host's; a
    /// shared store's, those under this host's id), so their jobs resume from their checkpoints now. Returns how many
    /// jobs wait to run.
    /// </summary>
    public int Recover() => store.ReleaseLeases(store.Shared ? HostId : null);

    public CancellationTokenSource Started(string id, CancellationToken hostStopping)
    {
        var cts = CancellationTokenSource.CreateLinkedTokenSource(hostStopping);
        running[id] = cts;
        return cts;
    }

    public void Ended(string id)
    {
        if (running.TryRemove(id, out var cts)) cts.Dispose();
    }

    public Job Cancel(string id)
    {
        var record = store.GetJob(id) ?? throw RequestErrors.NotFound("job_id", "job", id);
        if (record.State == (int)JobState.Queued &&
            store.FinishJob(id, (int)JobState.Cancelled, [(int)JobState.Queued], "[]", "{}", "cancelled before it started", "CANCELLED", DateTimeOffset.UtcNow))
        {
            PublishState(id, JobState.Cancelled, "cancelled before it started", "CANCELLED");
        }
        else
        {
            // Whichever host runs it (or its shards) sees the request at its next lease renewal; here at once. A job
            // waiting for its shards is held by no host: the store cancels it now.
            if (store.RequestCancel(id, DateTimeOffset.UtcNow)) PublishState(id, JobState.Cancelled, "cancelled by a client", "CANCELLED");
            foreach (var child in record.Children > 0 ? store.ChildJobs(id).Select(c => c.Id).Append(id) : [id])
                if (running.TryGetValue(child, out var cts))
                {
                    try { cts.Cancel(); } catch (ObjectDisposedException) { }
                }
        }
        return ToProto(store.GetJob(id)!);
    }

    public bool IsCancelRequested(string id) => running.TryGetValue(id, out var cts) && cts.IsCancellationRequested;

    // ---- watchers

    public (Guid Id, ChannelReader<JobEvent> Events) Subscribe(string jobId)
    {
        var channel = Channel.CreateBounded<JobEvent>(new BoundedChannelOptions(1024) { FullMode = BoundedChannelFullMode.DropOldest });
        var id = Guid.NewGuid();
        watchers.GetOrAdd(jobId, _ => new())[id] = channel;
        return (id, channel.Reader);
    }

    public void Unsubscribe(string jobId, Guid id)
    {
        if (watchers.TryGetValue(jobId, out var set)) set.TryRemove(id, out _);
    }

    private void Publish(string jobId, JobEvent e)
    {
        if (!watchers.TryGetValue(jobId, out var set)) return;
        foreach (var channel in set.Values) channel.Writer.TryWrite(e);
    }

    public void PublishState(string jobId, JobState state, string error = "", string errorCode = "") =>
        Publish(jobId, new JobEvent
        {
            JobId = jobId, Time = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow),
            StateChange = new JobStateChange { State = state, Error = error, ErrorCode = errorCode },
        });

    public void PublishProgress(string jobId, JobProgress progress) =>
        Publish(jobId, new JobEvent { JobId = jobId, Time = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow), Progress = progress });

    // ---- conversions

    public static JobProgress ToProto(EngineProgress p)
    {
        var progress = new JobProgress { Stage = p.Stage, Step = p.Step, TotalSteps = p.TotalSteps, TokensPerSecond = p.TokensPerSecond };
        foreach (var (name, value) in p.Metrics) progress.Metrics[name] = value;
        if (p.Metrics.TryGetValue("loss", out var loss)) progress.Loss = loss;
        if (p.Eta is { } eta) progress.EtaSeconds = eta.TotalSeconds;
        return progress;
    }

    public static Job ToProto(JobRecord r)
    {
        var job = new Job
        {
            Id = r.Id, Kind = (JobKind)r.Kind, State = (JobState)r.State, ConfigJson = r.ConfigJson, Error = r.Error, ErrorCode = r.ErrorCode,
            CreatedAt = Timestamp.FromDateTimeOffset(r.CreatedAt), Attempts = r.Attempts, ParentJobId = r.ParentId ?? "", ShardIndex = r.ShardIndex,
        };
        if (r.StartedAt is { } started) job.StartedAt = Timestamp.FromDateTimeOffset(started);
        if (r.FinishedAt is { } finished) job.FinishedAt = Timestamp.FromDateTimeOffset(finished);
        if (r.Children > 0) job.Progress = new JobProgress { Stage = "label/shards", Step = r.Children - r.WaitingChildren, TotalSteps = r.Children };
        else if (r.ProgressJson is not null) job.Progress = JobProgress.Parser.ParseJson(r.ProgressJson);
        foreach (var a in System.Text.Json.JsonSerializer.Deserialize<List<ArtifactEntry>>(r.ArtifactsJson) ?? [])
            job.Artifacts.Add(new Artifact { Name = a.Name, Kind = (ArtifactKind)a.Kind, Id = a.Id });
        foreach (var (name, value) in System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, double>>(r.MetricsJson) ?? [])
            job.Metrics[name] = value;
        return job;
    }
}
