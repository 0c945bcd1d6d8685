using System.Diagnostics;
using Grpc.Core;
using Grpc.Health.V1;
using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>A host started with --default-task (tiny): the embedded task's base models and datasets registered.</summary>
public sealed class DefaultTaskHost : IAsyncLifetime
{
    internal HostProcess Host { get; private set; } = null!;
    internal string TaskDir => Path.Combine(Host.DataDir, "default-task");
    /// <summary>The host's plain HTTP/1.1 endpoint (HttpUrl): /get_reward, /metrics.</summary>
    internal Uri HttpBase { get; private set; } = null!;

    public async ValueTask InitializeAsync()
    {
        var httpPort = HostProcess.FreePort();
        HttpBase = new Uri($"http://127.0.0.1:{httpPort}/");
        Host = await HostProcess.StartAsync(extraArgs: ["--default-task", "--DefaultTaskSize", "Tiny", "--HttpUrl", HttpBase.ToString().TrimEnd('/')],
            timeout: TimeSpan.FromMinutes(4));
    }

    public async ValueTask DisposeAsync()
    {
        if (Host is not null) await Host.DisposeAsync(); // null when the host did not start (that failure is reported)
    }

    /// <summary>Skips (with the reason) where this build of the host has no engine pipeline stages.</summary>
    internal async Task RequireStagesAsync()
    {
        try
        {
            await new JobsService.JobsServiceClient(Host.Channel).TrainAsync(new TrainRequest
            {
                BaseModelId = "default-teacher-base", LabelledDatasetId = "default-labelled", Template = "no-such-template",
            });
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unimplemented)
        {
            Assert.Skip($"the host was built without the engine pipeline stages: {e.Status.Detail}");
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.InvalidArgument) { }
    }
}

[CollectionDefinition("default-task")]
public sealed class DefaultTaskCollection : ICollectionFixture<DefaultTaskHost>;

[Collection("default-task")]
public sealed class PipelineTests(DefaultTaskHost shared)
{
    internal static TrainRequest TeacherRequest(string baseModel, string labelled, int steps, int saveSteps) => new()
    {
        BaseModelId = baseModel,
        LabelledDatasetId = labelled,
        Sft = new SftConfig { Args = Args(steps, saveSteps) },
        Dpo = new DpoConfig { Args = Args(steps, saveSteps) },
        OutputName = "resumed-teacher",
    };

    private static TrainingArguments Args(int steps, int saveSteps) =>
        new() { MaxSteps = steps, PerDeviceTrainBatchSize = 8, MaxLength = 96, MaxPromptLength = 48, SaveSteps = saveSteps, Seed = 11 };

    [Fact]
    public void The_default_task_is_registered()
    {
        var models = new ModelsService.ModelsServiceClient(shared.Host.Channel).ListModels(new ListModelsRequest()).Models;
        Assert.Contains(models, m => m.Id == "default-teacher-base" && m.ModelType == "opt");
        Assert.Contains(models, m => m.Id == "default-student-base" && m.ModelType == "opt");
        var datasets = new DatasetsService.DatasetsServiceClient(shared.Host.Channel).ListDatasets(new ListDatasetsRequest()).Datasets;
        Assert.Contains(datasets, d => d.Id == "default-labelled" && d.Rows > 0);
        Assert.Contains(datasets, d => d.Id == "default-unlabelled" && d.Format == DatasetFormat.Unlabelled);
        Assert.Contains(datasets, d => d.Id == "default-eval-prompts" && d.Format == DatasetFormat.Prompts);
    }

    [Fact]
    public async Task Node_client_drives_train_label_align_evaluate()
    {
        await shared.RequireStagesAsync();
        var nodeDir = Path.Combine(HostProcess.RepoRoot, "examples", "node");
        if (!Directory.Exists(Path.Combine(nodeDir, "node_modules", "@grpc", "grpc-js")) || !Directory.Exists(Path.Combine(nodeDir, "node_modules", "@grpc", "proto-loader")))
            Assert.Skip($"examples/node/node_modules is missing: run `npm install` in {nodeDir} (./build.sh test does)");
        var info = new ProcessStartInfo("node") { WorkingDirectory = nodeDir, RedirectStandardOutput = true, RedirectStandardError = true };
        info.ArgumentList.Add("e2e.js");
        info.ArgumentList.Add($"127.0.0.1:{shared.Host.Port}");
        info.ArgumentList.Add(Path.Combine(shared.TaskDir, "data", "labelled.jsonl"));
        Process node;
        try { node = Process.Start(info)!; }
        catch (System.ComponentModel.Win32Exception) { Assert.Skip("node is not installed (the Node.js end-to-end test needs it)"); return; }
        using (node)
        {
            var stdout = node.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            var stderr = node.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            if (!node.WaitForExit(TimeSpan.FromMinutes(4))) { node.Kill(); Assert.Fail($"e2e.js timed out:\n{await stderr}"); }
            var output = await stdout;
            Assert.True(node.ExitCode == 0, $"e2e.js failed ({node.ExitCode}):\n{await stderr}\n{output}\nhost log:\n{Tail(shared.Host.Log)}");
            Assert.Contains("\"student_files\"", output);
        }
    }

    [Fact]
    public async Task A_job_killed_mid_training_resumes_after_restart_with_the_same_weights()
    {
        await shared.RequireStagesAsync();
        const int steps = 24, saveSteps = 4;
        // Bit-exact comparison of two CPU runs needs a fixed threading (the other test projects run beside this one in CI).
        var singleThreaded = HostProcess.SingleThreaded;
        // The interrupted run: its own host and data folder, importing the same base model and data.
        var importDir = shared.TaskDir;
        var dataDir = HostProcess.NewDataDir();
        string jobId;
        await using (var first = await HostProcess.StartAsync(dataDir, ["--ImportDir", importDir], environment: singleThreaded))
        {
            var baseModel = await new ModelsService.ModelsServiceClient(first.Channel).ImportModelAsync(new ImportModelRequest { Path = "teacher-base" });
            var data = await new DatasetsService.DatasetsServiceClient(first.Channel).ImportDatasetAsync(new ImportDatasetRequest { Path = "data/labelled.jsonl" });
            var jobs = new JobsService.JobsServiceClient(first.Channel);
            jobId = (await jobs.TrainAsync(TeacherRequest(baseModel.Id, data.Id, steps, saveSteps))).JobId;
            using var watch = jobs.WatchJob(new WatchJobRequest { JobId = jobId }, deadline: DateTime.UtcNow.AddMinutes(3));
            await foreach (var e in watch.ResponseStream.ReadAllAsync(TestContext.Current.CancellationToken))
            {
                Assert.False(e.StateChange?.State is JobState.Succeeded or JobState.Failed, $"the job ended before it could be killed: {e}");
                // Past a checkpoint of the DPO stage: kill -9 in the middle of training.
                if (e.Progress is { } p && p.Stage.Contains("dpo") && p.Step >= saveSteps + 2) break;
            }
            // Nothing of the unfinished job is visible yet.
            Assert.DoesNotContain((await new ModelsService.ModelsServiceClient(first.Channel).ListModelsAsync(new ListModelsRequest())).Models,
                m => m.Source == $"job:{jobId}");
            first.Kill();
        }
        Job resumed;
        Dictionary<string, byte[]> resumedFiles;
        await using (var second = await HostProcess.StartAsync(dataDir, ["--ImportDir", importDir], environment: singleThreaded))
        {
            var jobs = new JobsService.JobsServiceClient(second.Channel);
            try { resumed = await WaitForEnd(jobs, jobId, TimeSpan.FromMinutes(3)); }
            catch (RpcException e) { throw new Xunit.Sdk.XunitException($"waiting for the resumed job: {e.Status}\n{Tail(second.Log)}"); }
            Assert.True(resumed.State == JobState.Succeeded, $"resumed job: {resumed.State} {resumed.Error}\n{Tail(second.Log)}");
            Assert.True(resumed.Attempts >= 2, $"attempts {resumed.Attempts}");
            var policy = resumed.Artifacts.Single(a => a.Name == "policy").Id;
            resumedFiles = await Client.DownloadModel(second.Channel, policy);
            Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(dataDir, "tmp")));

        }
        // The uninterrupted run of the same request on a host of its own, like the interrupted one (same base model
        // bytes, same data). Not the shared host: other tests' label streams run there at the same time, and on CPU
        // concurrent libtorch work in one process changes how its intra-op thread pool splits reductions.
        await using (var uninterrupted = await HostProcess.StartAsync(HostProcess.NewDataDir(), ["--ImportDir", importDir], environment: singleThreaded))
        {
            var baseModel = await new ModelsService.ModelsServiceClient(uninterrupted.Channel).ImportModelAsync(new ImportModelRequest { Path = "teacher-base" });
            var data = await new DatasetsService.DatasetsServiceClient(uninterrupted.Channel).ImportDatasetAsync(new ImportDatasetRequest { Path = "data/labelled.jsonl" });
            var jobs = new JobsService.JobsServiceClient(uninterrupted.Channel);
            var reference = await WaitForEnd(jobs, (await jobs.TrainAsync(TeacherRequest(baseModel.Id, data.Id, steps, saveSteps))).JobId);
            Assert.Equal(JobState.Succeeded, reference.State);
            var referenceFiles = await Client.DownloadModel(uninterrupted.Channel, reference.Artifacts.Single(a => a.Name == "policy").Id);
            var weights = referenceFiles.Keys.Where(k => k.EndsWith(".safetensors")).ToList();
            Assert.NotEmpty(weights);
            foreach (var file in weights)
                Assert.True(referenceFiles[file].AsSpan().SequenceEqual(resumedFiles[file]), $"{file} differs between the resumed and the uninterrupted run");
        }
    }

    [Fact]
    public async Task The_hosts_output_is_json_log_events_only_with_job_progress_as_structured_events()
    {
        await shared.RequireStagesAsync();
        var jobs = new JobsService.JobsServiceClient(shared.Host.Channel);
        var job = await WaitForEnd(jobs, (await jobs.TrainAsync(TeacherRequest("default-teacher-base", "default-labelled", 3, 0))).JobId);
        Assert.True(job.State == JobState.Succeeded, $"{job.State} {job.Error}");
        await Task.Delay(500, TestContext.Current.CancellationToken); // the last lines reach the pipe
        var lines = shared.Host.StandardOutputLines;
        var progress = new List<System.Text.Json.JsonElement>();
        foreach (var line in lines)
        {
            // no plain-text line (a progress bar, a training step) between the JSON log events
            System.Text.Json.JsonDocument doc;
            try { doc = System.Text.Json.JsonDocument.Parse(line); }
            catch (System.Text.Json.JsonException) { throw new Xunit.Sdk.XunitException($"a host output line is not a JSON log event: {line}"); }
            var root = doc.RootElement;
            if (root.TryGetProperty("EventId", out var eventId) && eventId.GetInt32() == 100 &&
                root.GetProperty("Scopes").EnumerateArray().Any(s => s.TryGetProperty("JobId", out var id) && id.GetString() == job.Id))
                progress.Add(root.GetProperty("State"));
        }
        // the job's progress: structured fields, each stage from its first to its last step
        Assert.NotEmpty(progress);
        foreach (var stage in new[] { "sft", "dpo" })
        {
            var ofStage = progress.Where(p => p.GetProperty("Stage").GetString()!.Contains(stage)).ToList();
            Assert.True(ofStage.Count >= 2, $"{stage}: {ofStage.Count} progress events in {string.Join(", ", progress.Select(p => p.GetProperty("Stage").GetString()))}");
            Assert.Equal(3, Number(ofStage[^1].GetProperty("Step")));
            Assert.Equal(3, Number(ofStage[^1].GetProperty("TotalSteps")));
            Assert.True(double.IsFinite(Number(ofStage[^1].GetProperty("Loss"))));
        }
        // the log's JSON writes numbers as numbers; a formatter that wrote text would still carry the value
        static double Number(System.Text.Json.JsonElement e) => e.ValueKind == System.Text.Json.JsonValueKind.Number ? e.GetDouble()
            : double.Parse(e.GetString()!, System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task A_reward_model_teacher_is_published_without_its_training_checkpoints()
    {
        await shared.RequireStagesAsync();
        var jobs = new JobsService.JobsServiceClient(shared.Host.Channel);
        var request = new TrainRequest
        {
            BaseModelId = "default-teacher-base", LabelledDatasetId = "default-labelled", Method = TeacherMethod.RewardModel,
            Reward = new RewardConfig { Args = Args(4, 1) }, OutputName = "reward-teacher",
        };
        var job = await WaitForEnd(jobs, (await jobs.TrainAsync(request)).JobId);
        Assert.True(job.State == JobState.Succeeded, $"{job.State} {job.Error}");
        var models = (await new ModelsService.ModelsServiceClient(shared.Host.Channel).ListModelsAsync(new ListModelsRequest())).Models
            .Where(m => m.Source == $"job:{job.Id}").ToList();
        Assert.NotEmpty(models);
        foreach (var m in models)
        {
            // a checkpoint every step was written while training; none is part of the finished teacher
            Assert.DoesNotContain(m.Files, f => f.Path.Split('/').Any(s => s.StartsWith("checkpoint-", StringComparison.Ordinal)));
            Assert.Empty(Directory.EnumerateDirectories(Path.Combine(shared.Host.DataDir, "models", m.Id), "checkpoint-*", SearchOption.AllDirectories));
        }
    }

    /// <summary>A job's file artifact, as DownloadJobArtifact streams it.</summary>
    internal static async Task<byte[]> DownloadArtifact(JobsService.JobsServiceClient jobs, string jobId, string name)
    {
        using var call = jobs.DownloadJobArtifact(new DownloadJobArtifactRequest { JobId = jobId, Name = name }, deadline: DateTime.UtcNow.AddMinutes(1));
        var bytes = new MemoryStream();
        await foreach (var chunk in call.ResponseStream.ReadAllAsync()) chunk.Data.WriteTo(bytes);
        return bytes.ToArray();
    }

    [Fact]
    public async Task Evaluate_serves_its_report_as_markdown_json_and_plots()
    {
        await shared.RequireStagesAsync();
        var jobs = new JobsService.JobsServiceClient(shared.Host.Channel);
        var job = await WaitForEnd(jobs, (await jobs.EvaluateAsync(new EvaluateRequest
        {
            Models = { ["student"] = "default-student-base", ["teacher"] = "default-teacher-base" },
            PromptsDatasetId = "default-eval-prompts", MaxNewTokens = 8, Temperature = 0,
        })).JobId);
        Assert.True(job.State == JobState.Succeeded, $"{job.State} {job.Error}");
        var files = job.Artifacts.Where(a => a.Kind == ArtifactKind.File).Select(a => a.Name).ToList();
        Assert.Contains("report", files);
        Assert.Contains("report_json", files);
        var markdown = System.Text.Encoding.UTF8.GetString(await DownloadArtifact(jobs, job.Id, "report"));
        Assert.StartsWith("# Evaluation report", markdown);
        Assert.Contains("student", markdown);
        Assert.DoesNotContain(shared.Host.DataDir, markdown);
        using var json = System.Text.Json.JsonDocument.Parse(await DownloadArtifact(jobs, job.Id, "report_json"));
        var students = json.RootElement.GetProperty("students");
        Assert.Equal(job.Metrics["gold_reward/student"], students.GetProperty("student").GetProperty("gold_reward").GetDouble(), 9);
        Assert.Equal(job.Metrics["gold_reward/teacher"], students.GetProperty("teacher").GetProperty("gold_reward").GetDouble(), 9);
        var plot = files.First(f => f.StartsWith("plot/"));
        Assert.True((await DownloadArtifact(jobs, job.Id, plot)).AsSpan().StartsWith(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }), $"{plot} is not a PNG");
    }

    [Fact]
    public async Task A_label_jobs_output_dataset_is_typed_labelled()
    {
        await shared.RequireStagesAsync();
        var jobs = new JobsService.JobsServiceClient(shared.Host.Channel);
        var train = await WaitForEnd(jobs, (await jobs.TrainAsync(TeacherRequest("default-teacher-base", "default-labelled", 2, 0))).JobId);
        Assert.Equal(JobState.Succeeded, train.State);
        var label = await WaitForEnd(jobs, (await jobs.LabelAsync(new LabelRequest
        {
            TeacherModelId = train.Artifacts.Single(a => a.Name == "teacher").Id, UnlabelledDatasetId = "default-unlabelled",
        })).JobId);
        Assert.True(label.State == JobState.Succeeded, $"{label.State} {label.Error}");
        var output = label.Artifacts.Single(a => a.Kind == ArtifactKind.Dataset);
        var dataset = await new DatasetsService.DatasetsServiceClient(shared.Host.Channel).GetDatasetAsync(new GetDatasetRequest { DatasetId = output.Id });
        Assert.Equal(DatasetFormat.Labelled, dataset.Format);
        Assert.Equal(label.Metrics["kept"], dataset.Rows);
    }

    internal static async Task<Job> WaitForEnd(JobsService.JobsServiceClient jobs, string jobId, TimeSpan? timeout = null)
    {
        using var watch = jobs.WatchJob(new WatchJobRequest { JobId = jobId }, deadline: DateTime.UtcNow + (timeout ?? TimeSpan.FromMinutes(3)));
        await foreach (var _ in watch.ResponseStream.ReadAllAsync()) { }
        return await jobs.GetJobAsync(new GetJobRequest { JobId = jobId });
    }

    [Fact]
    public async Task Cancelling_queued_and_running_jobs_ends_them_cancelled_and_the_host_stays_healthy()
    {
        await shared.RequireStagesAsync();
        var jobs = new JobsService.JobsServiceClient(shared.Host.Channel);
        var running = await jobs.TrainAsync(TeacherRequest("default-teacher-base", "default-labelled", 2000, 0));
        var queued = await jobs.TrainAsync(TeacherRequest("default-teacher-base", "default-labelled", 2000, 0));
        Assert.Equal(JobState.Cancelled, (await jobs.CancelJobAsync(new CancelJobRequest { JobId = queued.JobId })).State);
        using (var watch = jobs.WatchJob(new WatchJobRequest { JobId = running.JobId }, deadline: DateTime.UtcNow.AddMinutes(2)))
            await foreach (var e in watch.ResponseStream.ReadAllAsync(TestContext.Current.CancellationToken))
                if (e.Progress is not null) break; // it is training now
        await jobs.CancelJobAsync(new CancelJobRequest { JobId = running.JobId });
        var end = await WaitForEnd(jobs, running.JobId, TimeSpan.FromMinutes(2));
        Assert.Equal(JobState.Cancelled, end.State);
        Assert.Equal("CANCELLED", end.ErrorCode);
        Assert.Equal(JobState.Cancelled, (await jobs.GetJobAsync(new GetJobRequest { JobId = queued.JobId })).State);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await shared.Host.HealthAsync());
    }

    [Fact]
    public async Task Label_streams_from_many_clients_are_batched_and_answered_per_pair()
    {
        await shared.RequireStagesAsync();
        var jobs = new JobsService.JobsServiceClient(shared.Host.Channel);
        var train = await WaitForEnd(jobs, (await jobs.TrainAsync(TeacherRequest("default-teacher-base", "default-labelled", 2, 0))).JobId);
        Assert.Equal(JobState.Succeeded, train.State);
        var teacher = train.Artifacts.Single(a => a.Name == "teacher").Id;
        var labeling = new LabelingService.LabelingServiceClient(shared.Host.Channel);
        string[] prompts = ["Say hello.", "What is 3+4?", "Name a fruit.", "Thank the user.", "Count to three."];

        async Task<Dictionary<string, LabelPairResponse>> Stream(int client)
        {
            using var call = labeling.LabelStream(deadline: DateTime.UtcNow.AddMinutes(2));
            for (int i = 0; i < prompts.Length; i++)
                await call.RequestStream.WriteAsync(new LabelPairRequest
                {
                    Id = $"c{client}-{i}", TeacherModelId = i == 0 ? teacher : "", Prompt = prompts[i],
                    ResponseA = $"A careful answer {i}.", ResponseB = $"no {i}",
                });
            await call.RequestStream.CompleteAsync();
            var results = new Dictionary<string, LabelPairResponse>();
            await foreach (var r in call.ResponseStream.ReadAllAsync()) results.Add(r.Id, r);
            return results;
        }

        var all = await Task.WhenAll(Enumerable.Range(0, 6).Select(Stream));
        for (int client = 0; client < all.Length; client++)
        {
            Assert.Equal(prompts.Length, all[client].Count);
            for (int i = 0; i < prompts.Length; i++)
            {
                var r = all[client][$"c{client}-{i}"];
                Assert.Equal(r.RewardA - r.RewardB, r.Margin, 6);
                Assert.Equal(r.RewardA >= r.RewardB ? Preference.A : Preference.B, r.Preferred);
                // The same pair gets the same rewards whichever batch it landed in.
                Assert.Equal(all[0][$"c0-{i}"].RewardA, r.RewardA, tolerance: 1e-4);
                Assert.Equal(all[0][$"c0-{i}"].RewardB, r.RewardB, tolerance: 1e-4);
            }
        }
        // A stream that names an unknown teacher, or sends an empty response, is refused by field.
        await Client.Fails(StatusCode.NotFound, async () =>
        {
            using var call = labeling.LabelStream();
            await call.RequestStream.WriteAsync(new LabelPairRequest { Id = "x", TeacherModelId = "mdl-nope", Prompt = "p", ResponseA = "a", ResponseB = "b" });
            await call.RequestStream.CompleteAsync();
            await foreach (var _ in call.ResponseStream.ReadAllAsync()) { }
        }, "teacher_model_id");
        await Client.Fails(StatusCode.InvalidArgument, async () =>
        {
            using var call = labeling.LabelStream();
            await call.RequestStream.WriteAsync(new LabelPairRequest { Id = "x", TeacherModelId = teacher, Prompt = "p", ResponseA = "a", ResponseB = " " });
            await call.RequestStream.CompleteAsync();
            await foreach (var _ in call.ResponseStream.ReadAllAsync()) { }
        }, "response_b");
    }

    internal static string Tail(string log) => log.Length > 6000 ? log[^6000..] : log;
}
