using Grpc.Core;
using Npgsql;
using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// Label jobs split into shards that several hosts run at once (issue 16 point 2): three host processes on one real
/// PostgreSQL job store and one data folder run a Label job of 3 shards; one host is killed in the middle of its shard
/// (labels computed, not yet written) and another redoes that shard; the merged labelled dataset is byte-identical to
/// an unsharded Label job's.
/// </summary>
[Collection("default-task")]
public sealed class ShardedLabelTests(DefaultTaskHost shared)
{
    private const string Failpoint = WeakTeacher.Engine.Runtime.Failpoints.LabelShardLabelled;

    [Fact]
    public async Task A_label_job_in_three_shards_runs_on_several_hosts_survives_a_killed_host_and_equals_an_unsharded_run()
    {
        await shared.RequireStagesAsync();
        var bin = PostgreSqlServer.RequireBinaries();
        var ct = TestContext.Current.CancellationToken;

        // A tiny teacher, trained on the shared host; the replicas import it and D_u from that host's data folder.
        var sharedJobs = new JobsService.JobsServiceClient(shared.Host.Channel);
        var train = await PipelineTests.WaitForEnd(sharedJobs, (await sharedJobs.TrainAsync(PipelineTests.TeacherRequest("default-teacher-base", "default-labelled", 2, 0))).JobId);
        Assert.True(train.State == JobState.Succeeded, $"{train.State} {train.Error}");
        var teacherPath = Path.Combine("models", train.Artifacts.Single(a => a.Name == "teacher").Id);
        var unlabelledPath = Path.GetRelativePath(shared.Host.DataDir,
            Directory.GetFiles(Path.Combine(shared.Host.DataDir, "datasets", "default-unlabelled")).Single());

        // Bit-exact comparison of CPU runs on different processes needs a fixed threading.
        var singleThreaded = HostProcess.SingleThreaded;
        await using var database = await PostgreSqlServer.StartAsync(bin);
        var dataDir = HostProcess.NewDataDir();
        // replica-0 stops in the first shard it runs, after labelling, before writing: the test kills it there.
        var hosts = await Task.WhenAll(Enumerable.Range(0, 3).Select(i => HostProcess.StartAsync(dataDir, database.ReplicaArgs(shared.Host.DataDir, i),
            environment: i == 0 ? new Dictionary<string, string>(singleThreaded) { ["WT_FAILPOINTS"] = Failpoint } : singleThreaded)));
        try
        {
            var teacher = await new ModelsService.ModelsServiceClient(hosts[0].Channel).ImportModelAsync(new ImportModelRequest { Path = teacherPath });
            var unlabelled = await new DatasetsService.DatasetsServiceClient(hosts[0].Channel).ImportDatasetAsync(new ImportDatasetRequest { Path = unlabelledPath });
            LabelRequest Request(int? shards)
            {
                var r = new LabelRequest { TeacherModelId = teacher.Id, UnlabelledDatasetId = unlabelled.Id, BatchSize = 2 };
                if (shards is { } n) r.ShardCount = n;
                return r;
            }

            // Started at replica-0, which is woken at once, splits the job and takes a shard as soon as it has split it.
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var sharded = (await new JobsService.JobsServiceClient(hosts[0].Channel).LabelAsync(Request(3))).JobId;
            var deadline = DateTime.UtcNow.AddMinutes(3);
            while (!hosts[0].Log.Contains(WeakTeacher.Engine.Runtime.Failpoints.ReachedLine(Failpoint)))
            {
                var job = await new JobsService.JobsServiceClient(hosts[1].Channel).GetJobAsync(new GetJobRequest { JobId = sharded });
                Assert.False(job.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled, $"the job ended before replica-0 ran a shard: {job}\n{Logs(hosts)}");
                Assert.True(DateTime.UtcNow < deadline, $"replica-0 did not reach its shard's failpoint in 3 minutes\n{Logs(hosts)}");
                await Task.Delay(100, ct);
            }
            hosts[0].Kill();
            // While the killed host's lease lapses: the reference, one unsharded Label job, on one of the survivors.
            var reference = (await new JobsService.JobsServiceClient(hosts[1].Channel).LabelAsync(Request(null))).JobId;

            var jobs = new JobsService.JobsServiceClient(hosts[2].Channel);
            Job finished;
            try { finished = await PipelineTests.WaitForEnd(jobs, sharded, TimeSpan.FromMinutes(3)); }
            catch (RpcException e) { throw new Xunit.Sdk.XunitException($"waiting for the sharded job: {e.Status}\n{Logs(hosts)}"); }
            var shardedSeconds = clock.Elapsed.TotalSeconds;
            Assert.True(finished.State == JobState.Succeeded, $"{finished.State} {finished.Error}\n{Logs(hosts)}");
            var single = await PipelineTests.WaitForEnd(jobs, reference, TimeSpan.FromMinutes(3));
            Assert.True(single.State == JobState.Succeeded, $"reference: {single.State} {single.Error}\n{Logs(hosts)}");
            TestContext.Current.TestOutputHelper?.WriteLine($"sharded job with a killed host: {shardedSeconds:F1}s");

            // GetJob on the parent reports progress over its shards; the shards are jobs of their own.
            Assert.Equal("label/shards", finished.Progress.Stage);
            Assert.Equal(3, finished.Progress.Step);
            Assert.Equal(3, finished.Progress.TotalSteps);
            var children = (await jobs.ListJobsAsync(new ListJobsRequest { Kind = JobKind.LabelShard, PageSize = 1000 })).Jobs
                .Where(j => j.ParentJobId == sharded).OrderBy(j => j.ShardIndex).ToList();
            Assert.Equal([0, 1, 2], children.Select(c => c.ShardIndex));
            Assert.All(children, c => Assert.Equal(JobState.Succeeded, c.State));

            // The attempt records: shards ran on at least two hosts at overlapping times; the killed host's shard was
            // taken over by another host and succeeded there; no shard ran on two hosts at once.
            await using var connection = new NpgsqlConnection(database.ConnectionString);
            await connection.OpenAsync(ct);
            var attempts = await Attempts(connection, sharded);
            var described = string.Join("\n", attempts);
            var shardAttempts = attempts.Where(a => a.JobId != sharded).ToList();
            Assert.True(shardAttempts.Select(a => a.Owner).Distinct().Count() >= 2, described);
            long End((string JobId, int Attempt, string Owner, long Started, long LeaseExpires, long? Ended, string Outcome) a) => a.Ended ?? a.LeaseExpires;
            Assert.True(shardAttempts.Any(a => shardAttempts.Any(b => a.Owner != b.Owner && a.Started < End(b) && b.Started < End(a))),
                $"no two hosts ran shards at overlapping times:\n{described}");
            var died = shardAttempts.Single(a => a.Owner == "replica-0" && a.Ended is null);
            Assert.True(shardAttempts.Any(a => a.JobId == died.JobId && a.Attempt > died.Attempt && a.Owner != "replica-0" && a.Outcome == "succeeded"), described);
            foreach (var group in shardAttempts.GroupBy(a => a.JobId))
            {
                var list = group.OrderBy(a => a.Attempt).ToList();
                for (int i = 1; i < list.Count; i++)
                    Assert.True(list[i].Started >= End(list[i - 1]), $"{group.Key}: attempt {list[i].Attempt} started while attempt {list[i - 1].Attempt} held it:\n{described}");
            }
            var parentAttempts = attempts.Where(a => a.JobId == sharded).ToList();
            Assert.Equal("split into 3 shards", parentAttempts[0].Outcome);
            Assert.Equal("succeeded", parentAttempts[^1].Outcome);

            // The merged labelled dataset is the unsharded run's, byte for byte.
            var shardedOutput = finished.Artifacts.Single(a => a.Name == "labelled");
            var singleOutput = single.Artifacts.Single(a => a.Name == "labelled");
            Assert.Equal(ArtifactKind.Dataset, shardedOutput.Kind);
            var shardedFile = Directory.GetFiles(Path.Combine(dataDir, "datasets", shardedOutput.Id)).Single();
            var singleFile = Directory.GetFiles(Path.Combine(dataDir, "datasets", singleOutput.Id)).Single();
            Assert.Equal(Path.GetFileName(singleFile), Path.GetFileName(shardedFile));
            var (singleBytes, shardedBytes) = (await File.ReadAllBytesAsync(singleFile, ct), await File.ReadAllBytesAsync(shardedFile, ct));
            Assert.True(singleBytes.AsSpan().SequenceEqual(shardedBytes), "the merged labelled set differs from the unsharded run's");
            Assert.Equal(single.Metrics["kept"], finished.Metrics["kept"]);
            var datasets = new DatasetsService.DatasetsServiceClient(hosts[1].Channel);
            Assert.Equal(DatasetFormat.Labelled, (await datasets.GetDatasetAsync(new GetDatasetRequest { DatasetId = shardedOutput.Id })).Format);
        }
        finally
        {
            foreach (var host in hosts) await host.DisposeAsync();
        }
    }

    internal static async Task<List<(string JobId, int Attempt, string Owner, long Started, long LeaseExpires, long? Ended, string Outcome)>> Attempts(
        NpgsqlConnection connection, string parent)
    {
        var attempts = new List<(string, int, string, long, long, long?, string)>();
        await using var command = new NpgsqlCommand(
            "SELECT job_id, attempt, owner, started_ms, lease_expires_ms, ended_ms, outcome FROM job_attempts " +
            "WHERE job_id=@id OR job_id IN (SELECT id FROM jobs WHERE parent_id=@id) ORDER BY job_id, attempt", connection);
        command.Parameters.AddWithValue("id", parent);
        await using var reader = await command.ExecuteReaderAsync();
        while (await reader.ReadAsync())
            attempts.Add((reader.GetString(0), reader.GetInt32(1), reader.GetString(2), reader.GetInt64(3), reader.GetInt64(4),
                reader.IsDBNull(5) ? null : reader.GetInt64(5), reader.GetString(6)));
        return attempts;
    }

    private static string Logs(IEnumerable<HostProcess> hosts) =>
        string.Join("\n", hosts.Select((h, i) => $"--- replica-{i}:\n{PipelineTests.Tail(h.Log)}"));
}
