using Google.Protobuf;
using Grpc.Core;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Jobs;
using WeakTeacher.GrpcHost.Storage;
using WeakTeacher.GrpcHost.Validation;

namespace WeakTeacher.GrpcHost.Services;

internal sealed class JobsServiceImpl(JobManager jobs, Store store, Catalog catalog, StageRunner runner, ServiceOptions options,
    ILogger<JobsServiceImpl> logger) : JobsService.JobsServiceBase
{
    private string Device => options.Devices.Length > 0 ? options.Devices[0] : "cpu";

    private Task<StartJobResponse> Start(JobKind kind, IMessage request, string requestId, ServerCallContext context)
    {
        requestId = RequestErrors.RequestId(requestId);
        RequestErrors.CallStillWanted(context);
        var (record, created) = jobs.Enqueue(kind, request, requestId);
        using (logger.BeginScope(new Dictionary<string, object> { ["JobId"] = record.Id }))
            logger.LogInformation(created ? "Job queued: {Kind}" : "Job {Kind} returned again for its request_id", kind);
        return Task.FromResult(new StartJobResponse { JobId = record.Id, Job = JobManager.ToProto(record) });
    }

    public override Task<StartJobResponse> Train(TrainRequest request, ServerCallContext context)
    {
        RequestTranslation.Train(request, catalog, Device);
        return Start(JobKind.Train, request, request.RequestId, context);
    }

    public override Task<StartJobResponse> Label(LabelRequest request, ServerCallContext context)
    {
        RequestTranslation.Label(request, catalog, Device);
        return Start(JobKind.Label, request, request.RequestId, context);
    }

    public override Task<StartJobResponse> Align(AlignRequest request, ServerCallContext context)
    {
        RequestTranslation.Align(request, catalog, Device);
        return Start(JobKind.Align, request, request.RequestId, context);
    }

    public override Task<StartJobResponse> Evaluate(EvaluateRequest request, ServerCallContext context)
    {
        RequestTranslation.Evaluate(request, catalog, Device);
        return Start(JobKind.Evaluate, request, request.RequestId, context);
    }

    private JobRecord Get(string? id)
    {
        RequestErrors.Required("job_id", id);
        return store.GetJob(id!) ?? throw RequestErrors.NotFound("job_id", "job", id!);
    }

    public override Task<Job> GetJob(GetJobRequest request, ServerCallContext context) =>
        Task.FromResult(JobManager.ToProto(Get(request.JobId)));

    public override Task<ListJobsResponse> ListJobs(ListJobsRequest request, ServerCallContext context)
    {
        if (!Enum.IsDefined(request.State)) throw RequestErrors.Invalid("state", $"unknown value {(int)request.State}");
        if (!Enum.IsDefined(request.Kind)) throw RequestErrors.Invalid("kind", $"unknown value {(int)request.Kind}");
        if (request.PageSize < 0 || request.PageSize > 1000) throw RequestErrors.Invalid("page_size", $"{request.PageSize} must be in [0, 1000]");
        var response = new ListJobsResponse();
        var records = store.ListJobs(request.State == JobState.Unspecified ? null : (int)request.State,
            request.Kind == JobKind.Unspecified ? null : (int)request.Kind, request.PageSize == 0 ? 100 : request.PageSize);
        response.Jobs.AddRange(records.Select(JobManager.ToProto));
        return Task.FromResult(response);
    }

    public override async Task WatchJob(WatchJobRequest request, IServerStreamWriter<JobEvent> responseStream, ServerCallContext context)
    {
        var id = request.JobId;
        Get(id);
        // Subscribe before reading the snapshot so no state change falls between them.
        var (subscription, events) = jobs.Subscribe(id);
        try
        {
            var snapshot = JobManager.ToProto(Get(id));
            await responseStream.WriteAsync(new JobEvent
            {
                JobId = id, Time = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow), Snapshot = snapshot,
            }, context.CancellationToken);
            if (IsFinal(snapshot.State)) return;
            var state = snapshot.State;
            var progress = ProgressOf(Get(id));
            while (true)
            {
                JobEvent? e = null;
                using (var tick = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken))
                {
                    tick.CancelAfter(options.JobStore.Poll);
                    try { e = await events.ReadAsync(tick.Token); }
                    catch (OperationCanceledException) when (!context.CancellationToken.IsCancellationRequested) { }
                }
                if (e is not null)
                {
                    if (e.EventCase == JobEvent.EventOneofCase.StateChange)
                    {
                        if (e.StateChange.State == state) continue; // already sent from the store
                        state = e.StateChange.State;
                    }
                    await responseStream.WriteAsync(e, context.CancellationToken);
                    if (IsFinal(state)) return;
                    continue;
                }
                // Nothing from this host for a poll interval: with a shared store the job may run on another host, so
                // send what the store says changed (its progress only when it does not run here, whose events came above).
                var record = Get(id);
                var now = DateTimeOffset.UtcNow;
                var current = ProgressOf(record);
                if (current is { } p && p != progress && !jobs.IsRunningHere(id))
                    await responseStream.WriteAsync(new JobEvent
                    {
                        JobId = id, Time = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(now), Progress = JobProgress.Parser.ParseJson(p),
                    }, context.CancellationToken);
                progress = current;
                if ((JobState)record.State != state)
                {
                    state = (JobState)record.State;
                    await responseStream.WriteAsync(new JobEvent
                    {
                        JobId = id, Time = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(now),
                        StateChange = new JobStateChange { State = state, Error = record.Error, ErrorCode = record.ErrorCode },
                    }, context.CancellationToken);
                    if (IsFinal(state)) return;
                }
            }
        }
        finally
        {
            jobs.Unsubscribe(id, subscription);
        }
    }

    /// <summary>The progress GetJob reports (a sharded job's: over its shards), as JSON to compare.</summary>
    private static string? ProgressOf(JobRecord record) => JobManager.ToProto(record).Progress is { } p ? JobManager.Json.Format(p) : null;

    private static bool IsFinal(JobState state) => state is JobState.Succeeded or JobState.Failed or JobState.Cancelled;

    public override Task<Job> CancelJob(CancelJobRequest request, ServerCallContext context)
    {
        Get(request.JobId);
        logger.LogInformation("Cancel requested for job {JobId}", request.JobId);
        return Task.FromResult(jobs.Cancel(request.JobId));
    }

    public override async Task DownloadJobArtifact(DownloadJobArtifactRequest request, IServerStreamWriter<FileChunk> responseStream, ServerCallContext context)
    {
        var job = Get(request.JobId);
        RequestErrors.Required("name", request.Name);
        var artifact = JobManager.ToProto(job).Artifacts.FirstOrDefault(a => a.Name == request.Name && a.Kind == ArtifactKind.File)
            ?? throw RequestErrors.NotFound("name", $"file artifact of job {job.Id}", request.Name);
        var path = runner.ArtifactFile(job.Id, artifact.Name) ?? throw RequestErrors.NotFound("name", "artifact file", request.Name);
        await FileStreaming.SendFile(path, Path.GetFileName(path), Math.Min(1 << 20, options.Limits.MaxMessageBytes - 1024), responseStream, context.CancellationToken);
    }
}
