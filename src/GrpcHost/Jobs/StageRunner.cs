using WeakTeacher.Engine;
using Grpc.Core;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Runtime;
using JobKind = WeakTeacher.Grpc.V1.JobKind;
using ArtifactKind = WeakTeacher.Grpc.V1.ArtifactKind;
using DatasetFormat = WeakTeacher.Grpc.V1.DatasetFormat;
using WeakTeacher.GrpcHost.Storage;
using V1 = WeakTeacher.Grpc.V1;
using EngineProgress = WeakTeacher.Engine.Pipeline.JobProgress;

namespace WeakTeacher.GrpcHost.Jobs;

/// <summary>What a finished stage left: its artifacts (name -> path under the work folder) and result metrics.</summary>
internal sealed record StageOutput(IReadOnlyDictionary<string, string> Artifacts, IReadOnlyDictionary<string, double> Metrics);

/// <summary>A finished job's outputs, published to the data folder but not yet listed: the job's artifact entries and the
/// model and dataset records that its success lists.</summary>
internal sealed record JobOutputs(List<ArtifactEntry> Artifacts, List<ModelRecord> Models, List<DatasetRecord> Datasets);

/// <summary>Runs one job's engine stage in its work folder (a second call with the same folder resumes from its checkpoint).</summary>
internal sealed class StageRunner(Catalog catalog)
{
    public async Task<StageOutput> RunAsync(JobRecord job, string device, string workDir, IProgress<EngineProgress> progress, CancellationToken ct)
    {
        var kind = (JobKind)job.Kind;
        // Ids are resolved again now: an input deleted while the job waited fails it with NOT_FOUND.
        object request = Resolve(job, device);
        Directory.CreateDirectory(workDir);
        try
        {
            return await RunStageAsync(request, kind, job, workDir, progress, ct);
        }
        catch (Exception e) when (e is not (OperationCanceledException or RpcException) && DeletedInput(job, device) is { } deleted)
        {
            // an input deleted while the job read it (its files gone mid-load) is NOT_FOUND too, not an internal error
            throw deleted;
        }
    }

    /// <summary>The NOT_FOUND of an input that no longer resolves; null while every input still does.</summary>
    private RpcException? DeletedInput(JobRecord job, string device)
    {
        try { Resolve(job, device); }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound) { return e; }
        catch (Exception) { }
        return null;
    }

    private object Resolve(JobRecord job, string device) =>
        (JobKind)job.Kind switch
        {
            JobKind.Train => RequestTranslation.Train(V1.TrainRequest.Parser.ParseJson(job.ConfigJson), catalog, device),
            JobKind.Label or JobKind.LabelShard => RequestTranslation.Label(V1.LabelRequest.Parser.ParseJson(job.ConfigJson), catalog, device),
            JobKind.Align => RequestTranslation.Align(V1.AlignRequest.Parser.ParseJson(job.ConfigJson), catalog, device),
            JobKind.Evaluate => RequestTranslation.Evaluate(V1.EvaluateRequest.Parser.ParseJson(job.ConfigJson), catalog, device),
            _ => throw new InvalidOperationException($"job {job.Id} has unknown kind {job.Kind}"),
        };

    private static async Task<StageOutput> RunStageAsync(object request, JobKind kind, JobRecord job, string workDir, IProgress<EngineProgress> progress, CancellationToken ct)
    {
        var result = request switch
        {
            TrainTeacherRequest r => await PipelineStages.TrainTeacherAsync(r, workDir, progress, ct),
            // a shard labels its slice into the parent's folder; the parent, once every shard succeeded, merges them
            LabelRequest r when kind == JobKind.LabelShard => await Task.Run(() => Shard(r, job, workDir, progress, ct), ct),
            LabelRequest when job.Children > 0 => await Task.Run(() => LabelShards.Merge(workDir), ct),
            LabelRequest r => await PipelineStages.LabelAsync(r, workDir, progress, ct),
            AlignRequest r => await PipelineStages.AlignAsync(r, workDir, progress, ct),
            EvaluateRequest r => await PipelineStages.EvaluateAsync(r, workDir, progress, ct),
            _ => throw new InvalidOperationException($"no stage for {request.GetType().Name}"),
        };
        return new StageOutput(result.Artifacts, result.Metrics);
    }

    private static StageResult Shard(LabelRequest request, JobRecord job, string parentWorkDir, IProgress<EngineProgress> progress, CancellationToken ct)
    {
        int count = V1.LabelRequest.Parser.ParseJson(job.ConfigJson).ShardCount;
        var shard = LabelShards.RunShard(request, parentWorkDir, job.ShardIndex, count, progress, ct);
        return new StageResult(new Dictionary<string, string>(), new Dictionary<string, double>
        {
            ["first_row"] = shard.FirstRow, ["rows"] = shard.Rows, ["seconds"] = shard.Seconds,
        });
    }

    /// <summary>
    /// The shard jobs a Label job with shard_count > 1 is split into when first claimed (null for any other job, and for
    /// one split already): one per shard, each with the parent's request, run in the parent's work folder.
    /// </summary>
    public static IReadOnlyList<JobRecord>? ShardsOf(JobRecord job)
    {
        if ((JobKind)job.Kind != JobKind.Label || job.Children > 0) return null;
        int count = V1.LabelRequest.Parser.ParseJson(job.ConfigJson).ShardCount;
        if (count <= 1) return null;
        var now = DateTimeOffset.UtcNow;
        return Enumerable.Range(0, count).Select(i => new JobRecord($"{job.Id}-shard-{i}", (int)JobKind.LabelShard, (int)V1.JobState.Queued,
            job.ConfigJson, null, "[]", "{}", "", "", now, null, null, 0, job.Id, i)).ToList();
    }

    /// <summary>
    /// Publishes a finished stage's outputs: folders become models, "labelled"/"dataset" files become datasets, other
    /// files stay with the job (DownloadJobArtifact). Nothing is listed here: the job's success lists them all at once.
    /// Ids derive from the job id, so publishing again after a crash keeps what the earlier attempt published.
    /// </summary>
    public JobOutputs Register(JobRecord job, StageOutput output, string workDir, string? outputName)
    {
        var entries = new List<ArtifactEntry>();
        var models = new List<ModelRecord>();
        var datasets = new List<DatasetRecord>();
        var suffix = job.Id["job-".Length..];
        var kindName = ((JobKind)job.Kind).ToString().ToLowerInvariant();
        foreach (var (name, rawPath) in output.Artifacts.OrderBy(a => a.Key, StringComparer.Ordinal))
        {
            var path = Path.IsPathRooted(rawPath) ? rawPath : Path.Combine(workDir, rawPath);
            // a holder whose lease lapsed must not publish what its (maybe interrupted) run left for another's success
            WriteFence.Check(path);
            var safe = new string(name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '_').ToArray());
            var display = name is "model" or "labelled" or "teacher" ? outputName ?? $"{kindName}-{job.Id}" : $"{outputName ?? kindName + "-" + job.Id}-{safe}";
            if (Directory.Exists(path))
            {
                var id = $"mdl-{suffix}-{safe}";
                models.Add(catalog.CopyModelDir(id, display, path, $"job:{job.Id}"));
                entries.Add(new ArtifactEntry(name, (int)ArtifactKind.Model, id));
            }
            else if (File.Exists(path) && name is "labelled" or "dataset" or "data")
            {
                var id = $"ds-{suffix}-{safe}";
                // a Label job's output holds the teacher's preference on every row
                var format = name == "labelled" ? DatasetFormat.Labelled : DatasetFormat.Unspecified;
                datasets.Add(catalog.CopyDatasetFile(id, display, path, format, $"job:{job.Id}"));
                entries.Add(new ArtifactEntry(name, (int)ArtifactKind.Dataset, id));
            }
            else if (File.Exists(path))
            {
                var target = Path.Combine(catalog.Layout.JobArtifactsDir(job.Id), safe + Path.GetExtension(path));
                if (!File.Exists(target))
                    AtomicFile.Write(target, stream => { using var source = File.OpenRead(path); source.CopyTo(stream); }); // streamed, not read whole
                entries.Add(new ArtifactEntry(name, (int)ArtifactKind.File, name));
            }
            else
            {
                throw new InvalidOperationException($"stage artifact '{name}' at {path} does not exist");
            }
            Failpoints.Hit(Failpoints.OutputPublished);
        }
        return new JobOutputs(entries, models, datasets);
    }

    public string? ArtifactFile(string jobId, string name)
    {
        var safe = new string(name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '_').ToArray());
        var dir = catalog.Layout.JobArtifactsDir(jobId);
        if (!Directory.Exists(dir)) return null;
        return Directory.EnumerateFiles(dir).FirstOrDefault(f =>
            Path.GetFileNameWithoutExtension(f) == safe && !Path.GetFileName(f).Contains(".tmp-", StringComparison.Ordinal));
    }
}
