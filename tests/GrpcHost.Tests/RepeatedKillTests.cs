using System.Diagnostics;
using System.Text.Json;
using Grpc.Core;
using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// One Train job on one data folder, killed with SIGKILL again and again at different points (issue 9, repeated-fault
/// test): during SFT, while the SFT model is being saved, right after SFT is recorded, during the reference log-prob
/// pass, during DPO, while the DPO model is being saved and while the job's outputs are being registered; the host is
/// restarted after each kill. The kill during SFT follows the job's progress events; the other points (a step of a
/// resumed job, a save, the reference pass, registration) are named failpoints (WT_FAILPOINTS, src/Engine/Runtime/Failpoints.cs)
/// at which the host waits until it is killed. At every restart, at every failpoint and at the end, nothing of the
/// unfinished job is listed and no listed folder holds a partial file; the final weights are byte-identical to an
/// uninterrupted run's.
/// </summary>
[Collection("default-task")]
public sealed class RepeatedKillTests(DefaultTaskHost shared)
{
    private const int Steps = 24, SaveSteps = 4;

    // Bit-exact comparison of CPU runs needs a fixed threading.
    private static IReadOnlyDictionary<string, string> SingleThreaded => HostProcess.SingleThreaded;

    private readonly List<string> problems = [];
    private readonly List<string> record = [];
    private long peakRss;
    private readonly Stopwatch clock = Stopwatch.StartNew();

    [Fact]
    public async Task A_job_killed_at_seven_points_and_restarted_each_time_ends_with_an_uninterrupted_runs_weights_and_never_lists_anything_partial()
    {
        await shared.RequireStagesAsync();
        var dataDir = HostProcess.NewDataDir();
        string jobId;

        // 1. during SFT (past its first checkpoint)
        await using (var host = await Start(dataDir, failpoint: null))
        {
            var baseModel = await new ModelsService.ModelsServiceClient(host.Channel).ImportModelAsync(new ImportModelRequest { Path = "teacher-base" });
            var data = await new DatasetsService.DatasetsServiceClient(host.Channel).ImportDatasetAsync(new ImportDatasetRequest { Path = "data/labelled.jsonl" });
            jobId = (await new JobsService.JobsServiceClient(host.Channel).TrainAsync(PipelineTests.TeacherRequest(baseModel.Id, data.Id, Steps, SaveSteps))).JobId;
            await KillOnProgress(host, jobId, "teacher/sft", SaveSteps + 2);
        }
        var work = Path.Combine(dataDir, "jobs", jobId, "work");

        // 2. while the SFT model is being saved: its files are in the temporary save folder inside the SFT folder
        await using (var host = await Start(dataDir, "model-save.staged"))
            await KillAtFailpoint(host, jobId, "model-save.staged", "SFT model save");
        Assert.True(Directory.EnumerateDirectories(Path.Combine(work, "sft"), ".save-*").Any(), "the kill did not land inside the SFT model save");

        // 3. right after SFT: its result is recorded, its checkpoints (with optimizer state) not yet removed
        await using (var host = await Start(dataDir, "train-result.recorded"))
            await KillAtFailpoint(host, jobId, "train-result.recorded", "SFT result recorded");
        Assert.True(File.Exists(Path.Combine(work, "sft", "train-result.json")) && Directory.EnumerateDirectories(Path.Combine(work, "sft"), "checkpoint-*").Any(),
            "the kill did not land between SFT's result and the removal of its checkpoints");

        // 4. during the reference log-prob pass: a batch done, the cache not written
        await using (var host = await Start(dataDir, "reference-logps.batch"))
            await KillAtFailpoint(host, jobId, "reference-logps.batch", "reference pass");
        var referenceCache = Path.Combine(work, "dpo", "reference-logps");
        Assert.False(Directory.Exists(referenceCache) && Directory.EnumerateFiles(referenceCache, "*.safetensors").Any(),
            "the kill did not land inside the reference pass (its cache was already written)");

        // 5. during DPO, past its first checkpoint. A failpoint, not a progress event: the job resumes while the host starts,
        // and DPO's steps could pass (all of them, on a slow machine) before a watch is subscribed.
        await using (var host = await Start(dataDir, $"training.step@{SaveSteps + 2}"))
            await KillAtFailpoint(host, jobId, "training.step", $"DPO step {SaveSteps + 2}");
        Assert.True(File.Exists(Path.Combine(work, "dpo", "checkpoint-" + SaveSteps, "trainer_state.json")) && !File.Exists(Path.Combine(work, "dpo", "train-result.json")),
            "the kill did not land inside DPO's training");

        // 6. while the DPO model (LoRA merged) is being saved
        await using (var host = await Start(dataDir, "model-save.staged"))
            await KillAtFailpoint(host, jobId, "model-save.staged", "DPO model save");
        Assert.True(Directory.EnumerateDirectories(Path.Combine(work, "dpo"), ".save-*").Any(), "the kill did not land inside the DPO model save");

        // 7. while the job's outputs are being registered: one published to the data folder, the others not yet
        await using (var host = await Start(dataDir, "register.output-published"))
            await KillAtFailpoint(host, jobId, "register.output-published", "registration");
        Assert.True(Directory.EnumerateDirectories(Path.Combine(dataDir, "models"), $"mdl-{jobId["job-".Length..]}-*").Any(),
            "the kill did not land inside the registration (no output published yet)");

        // 8. the last restart runs the job to its end
        Job job;
        Dictionary<string, byte[]> resumedPolicy;
        await using (var host = await Start(dataDir, failpoint: null))
        {
            var jobs = new JobsService.JobsServiceClient(host.Channel);
            await CheckRestart(host);
            try { job = await PipelineTests.WaitForEnd(jobs, jobId, TimeSpan.FromMinutes(3)); }
            catch (RpcException e) { throw new Xunit.Sdk.XunitException($"waiting for the job: {e.Status}\n{PipelineTests.Tail(host.Log)}"); }
            Assert.True(job.State == JobState.Succeeded, $"{job.State} {job.Error}\n{PipelineTests.Tail(host.Log)}");
            Assert.Equal(8, job.Attempts);
            await CheckListed(host, jobId, "after the job succeeded", finished: true);
            resumedPolicy = await Client.DownloadModel(host.Channel, job.Artifacts.Single(a => a.Name == "policy").Id);
            Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(dataDir, "tmp")));
            peakRss = Math.Max(peakRss, HostileRequestTests.PeakResidentBytes(host.ProcessId));
        }
        record.Add($"{clock.Elapsed.TotalSeconds:F0}s: succeeded after {job.Attempts} attempts");

        // The uninterrupted run of the same request, on a host and data folder of its own.
        await using (var host = await HostProcess.StartAsync(HostProcess.NewDataDir(), ["--ImportDir", shared.TaskDir], environment: SingleThreaded))
        {
            var baseModel = await new ModelsService.ModelsServiceClient(host.Channel).ImportModelAsync(new ImportModelRequest { Path = "teacher-base" });
            var data = await new DatasetsService.DatasetsServiceClient(host.Channel).ImportDatasetAsync(new ImportDatasetRequest { Path = "data/labelled.jsonl" });
            var jobs = new JobsService.JobsServiceClient(host.Channel);
            var reference = await PipelineTests.WaitForEnd(jobs, (await jobs.TrainAsync(PipelineTests.TeacherRequest(baseModel.Id, data.Id, Steps, SaveSteps))).JobId);
            Assert.Equal(JobState.Succeeded, reference.State);
            var uninterrupted = await Client.DownloadModel(host.Channel, reference.Artifacts.Single(a => a.Name == "policy").Id);
            // The same files (TensorBoard event files are named by their writer's time and process, one per attempt) ...
            static IEnumerable<string> Named(Dictionary<string, byte[]> files) =>
                files.Keys.Where(k => !Path.GetFileName(k).StartsWith("events.out.tfevents.", StringComparison.Ordinal)).Order(StringComparer.Ordinal);
            if (!Named(uninterrupted).SequenceEqual(Named(resumedPolicy)))
                problems.Add($"the policy's files differ from the uninterrupted run's: [{string.Join(", ", Named(resumedPolicy))}] vs [{string.Join(", ", Named(uninterrupted))}]");
            // ... and byte-identical weights (policy, its LoRA adapter, the reference log-prob cache).
            var weights = uninterrupted.Keys.Where(k => k.EndsWith(".safetensors", StringComparison.Ordinal)).ToList();
            Assert.Contains("model.safetensors", weights);
            foreach (var file in weights)
                Assert.True(resumedPolicy.TryGetValue(file, out var bytes) && bytes.AsSpan().SequenceEqual(uninterrupted[file]),
                    $"{file} differs between the killed-and-restarted and the uninterrupted run");
            peakRss = Math.Max(peakRss, HostileRequestTests.PeakResidentBytes(host.ProcessId));
        }

        var output = TestContext.Current.TestOutputHelper;
        foreach (var line in record) output?.WriteLine(line);
        output?.WriteLine($"repeated kill: 7 kills, 8 starts of the job's host, {clock.Elapsed.TotalSeconds:F0}s in all; host peak RSS {peakRss >> 20} MiB");
        Assert.True(problems.Count == 0, $"{problems.Count} problems:\n{string.Join("\n", problems)}");
        // Measured about 270 MiB (libtorch and the tiny task's models); the bound leaves room, not a leak.
        const long Bound = 1L << 30;
        Assert.True(peakRss < Bound, $"host peak RSS {peakRss >> 20} MiB is above the {Bound >> 20} MiB bound");
    }

    /// <summary>A host on <paramref name="dataDir"/> (which re-queues the job), stopping at <paramref name="failpoint"/>.</summary>
    private async Task<HostProcess> Start(string dataDir, string? failpoint)
    {
        var environment = new Dictionary<string, string>(SingleThreaded);
        if (failpoint is not null) environment["WT_FAILPOINTS"] = failpoint;
        var host = await HostProcess.StartAsync(dataDir, ["--ImportDir", shared.TaskDir], environment: environment);
        record.Add($"{clock.Elapsed.TotalSeconds:F0}s: host started" + (failpoint is null ? "" : $" with {failpoint}"));
        return host;
    }

    /// <summary>What a restarted host lists of the unfinished jobs it resumes.</summary>
    private async Task CheckRestart(HostProcess host)
    {
        var unfinished = (await new JobsService.JobsServiceClient(host.Channel).ListJobsAsync(new ListJobsRequest())).Jobs
            .Where(j => j.State is not (JobState.Succeeded or JobState.Failed or JobState.Cancelled));
        foreach (var job in unfinished) await CheckListed(host, job.Id, "at a restart", finished: false);
    }

    private async Task KillOnProgress(HostProcess host, string jobId, string stage, int step)
    {
        var jobs = new JobsService.JobsServiceClient(host.Channel);
        using (var watch = jobs.WatchJob(new WatchJobRequest { JobId = jobId }, deadline: DateTime.UtcNow.AddMinutes(3)))
        {
            // subscribed (the snapshot came) before the restart checks, so no progress event is missed while they run
            Assert.True(await watch.ResponseStream.MoveNext(TestContext.Current.CancellationToken));
            await CheckRestart(host);
            await foreach (var e in watch.ResponseStream.ReadAllAsync(TestContext.Current.CancellationToken))
            {
                Assert.False(e.StateChange?.State is JobState.Succeeded or JobState.Failed, $"the job ended before it could be killed: {e}\n{PipelineTests.Tail(host.Log)}");
                if (e.Progress is { } p && p.Stage == stage && p.Step >= step)
                {
                    record.Add($"{clock.Elapsed.TotalSeconds:F0}s: kill during {stage} at step {p.Step}/{p.TotalSteps}");
                    break;
                }
            }
        }
        await CheckListed(host, jobId, $"during {stage}", finished: false);
        Kill(host);
    }

    private async Task KillAtFailpoint(HostProcess host, string jobId, string failpoint, string what)
    {
        await CheckRestart(host);
        var reached = WeakTeacher.Engine.Runtime.Failpoints.ReachedLine(failpoint);
        var deadline = DateTime.UtcNow.AddMinutes(3);
        var jobs = new JobsService.JobsServiceClient(host.Channel);
        while (!host.Log.Contains(reached, StringComparison.Ordinal))
        {
            var job = await jobs.GetJobAsync(new GetJobRequest { JobId = jobId });
            Assert.False(job.State is JobState.Succeeded or JobState.Failed, $"the job ended before {what}: {job.State} {job.Error}\n{PipelineTests.Tail(host.Log)}");
            Assert.True(DateTime.UtcNow < deadline, $"{reached} did not appear in 3 minutes\n{PipelineTests.Tail(host.Log)}");
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        record.Add($"{clock.Elapsed.TotalSeconds:F0}s: kill during {what} (failpoint {failpoint})");
        await CheckListed(host, jobId, $"during {what}", finished: false);
        Kill(host);
    }

    private void Kill(HostProcess host)
    {
        peakRss = Math.Max(peakRss, HostileRequestTests.PeakResidentBytes(host.ProcessId));
        host.Kill();
    }

    /// <summary>
    /// What clients see: of an unfinished job no model, dataset or artifact; of every listed model and dataset a folder with
    /// no partial file (a temporary save folder, a temporary file, a training checkpoint) and whole weight and JSON files.
    /// </summary>
    private async Task CheckListed(HostProcess host, string jobId, string when, bool finished)
    {
        var source = $"job:{jobId}";
        var models = (await new ModelsService.ModelsServiceClient(host.Channel).ListModelsAsync(new ListModelsRequest())).Models;
        var datasets = (await new DatasetsService.DatasetsServiceClient(host.Channel).ListDatasetsAsync(new ListDatasetsRequest())).Datasets;
        // Read after the lists: a job still unfinished now was unfinished when they were read (a job's success and the
        // listing of its outputs are one step). One that has just succeeded (the last start) proves nothing either way.
        var job = await new JobsService.JobsServiceClient(host.Channel).GetJobAsync(new GetJobRequest { JobId = jobId });
        if (!finished && job.State != JobState.Succeeded)
        {
            foreach (var m in models.Where(m => m.Source == source)) problems.Add($"{when}: model {m.Id} of the unfinished job is listed");
            foreach (var d in datasets.Where(d => d.Source == source)) problems.Add($"{when}: dataset {d.Id} of the unfinished job is listed");
            if (job.Artifacts.Count > 0) problems.Add($"{when}: the unfinished job shows {job.Artifacts.Count} artifacts");
        }
        else
        {
            Assert.Contains(models, m => m.Source == source);
        }
        foreach (var m in models)
        {
            var dir = Path.Combine(host.DataDir, "models", m.Id);
            foreach (var file in m.Files.Select(f => f.Path).Where(IsPartial)) problems.Add($"{when}: model {m.Id} lists {file}");
            foreach (var entry in Directory.EnumerateFileSystemEntries(dir, "*", SearchOption.AllDirectories))
            {
                var relative = Path.GetRelativePath(dir, entry);
                if (IsPartial(relative)) problems.Add($"{when}: model {m.Id}'s folder holds {relative}");
                else if (File.Exists(entry) && Damaged(entry) is { } damage) problems.Add($"{when}: model {m.Id}'s {relative} {damage}");
            }
        }
        foreach (var d in datasets)
            foreach (var entry in Directory.EnumerateFileSystemEntries(Path.Combine(host.DataDir, "datasets", d.Id), "*", SearchOption.AllDirectories))
                if (IsPartial(Path.GetFileName(entry))) problems.Add($"{when}: dataset {d.Id}'s folder holds {Path.GetFileName(entry)}");
    }

    /// <summary>A leftover of an interrupted write: a temporary save folder (.save-*), a temporary file (*.tmp-*,
    /// checkpoint-N.tmp) or a training checkpoint (checkpoint-N: resumable state, not part of a finished model).</summary>
    private static bool IsPartial(string relativePath) => relativePath.Split('/', '\\').Any(segment =>
        segment.StartsWith(".save-", StringComparison.Ordinal) || segment.Contains(".tmp", StringComparison.Ordinal) ||
        segment.StartsWith("checkpoint-", StringComparison.Ordinal));

    /// <summary>Why a weight or JSON file is not whole, or null: safetensors' header length and data offsets must match
    /// the file's size, JSON must parse (metrics.jsonl line by line).</summary>
    private static string? Damaged(string path)
    {
        var name = Path.GetFileName(path);
        try
        {
            if (name.EndsWith(".safetensors", StringComparison.Ordinal))
            {
                var bytes = File.ReadAllBytes(path);
                if (bytes.Length < 8) return $"is {bytes.Length} bytes";
                long headerLength = BitConverter.ToInt64(bytes, 0);
                if (headerLength <= 0 || 8 + headerLength > bytes.Length) return $"has a header of {headerLength} bytes in {bytes.Length}";
                using var header = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
                long end = header.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__")
                    .Select(p => p.Value.GetProperty("data_offsets")[1].GetInt64()).DefaultIfEmpty(0).Max();
                if (8 + headerLength + end != bytes.Length) return $"holds {bytes.Length} bytes, its header describes {8 + headerLength + end}";
            }
            else if (name.EndsWith(".json", StringComparison.Ordinal))
            {
                using var _ = JsonDocument.Parse(File.ReadAllBytes(path));
            }
            else if (name.EndsWith(".jsonl", StringComparison.Ordinal))
            {
                foreach (var line in File.ReadLines(path).Where(l => l.Length > 0)) { using var _ = JsonDocument.Parse(line); }
            }
        }
        catch (JsonException e)
        {
            return $"does not parse: {e.Message}";
        }
        return null;
    }
}
