using Grpc.Core;
using Npgsql;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// Host replicas on one PostgreSQL job store (issue 16 point 2): three host processes share a real PostgreSQL (started
/// here in a temporary folder) and one data folder; the host running a training job is killed with SIGKILL in the middle
/// of its DPO stage; another host claims the job when its lease lapses and resumes it from the last checkpoint.
/// </summary>
[Collection("default-task")]
public sealed class JobStoreReplicaTests(DefaultTaskHost shared)
{
    [Fact]
    public async Task Three_hosts_share_a_postgresql_job_store_and_a_killed_hosts_job_is_finished_by_another_with_the_same_weights()
    {
        await shared.RequireStagesAsync();
        var bin = PostgreSqlServer.RequireBinaries();
        const int steps = 12, saveSteps = 4;
        var ct = TestContext.Current.CancellationToken;
        var importDir = shared.TaskDir;
        var request = (string model, string data) => PipelineTests.TeacherRequest(model, data, steps, saveSteps);
        var reference = SingleHostPolicy(importDir, request, ct);

        await using var database = await PostgreSqlServer.StartAsync(bin);
        var dataDir = HostProcess.NewDataDir();
        var hosts = await Task.WhenAll(Enumerable.Range(0, 3).Select(i =>
            HostProcess.StartAsync(dataDir, database.ReplicaArgs(importDir, i), environment: StopAtDpoStep(steps, saveSteps + 2, freeze: false))));
        try
        {
            // Imported through one host, started through another, watched from the store.
            var (baseModel, labelled) = await Import(hosts[0]);
            var jobId = (await new JobsService.JobsServiceClient(hosts[1].Channel).TrainAsync(request(baseModel, labelled))).JobId;
            await using var connection = new NpgsqlConnection(database.ConnectionString);
            await connection.OpenAsync(ct);

            // Past a checkpoint of the DPO stage (the failpoint every replica is started with), kill -9 the host that holds the job.
            var (killed, owner) = await StoppedOwner(hosts, connection, jobId, ct);
            hosts[killed].Kill();
            var survivor = hosts[(killed + 1) % 3];

            // Another replica claims it when the lease lapses and finishes it; the result is a single host's.
            Job finished;
            try { finished = await PipelineTests.WaitForEnd(new JobsService.JobsServiceClient(survivor.Channel), jobId, TimeSpan.FromMinutes(3)); }
            catch (RpcException e) { throw new Xunit.Sdk.XunitException($"waiting for the job on a survivor: {e.Status}\n{Logs(hosts)}"); }
            Assert.True(finished.State == JobState.Succeeded, $"{finished.State} {finished.Error}\n{Logs(hosts)}");
            Assert.True(finished.Attempts >= 2, $"attempts {finished.Attempts}");

            // The attempt records: the killed host's attempt never ended, a surviving host's succeeded, and no attempt
            // started before the one before it had ended or its lease (as last renewed) had lapsed.
            var attempts = new List<(int Attempt, string Owner, long Started, long LeaseExpires, long? Ended, string Outcome)>();
            await using (var command = new NpgsqlCommand(
                "SELECT attempt, owner, started_ms, lease_expires_ms, ended_ms, outcome FROM job_attempts WHERE job_id=@id ORDER BY attempt", connection))
            {
                command.Parameters.AddWithValue("id", jobId);
                await using var reader = await command.ExecuteReaderAsync(ct);
                while (await reader.ReadAsync(ct))
                    attempts.Add((reader.GetInt32(0), reader.GetString(1), reader.GetInt64(2), reader.GetInt64(3),
                        reader.IsDBNull(4) ? null : reader.GetInt64(4), reader.GetString(5)));
            }
            var described = string.Join("\n", attempts);
            Assert.Equal(finished.Attempts, attempts.Count);
            Assert.Equal(Enumerable.Range(1, attempts.Count), attempts.Select(a => a.Attempt));
            var died = attempts.Single(a => a.Owner == owner && a.Ended is null);
            Assert.True(died.Outcome == "", described);
            Assert.True(attempts[^1].Owner != owner && attempts[^1].Outcome == "succeeded", described);
            for (int i = 1; i < attempts.Count; i++)
            {
                var before = attempts[i - 1];
                var freeFrom = before.Ended ?? before.LeaseExpires;
                Assert.True(attempts[i].Started >= freeFrom, $"attempt {attempts[i].Attempt} started while attempt {before.Attempt} held the job:\n{described}");
            }
            Assert.Equal(0L, (long)(await Scalar(connection, "SELECT COUNT(*) FROM job_attempts WHERE ended_ms IS NULL AND owner <> @v", owner))!);

            var replicated = await Client.DownloadModel(survivor.Channel, finished.Artifacts.Single(a => a.Name == "policy").Id);
            var single = await reference;
            var weights = single.Keys.Where(k => k.EndsWith(".safetensors")).ToList();
            Assert.NotEmpty(weights);
            foreach (var file in weights)
                Assert.True(single[file].AsSpan().SequenceEqual(replicated[file]), $"{file} differs between the replicas' run and a single host's");
        }
        finally
        {
            foreach (var host in hosts) await host.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_host_frozen_past_its_lease_wakes_to_find_its_job_taken_stops_without_writing_and_the_result_is_a_single_hosts()
    {
        await shared.RequireStagesAsync();
        var bin = PostgreSqlServer.RequireBinaries();
        const int steps = 12, saveSteps = 4;
        var ct = TestContext.Current.CancellationToken;
        var importDir = shared.TaskDir;
        var request = (string model, string data) => PipelineTests.TeacherRequest(model, data, steps, saveSteps);
        var reference = SingleHostPolicy(importDir, request, ct);

        await using var database = await PostgreSqlServer.StartAsync(bin);
        var dataDir = HostProcess.NewDataDir();
        var hosts = await Task.WhenAll(Enumerable.Range(0, 2).Select(i =>
            HostProcess.StartAsync(dataDir, database.ReplicaArgs(importDir, i), environment: StopAtDpoStep(steps, saveSteps + 2, freeze: true))));
        try
        {
            var (baseModel, labelled) = await Import(hosts[0]);
            var jobId = (await new JobsService.JobsServiceClient(hosts[0].Channel).TrainAsync(request(baseModel, labelled))).JobId;
            await using var connection = new NpgsqlConnection(database.ConnectionString);
            await connection.OpenAsync(ct);

            // Past a checkpoint of the DPO stage, the host that holds the job froze itself (SIGSTOP, its failpoint).
            var (frozen, _) = await StoppedOwner(hosts, connection, jobId, ct);
            var other = hosts[1 - frozen];
            try
            {
                // The other host claims the job once the lease lapsed (10 s) and resumes it; then the frozen host runs on.
                // Its own deadline: the wait for DPO above may have used most of its 3 minutes on a loaded machine.
                var takeover = DateTime.UtcNow.AddMinutes(1);
                while ((long)(await Scalar(connection, "SELECT COUNT(*) FROM job_attempts WHERE job_id=@v AND attempt >= 2", jobId))! == 0)
                {
                    Assert.True(DateTime.UtcNow < takeover, $"no other host took the job from the frozen one in a minute\n{Logs(hosts)}");
                    await Task.Delay(100, ct);
                }
            }
            finally { hosts[frozen].Freeze(false); }

            Job finished;
            try { finished = await PipelineTests.WaitForEnd(new JobsService.JobsServiceClient(other.Channel), jobId, TimeSpan.FromMinutes(3)); }
            catch (RpcException e) { throw new Xunit.Sdk.XunitException($"waiting for the job: {e.Status}\n{Logs(hosts)}"); }
            Assert.True(finished.State == JobState.Succeeded, $"{finished.State} {finished.Error}\n{Logs(hosts)}");

            // The woken host stopped its run as a lost lease (its writes refused or its run cancelled), recorded so,
            // and never finished the job; it keeps serving.
            var stopped = DateTime.UtcNow.AddMinutes(1);
            while (await Scalar(connection, "SELECT ended_ms FROM job_attempts WHERE job_id=@v AND attempt=1", jobId) is null or DBNull)
            {
                Assert.True(DateTime.UtcNow < stopped, $"the woken host did not end its attempt\n{Logs(hosts)}");
                await Task.Delay(200, ct);
            }
            var outcome = (string)(await Scalar(connection, "SELECT outcome FROM job_attempts WHERE job_id=@v AND attempt=1", jobId))!;
            Assert.True(outcome.StartsWith("lease lost", StringComparison.Ordinal), $"attempt 1 ended '{outcome}'\n{Logs(hosts)}");
            // its log line follows the attempt's record (stdout is read asynchronously): wait for it. A run that got
            // to its end before noticing logs that its finish was refused instead.
            var logged = DateTime.UtcNow.AddSeconds(30);
            while (!(hosts[frozen].Log.Contains("Job stopped") || hosts[frozen].Log.Contains("Job finished here but its lease was lost")))
            {
                Assert.True(DateTime.UtcNow < logged, $"the woken host did not log that it stopped\n{Logs(hosts)}");
                await Task.Delay(200, ct);
            }
            TestContext.Current.TestOutputHelper?.WriteLine($"frozen host's attempt: {outcome}; " +
                (hosts[frozen].Log.Contains("write refused") ? "a late write was refused" : "its run was cancelled before it wrote"));
            Assert.Equal("succeeded", (string)(await Scalar(connection, "SELECT outcome FROM job_attempts WHERE job_id=@v ORDER BY attempt DESC LIMIT 1", jobId))!);
            Assert.Equal(global::Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus.Serving, await hosts[frozen].HealthAsync());

            var replicated = await Client.DownloadModel(other.Channel, finished.Artifacts.Single(a => a.Name == "policy").Id);
            var single = await reference;
            var weights = single.Keys.Where(k => k.EndsWith(".safetensors")).ToList();
            Assert.NotEmpty(weights);
            foreach (var file in weights)
                Assert.True(single[file].AsSpan().SequenceEqual(replicated[file]), $"{file} differs between the frozen-host run and a single host's");
        }
        finally
        {
            foreach (var host in hosts) await host.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_host_frozen_inside_a_lease_renewal_does_not_keep_its_job_locked_from_the_others()
    {
        await shared.RequireStagesAsync();
        var bin = PostgreSqlServer.RequireBinaries();
        const int steps = 12, saveSteps = 4;
        var ct = TestContext.Current.CancellationToken;
        await using var database = await PostgreSqlServer.StartAsync(bin);
        var dataDir = HostProcess.NewDataDir();
        // The holder: its trainer waits at DPO step 6, so the job is still running at its first renewal (a third of the
        // 10 s lease in), and the process freezes inside that renewal, with the job's row updated and not yet committed.
        var environment = StopAtDpoStep(steps, saveSteps + 2, freeze: false);
        environment[Failpoints.Variable] += $",{Failpoints.LeaseRenewing}:freeze";
        var hosts = new List<HostProcess> { await HostProcess.StartAsync(dataDir, database.ReplicaArgs(shared.TaskDir, 0), environment: environment) };
        try
        {
            var (baseModel, labelled) = await Import(hosts[0]);
            var jobId = (await new JobsService.JobsServiceClient(hosts[0].Channel).TrainAsync(
                PipelineTests.TeacherRequest(baseModel, labelled, steps, saveSteps), deadline: DateTime.UtcNow.AddSeconds(30))).JobId;
            await hosts[0].WaitForLogAsync(Failpoints.ReachedLine(Failpoints.LeaseRenewing), TimeSpan.FromMinutes(2),
                "the holder did not freeze inside a lease renewal in 2 minutes", () => Logs(hosts), ct);
            try
            {
                // Another host, started now, claims the job once its lease lapsed: the frozen session's transaction is
                // ended by the server (idle_in_transaction_session_timeout). Before, it held the job's row for as long as
                // the freeze lasted: every claim skipped the job, and a host starting meanwhile timed out on its schema
                // check (ALTER TABLE waits for the table's lock).
                hosts.Add(await HostProcess.StartAsync(dataDir, database.ReplicaArgs(shared.TaskDir, 1), environment: HostProcess.SingleThreaded));
                Job finished;
                try { finished = await PipelineTests.WaitForEnd(new JobsService.JobsServiceClient(hosts[1].Channel), jobId, TimeSpan.FromMinutes(2)); }
                catch (RpcException e) { throw new Xunit.Sdk.XunitException($"waiting for the frozen holder's job on the other host: {e.Status}\n{Logs(hosts)}"); }
                Assert.True(finished.State == JobState.Succeeded && finished.Attempts == 2, $"{finished.State} after {finished.Attempts} attempts {finished.Error}\n{Logs(hosts)}");
            }
            finally { hosts[0].Freeze(false); }

            // The woken holder's renewal finds its session ended and says so; it does not take the job back.
            await hosts[0].WaitForLogAsync("idle-in-transaction", TimeSpan.FromSeconds(30), "the woken holder did not report its ended session",
                () => Logs(hosts), ct);
            await using var connection = new NpgsqlConnection(database.ConnectionString);
            await connection.OpenAsync(ct);
            Assert.Equal("succeeded", (string)(await Scalar(connection, "SELECT outcome FROM job_attempts WHERE job_id=@v AND attempt=2", jobId))!);
            Assert.Equal("replica-1", (string)(await Scalar(connection, "SELECT owner FROM job_attempts WHERE job_id=@v AND attempt=2", jobId))!);
        }
        finally
        {
            foreach (var host in hosts) await host.DisposeAsync();
        }
    }

    [Fact]
    public async Task Replicas_started_together_with_the_default_task_prepare_it_once()
    {
        var bin = PostgreSqlServer.RequireBinaries();
        await using var database = await PostgreSqlServer.StartAsync(bin);
        var dataDir = HostProcess.NewDataDir();
        // The task's files as the shared host made them (same size and seed), so preparing them costs nothing here: what
        // is checked is that one replica prepares and registers while the others wait for it.
        foreach (var file in Directory.EnumerateFiles(shared.TaskDir, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(dataDir, "default-task", Path.GetRelativePath(shared.TaskDir, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
        string[] Args(int i) => ["--default-task", "--DefaultTaskSize", "Tiny", "--JobStore:PostgreSql", database.ConnectionString,
            "--JobStore:HostId", $"replica-{i}"];
        var hosts = await Task.WhenAll(Enumerable.Range(0, 3).Select(i => HostProcess.StartAsync(dataDir, Args(i), timeout: TimeSpan.FromMinutes(2))));
        try
        {
            var prepared = hosts.Count(h => h.Log.Contains("Preparing the embedded default task"));
            Assert.True(prepared == 1, $"{prepared} replicas prepared the default task\n{Logs(hosts)}");
            Assert.Equal(2, hosts.Count(h => h.Log.Contains("Default task already registered")));
            foreach (var host in hosts)
            {
                var models = (await new ModelsService.ModelsServiceClient(host.Channel).ListModelsAsync(new ListModelsRequest())).Models;
                Assert.Contains(models, m => m.Id == "default-teacher-base");
                Assert.Contains(models, m => m.Id == "default-student-base");
            }
            Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(dataDir, "models", "default-teacher-base"), "*.save-*", SearchOption.AllDirectories));
        }
        finally
        {
            foreach (var host in hosts) await host.DisposeAsync();
        }
    }

    /// <summary>
    /// The reference: the same Train job on one host with its own embedded store, running beside the replicas
    /// (single-threaded, so the machine's load does not change its numbers); its policy's files.
    /// </summary>
    private static Task<Dictionary<string, byte[]>> SingleHostPolicy(string importDir, Func<string, string, TrainRequest> request, CancellationToken ct) =>
        Task.Run(async () =>
        {
            await using var single = await HostProcess.StartAsync(HostProcess.NewDataDir(), ["--ImportDir", importDir], environment: HostProcess.SingleThreaded);
            var (model, data) = await Import(single);
            var jobs = new JobsService.JobsServiceClient(single.Channel);
            var job = await PipelineTests.WaitForEnd(jobs, (await jobs.TrainAsync(request(model, data))).JobId);
            Assert.True(job.State == JobState.Succeeded, $"reference run: {job.State} {job.Error}");
            return await Client.DownloadModel(single.Channel, job.Artifacts.Single(a => a.Name == "policy").Id);
        }, ct);

    private static async Task<(string Model, string Data)> Import(HostProcess host)
    {
        var model = await new ModelsService.ModelsServiceClient(host.Channel).ImportModelAsync(new ImportModelRequest { Path = "teacher-base" });
        var data = await new DatasetsService.DatasetsServiceClient(host.Channel).ImportDatasetAsync(new ImportDatasetRequest { Path = "data/labelled.jsonl" });
        return (model.Id, data.Id);
    }

    private static async Task<object?> Scalar(NpgsqlConnection connection, string sql, string value)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        command.Parameters.AddWithValue("v", value);
        return await command.ExecuteScalarAsync();
    }

    /// <summary>
    /// A replica's environment (single-threaded) with a failpoint at DPO step <paramref name="dpoStep"/> of a Train job of
    /// <paramref name="steps"/> SFT and DPO steps: the process's (sft steps + dpoStep)-th optimizer step, so only the host
    /// that ran the job from its start stops there (one resuming from a DPO checkpoint runs fewer steps). It stops at that
    /// step, not at whatever step a poll saw: the tiny task's steps take milliseconds, so a poll-then-kill could land after
    /// the job's end. With <paramref name="freeze"/> the process freezes itself (SIGSTOP); otherwise the trainer's thread
    /// waits, for a kill.
    /// </summary>
    private static Dictionary<string, string> StopAtDpoStep(int steps, int dpoStep, bool freeze) =>
        new(HostProcess.SingleThreaded) { [Failpoints.Variable] = $"{Failpoints.TrainingStepDone}@{steps + dpoStep}" + (freeze ? ":freeze" : "") };

    /// <summary>The replica stopped at its failpoint (its index and host id), checked to be the job's owner in the store.</summary>
    private static async Task<(int Index, string Owner)> StoppedOwner(HostProcess[] hosts, NpgsqlConnection connection, string jobId, CancellationToken ct)
    {
        var reached = Failpoints.ReachedLine(Failpoints.TrainingStepDone);
        var deadline = DateTime.UtcNow.AddMinutes(3);
        int stopped;
        while ((stopped = Array.FindIndex(hosts, h => h.Log.Contains(reached, StringComparison.Ordinal))) < 0)
        {
            // from the store, not a replica: the one asked may be the one freezing
            var state = (JobState)Convert.ToInt32(await Scalar(connection, "SELECT state FROM jobs WHERE id=@v", jobId));
            Assert.False(state is JobState.Succeeded or JobState.Failed, $"the job ended ({state}) before its host reached DPO's failpoint\n{Logs(hosts)}");
            Assert.True(DateTime.UtcNow < deadline, $"no replica reached DPO's failpoint in 3 minutes (job {state})\n{Logs(hosts)}");
            await Task.Delay(100, ct);
        }
        var owner = (string)(await Scalar(connection, "SELECT owner FROM jobs WHERE id=@v", jobId))!;
        Assert.True(owner == $"replica-{stopped}", $"replica-{stopped} reached the failpoint but the store names '{owner}' the job's owner\n{Logs(hosts)}");
        return (stopped, owner);
    }

    private static string Logs(IEnumerable<HostProcess> hosts) =>
        string.Join("\n", hosts.Select((h, i) => $"--- replica-{i}:\n{PipelineTests.Tail(h.Log)}"));
}
