extern alias host;
using System.Diagnostics;
using Grpc.Core;
using Grpc.Health.V1;
using WeakTeacher.Grpc.V1;
using Xunit;
using ApiKeys = host::WeakTeacher.GrpcHost.Security.ApiKeys;
using JobWorker = host::WeakTeacher.GrpcHost.Jobs.JobWorker;

namespace WeakTeacher.GrpcHost.Tests;

public sealed class SecurityAndLimitsTests
{
    [Fact]
    public async Task With_keys_required_a_missing_or_wrong_key_is_unauthenticated_and_the_right_one_works()
    {
        const string key = "wt_test_key_0123456789";
        await using var server = await HostProcess.StartAsync(extraArgs:
            ["--Auth:Require", "true", "--Auth:ApiKeyHashes:0", ApiKeys.Hash(key)]);
        var datasets = new DatasetsService.DatasetsServiceClient(server.Channel);
        await Client.Fails(StatusCode.Unauthenticated, async () => await datasets.ListDatasetsAsync(new ListDatasetsRequest()), "authorization");
        await Client.Fails(StatusCode.Unauthenticated, async () =>
            await datasets.ListDatasetsAsync(new ListDatasetsRequest(), new Metadata { { "authorization", "Bearer wrong" } }), "not valid");
        await Client.Fails(StatusCode.Unauthenticated, async () =>
            await datasets.ListDatasetsAsync(new ListDatasetsRequest(), new Metadata { { "authorization", key } }), "Bearer");
        // Streams too, before any message is read.
        await Client.Fails(StatusCode.Unauthenticated, () => Client.UploadDataset(server.Channel, "x", System.Text.Encoding.UTF8.GetBytes(Client.ExplicitRows)));
        var ok = new Metadata { { "authorization", $"Bearer {key}" } };
        await datasets.ListDatasetsAsync(new ListDatasetsRequest(), ok);
        var uploaded = await Client.UploadDataset(server.Channel, "keyed", System.Text.Encoding.UTF8.GetBytes(Client.ExplicitRows), headers: ok);
        Assert.Equal(3, uploaded.Rows);
        // Health checking stays open for load balancers.
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await server.HealthAsync());
    }

    [Fact]
    public async Task A_key_added_with_the_keys_command_is_stored_hashed_and_accepted()
    {
        var dataDir = HostProcess.NewDataDir();
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { HostProcess.HostDll, "keys", "add", "ci", "--DataDir", dataDir }) info.ArgumentList.Add(a);
        using var keys = Process.Start(info)!;
        var key = (await keys.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken)).Trim();
        await keys.WaitForExitAsync(TestContext.Current.CancellationToken);
        Assert.Equal(0, keys.ExitCode);
        Assert.StartsWith("wt_", key);
        var db = await File.ReadAllBytesAsync(Path.Combine(dataDir, "wt.db"), TestContext.Current.CancellationToken);
        Assert.DoesNotContain(key, System.Text.Encoding.Latin1.GetString(db));
        await using var server = await HostProcess.StartAsync(dataDir, ["--Auth:Require", "true"]);
        var datasets = new DatasetsService.DatasetsServiceClient(server.Channel);
        await Client.Fails(StatusCode.Unauthenticated, async () => await datasets.ListDatasetsAsync(new ListDatasetsRequest()));
        await datasets.ListDatasetsAsync(new ListDatasetsRequest(), new Metadata { { "authorization", $"Bearer {key}" } });
    }

    [Fact]
    public void Keys_are_required_by_default_except_on_loopback()
    {
        Assert.False(ApiKeys.ResolveRequired("auto", ["http://127.0.0.1:5000", "http://[::1]:5001", "http://localhost:5002"]));
        Assert.True(ApiKeys.ResolveRequired("auto", ["http://127.0.0.1:5000", "http://0.0.0.0:5001"]));
        Assert.True(ApiKeys.ResolveRequired("auto", ["http://*:5000"]));
        Assert.True(ApiKeys.ResolveRequired("auto", ["https://+:5000"]));
        Assert.True(ApiKeys.ResolveRequired("auto", ["http://192.168.1.4:5000"]));
        Assert.True(ApiKeys.ResolveRequired("true", ["http://127.0.0.1:5000"]));
        Assert.False(ApiKeys.ResolveRequired("false", ["http://0.0.0.0:5000"]));
        Assert.Throws<InvalidOperationException>(() => ApiKeys.ResolveRequired("maybe", []));
    }

    [Fact]
    public async Task A_host_listening_beyond_loopback_without_keys_refuses_to_start()
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        int port = HostProcess.FreePort();
        foreach (var a in new[] { HostProcess.HostDll, "--urls", $"http://0.0.0.0:{port}", "--DataDir", HostProcess.NewDataDir() }) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var output = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        Assert.True(process.WaitForExit(60_000), "the host should exit");
        Assert.Equal(2, process.ExitCode);
        Assert.Contains("API keys are required", await output);
    }

    [Fact]
    public void Device_out_of_memory_maps_to_resource_exhausted()
    {
        var (code, message) = JobWorker.Classify(new InvalidOperationException("wrapper", new Exception("CUDA out of memory. Tried to allocate 2.00 GiB")));
        Assert.Equal(StatusCode.ResourceExhausted, code);
        Assert.Contains("out of memory", message);
        Assert.Equal("RESOURCE_EXHAUSTED", JobWorker.ToCodeName(code));
        Assert.Equal(StatusCode.Internal, JobWorker.Classify(new InvalidOperationException("boom")).Code);
        Assert.Equal(StatusCode.NotFound, JobWorker.Classify(new RpcException(new Status(StatusCode.NotFound, "x"))).Code);
    }

    [Fact]
    public async Task Streams_beyond_the_limit_are_refused_and_the_host_recovers()
    {
        await using var server = await HostProcess.StartAsync(extraArgs: ["--Limits:MaxConcurrentStreams", "4"]);
        var datasets = new DatasetsService.DatasetsServiceClient(server.Channel);
        var open = new List<AsyncClientStreamingCall<UploadDatasetRequest, Dataset>>();
        int refused = 0;
        for (int i = 0; i < 12; i++)
        {
            var call = datasets.UploadDataset(deadline: DateTime.UtcNow.AddSeconds(60));
            open.Add(call);
            try
            {
                await call.RequestStream.WriteAsync(new UploadDatasetRequest { Metadata = new DatasetMetadata { Name = $"s{i}" } });
                await call.RequestStream.WriteAsync(new UploadDatasetRequest { Data = Google.Protobuf.ByteString.CopyFromUtf8(Client.ExplicitRows) });
            }
            catch (RpcException) { }
            catch (InvalidOperationException) { }
        }
        await Task.Delay(500, TestContext.Current.CancellationToken);
        // The refused ones have already ended; the others are still open.
        foreach (var call in open)
        {
            var status = TryStatus(call);
            if (status?.StatusCode == StatusCode.ResourceExhausted) refused++;
        }
        Assert.Equal(8, refused);
        // Finish the admitted uploads; then new streams are admitted again.
        int stored = 0;
        foreach (var call in open)
        {
            if (TryStatus(call) is not null) continue;
            await call.RequestStream.CompleteAsync();
            if ((await call.ResponseAsync).Rows == 3) stored++;
        }
        Assert.Equal(4, stored);
        foreach (var call in open) call.Dispose();
        Assert.Equal(3, (await Client.UploadDataset(server.Channel, "after", Client.ExplicitRows)).Rows);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await server.HealthAsync());
    }

    private static Status? TryStatus(AsyncClientStreamingCall<UploadDatasetRequest, Dataset> call)
    {
        try { return call.ResponseAsync.IsCompleted ? call.GetStatus() : null; }
        catch (InvalidOperationException) { return null; }
    }

    [Fact]
    public async Task Datasets_and_models_survive_a_kill_and_restart()
    {
        var dataDir = HostProcess.NewDataDir();
        string datasetId, modelId;
        await using (var first = await HostProcess.StartAsync(dataDir))
        {
            datasetId = (await Client.UploadDataset(first.Channel, "kept", Client.ExplicitRows)).Id;
            modelId = (await Client.UploadModel(first.Channel, "kept", new Dictionary<string, byte[]> { ["config.json"] = Client.OptConfig })).Id;
            first.Kill();
        }
        await using var second = await HostProcess.StartAsync(dataDir);
        var ds = await new DatasetsService.DatasetsServiceClient(second.Channel).GetDatasetAsync(new GetDatasetRequest { DatasetId = datasetId });
        Assert.Equal(3, ds.Rows);
        var files = await Client.DownloadModel(second.Channel, modelId);
        Assert.Equal(Client.OptConfig, files["config.json"]);
    }
}
