using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// Sharded Label jobs on the embedded SQLite store, where one host runs every shard: the merged set equals an unsharded
/// run's, and cancelling the parent cancels its shards.
/// </summary>
[Collection("default-task")]
public sealed class ShardedLabelSqliteTests(DefaultTaskHost shared)
{
    private JobsService.JobsServiceClient Jobs => new(shared.Host.Channel);

    private async Task<string> Teacher()
    {
        var train = await PipelineTests.WaitForEnd(Jobs, (await Jobs.TrainAsync(PipelineTests.TeacherRequest("default-teacher-base", "default-labelled", 2, 0))).JobId);
        Assert.True(train.State == JobState.Succeeded, $"{train.State} {train.Error}");
        return train.Artifacts.Single(a => a.Name == "teacher").Id;
    }

    private string DatasetFile(string id) => Directory.GetFiles(Path.Combine(shared.Host.DataDir, "datasets", id)).Single();

    [Fact]
    public async Task One_host_runs_every_shard_and_the_merged_set_is_the_unsharded_runs()
    {
        await shared.RequireStagesAsync();
        var teacher = await Teacher();
        var request = new LabelRequest { TeacherModelId = teacher, UnlabelledDatasetId = "default-unlabelled", BatchSize = 4 };
        var sharded = (await Jobs.LabelAsync(new LabelRequest(request) { ShardCount = 4 })).JobId;
        var single = await PipelineTests.WaitForEnd(Jobs, (await Jobs.LabelAsync(request)).JobId);
        var merged = await PipelineTests.WaitForEnd(Jobs, sharded);
        Assert.True(merged.State == JobState.Succeeded, $"{merged.State} {merged.Error}");
        Assert.True(single.State == JobState.Succeeded, $"{single.State} {single.Error}");
        Assert.Equal(4, merged.Progress.TotalSteps);
        Assert.Equal(4, merged.Progress.Step);
        var (a, b) = (await File.ReadAllBytesAsync(DatasetFile(single.Artifacts.Single(x => x.Name == "labelled").Id)),
            await File.ReadAllBytesAsync(DatasetFile(merged.Artifacts.Single(x => x.Name == "labelled").Id)));
        Assert.True(a.AsSpan().SequenceEqual(b), "the merged labelled set differs from the unsharded run's");
        Assert.Equal(single.Metrics["kept"], merged.Metrics["kept"]);
    }

    [Fact]
    public async Task A_failed_shard_fails_its_label_job_with_the_shards_error_and_stops_the_others()
    {
        await shared.RequireStagesAsync();
        var teacher = await Teacher();
        var id = (await Jobs.LabelAsync(new LabelRequest { TeacherModelId = teacher, UnlabelledDatasetId = "default-unlabelled", BatchSize = 1, ShardCount = 3 })).JobId;
        var deadline = DateTime.UtcNow.AddMinutes(2);
        List<Job> Shards() => Jobs.ListJobs(new ListJobsRequest { Kind = JobKind.LabelShard, PageSize = 1000 }).Jobs.Where(j => j.ParentJobId == id).OrderBy(j => j.ShardIndex).ToList();
        while (!Shards().Any(s => s.State == JobState.Running))
        {
            Assert.True(DateTime.UtcNow < deadline, "no shard started in 2 minutes");
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }
        // one host runs the shards in turn: the next one to start (or the running one, if it had not loaded it yet)
        // finds its teacher gone (NOT_FOUND)
        await new ModelsService.ModelsServiceClient(shared.Host.Channel).DeleteModelAsync(new DeleteModelRequest { ModelId = teacher });
        var end = await PipelineTests.WaitForEnd(Jobs, id);
        Assert.Equal(JobState.Failed, end.State);
        Assert.True(end.ErrorCode == "NOT_FOUND", $"{end.ErrorCode}: {end.Error}");
        Assert.Matches(@"^shard [0-2] \(job-[0-9a-f]+-shard-[0-2]\) failed: .*teacher_model_id", end.Error);
        while (Shards().Any(s => s.State is JobState.Queued or JobState.Running))
        {
            Assert.True(DateTime.UtcNow < deadline, $"shards still running: {string.Join(", ", Shards().Select(s => s.State))}");
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        var shards = Shards();
        Assert.Single(shards, s => s.State == JobState.Failed);
        Assert.All(shards, s => Assert.True(s.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled, $"{s.Id}: {s.State}"));
        Assert.Equal(JobState.Failed, (await Jobs.GetJobAsync(new GetJobRequest { JobId = id })).State);
    }

    [Fact]
    public async Task Cancelling_a_sharded_label_job_cancels_its_shards()
    {
        await shared.RequireStagesAsync();
        var teacher = await Teacher();
        var id = (await Jobs.LabelAsync(new LabelRequest { TeacherModelId = teacher, UnlabelledDatasetId = "default-unlabelled", BatchSize = 1, ShardCount = 3 })).JobId;
        var deadline = DateTime.UtcNow.AddMinutes(2);
        List<Job> Shards() => Jobs.ListJobs(new ListJobsRequest { Kind = JobKind.LabelShard, PageSize = 1000 }).Jobs.Where(j => j.ParentJobId == id).ToList();
        while (!Shards().Any(s => s.State == JobState.Running))
        {
            Assert.True(DateTime.UtcNow < deadline, "no shard started in 2 minutes");
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }
        var cancelled = await Jobs.CancelJobAsync(new CancelJobRequest { JobId = id });
        Assert.Equal(JobState.Cancelled, cancelled.State); // held by no host while its shards run: cancelled at once
        var end = await PipelineTests.WaitForEnd(Jobs, id);
        Assert.Equal(JobState.Cancelled, end.State);
        while (Shards().Any(s => s.State is JobState.Queued or JobState.Running))
        {
            Assert.True(DateTime.UtcNow < deadline, $"shards still running: {string.Join(", ", Shards().Select(s => s.State))}");
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        var shards = Shards();
        Assert.Equal(3, shards.Count);
        Assert.All(shards, s => Assert.True(s.State is JobState.Cancelled or JobState.Succeeded, $"{s.Id}: {s.State} {s.Error}"));
        Assert.Contains(shards, s => s.State == JobState.Cancelled);
        Assert.Equal(JobState.Cancelled, (await Jobs.GetJobAsync(new GetJobRequest { JobId = id })).State); // a shard's cancel did not overwrite it
    }
}
