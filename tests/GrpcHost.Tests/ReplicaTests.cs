using System.Globalization;
using System.Text.RegularExpressions;
using Grpc.Core;
using WeakTeacher.Client;
using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>Clients across host replicas (issue 16 point 3): client-side load balancing, and a LabelStream that loses its replica.</summary>
[Collection("default-task")]
public sealed class ReplicaTests(DefaultTaskHost shared)
{
    [Theory]
    [InlineData("")]
    [InlineData("ftp://h:1")]
    [InlineData("http://h:1/path")]
    [InlineData("http://a:1,https://b:2")]
    [InlineData("dns:///a:1,http://b:2")]
    public void Host_lists_that_name_no_replica_are_refused_by_what_is_wrong(string hosts)
    {
        var e = Assert.Throws<ArgumentException>(() => HostChannel.Create(hosts));
        Assert.StartsWith("host: ", e.Message);
    }

    [Fact]
    public async Task A_replica_killed_mid_stream_costs_only_its_unanswered_pairs_and_every_pair_is_labelled_once()
    {
        await shared.RequireStagesAsync();
        var ct = TestContext.Current.CancellationToken;
        // A teacher trained on the shared host, uploaded to one replica's data folder, which two copies share (the same
        // model id on every replica, as with a shared volume).
        var jobs = new JobsService.JobsServiceClient(shared.Host.Channel);
        var train = await PipelineTests.WaitForEnd(jobs, (await jobs.TrainAsync(PipelineTests.TeacherRequest("default-teacher-base", "default-labelled", 2, 0))).JobId);
        Assert.True(train.State == JobState.Succeeded, $"{train.State} {train.Error}");
        var files = await Client.DownloadModel(shared.Host.Channel, train.Artifacts.Single(a => a.Name == "teacher").Id);
        var firstDir = HostProcess.NewDataDir();
        string teacher;
        await using (var first = await HostProcess.StartAsync(firstDir))
        {
            teacher = (await Client.UploadModel(first.Channel, "teacher", files, chunk: 1 << 20)).Id;
            await first.StopAsync(); // SIGTERM: the catalog is closed before the folder is copied
        }
        var dirs = new[] { firstDir, HostProcess.NewDataDir(), HostProcess.NewDataDir() };
        foreach (var dir in dirs.Skip(1)) CopyDirectory(firstDir, dir);

        // One thread per host: three replicas share two cores here, and one-threaded libtorch sums in one order.
        var oneThread = new Dictionary<string, string> { ["OMP_NUM_THREADS"] = "1", ["MKL_NUM_THREADS"] = "1" };
        var metricsPorts = dirs.Select(_ => HostProcess.FreePort()).ToArray();
        var replicas = await Task.WhenAll(dirs.Select((dir, i) => HostProcess.StartAsync(dir, ["--MetricsUrl", $"http://127.0.0.1:{metricsPorts[i]}"], environment: oneThread)));
        try
        {
            var pairs = Enumerable.Range(0, 480).Select(i => new LabelPairRequest
            {
                Id = $"pair-{i}", Prompt = $"Question {i}: name something {(i % 3 == 0 ? "red" : "green")}.",
                ResponseA = $"A careful answer number {i}.", ResponseB = i % 2 == 0 ? "no" : $"Maybe {i}?",
            }).ToList();

            // What one host says, with no fault: the labels to reproduce.
            var single = await ReplicatedLabelStream.LabelAsync(replicas[0].Channel, teacher, pairs, ct: ct);
            Assert.Equal(0, single.StreamsReopened);

            using var channel = HostChannel.Create(string.Join(",", replicas.Select(r => r.Address)));
            var options = new LabelStreamOptions { Streams = 3, Window = 16 };
            using var http = new HttpClient();
            var before = await Task.WhenAll(metricsPorts.Select(p => LabelledPairs(http, p, ct)));
            var run = ReplicatedLabelStream.LabelAsync(channel, teacher, pairs, options, ct: ct);
            // Kill the replica that has labelled the most of this run so far, once it has begun, while pairs are still to come.
            HostProcess? killed = null;
            while (killed is null && !run.IsCompleted)
            {
                var counts = (await Task.WhenAll(metricsPorts.Select(p => LabelledPairs(http, p, ct)))).Select((n, i) => n - before[i]).ToArray();
                int busiest = Array.IndexOf(counts, counts.Max());
                if (counts[busiest] >= options.Window) { killed = replicas[busiest]; killed.Kill(); }
                else await Task.Delay(50, ct);
            }
            var result = await run;

            Assert.NotNull(killed);
            Assert.True(result.StreamsReopened >= 1 && result.PairsResent is > 0 and <= 3 * 16,
                $"{result.StreamsReopened} streams reopened, {result.PairsResent} pairs re-sent: the kill did not land mid-stream");
            // Every pair once, in order, with the label the single host gave it (the same teacher; batches differ only, so the
            // rewards agree to rounding: a tolerance, not rounding both to 4 places, which splits values either side of a boundary)
            Assert.Equal(pairs.Select(p => p.Id), result.Labels.Select(l => l.Id));
            // and the same preference, except where the single host's margin is within that rounding: such a near tie may
            // fall either way (a 2-step teacher leaves pairs near a tie: one preference differed in one of this session's runs)
            for (int i = 0; i < pairs.Count; i++)
            {
                Assert.Equal(single.Labels[i].RewardA, result.Labels[i].RewardA, tolerance: 1e-4);
                Assert.Equal(single.Labels[i].RewardB, result.Labels[i].RewardB, tolerance: 1e-4);
                double margin = single.Labels[i].RewardA - single.Labels[i].RewardB;
                Assert.True(single.Labels[i].Preferred == result.Labels[i].Preferred || Math.Abs(margin) < 2e-4,
                    $"{pairs[i].Id}: preferred {result.Labels[i].Preferred}, the single host {single.Labels[i].Preferred} at a margin of {margin:G3}");
            }
            // The survivors took the rest, the re-sent pairs among them, and labelled no pair twice.
            var survivors = Enumerable.Range(0, replicas.Length).Where(i => replicas[i] != killed).ToArray();
            long onSurvivors = (await Task.WhenAll(survivors.Select(i => LabelledPairs(http, metricsPorts[i], ct)))).Sum() - survivors.Sum(i => before[i]);
            Assert.InRange(onSurvivors, result.PairsResent, pairs.Count);

            // A host list whose every replica is gone: the stream gives up with UNAVAILABLE instead of waiting for ever.
            foreach (var r in replicas) r.Kill();
            var gone = await Assert.ThrowsAsync<RpcException>(() => ReplicatedLabelStream.LabelAsync(channel, teacher, pairs.Take(4).ToList(),
                options with { Streams = 1, MaxFailuresWithoutProgress = 2, Backoff = TimeSpan.FromMilliseconds(10) }, ct: ct));
            Assert.Equal(StatusCode.Unavailable, gone.StatusCode);
        }
        finally
        {
            foreach (var r in replicas) await r.DisposeAsync();
        }
    }

    /// <summary>wt_labeling_pairs_total from a host's Prometheus endpoint (0 before its first label, or when it is gone).</summary>
    private static async Task<long> LabelledPairs(HttpClient http, int metricsPort, CancellationToken ct)
    {
        string text;
        try { text = await http.GetStringAsync($"http://127.0.0.1:{metricsPort}/metrics", ct); }
        catch (HttpRequestException) { return 0; }
        return Regex.Matches(text, @"^wt_labeling_pairs_total(?:\{[^}]*\})?\s+(\S+)", RegexOptions.Multiline)
            .Sum(m => (long)double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture));
    }

    private static void CopyDirectory(string from, string to)
    {
        foreach (var dir in Directory.EnumerateDirectories(from, "*", SearchOption.AllDirectories))
            Directory.CreateDirectory(Path.Combine(to, Path.GetRelativePath(from, dir)));
        foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
            File.Copy(file, Path.Combine(to, Path.GetRelativePath(from, file)));
    }
}
