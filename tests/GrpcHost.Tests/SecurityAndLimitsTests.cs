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

    /// <summary>The host dll run as a command (`keys ...`, or a start that should fail); its exit code and output.</summary>
    private static async Task<(int Code, string Stdout, string Stderr)> RunHost(IEnumerable<string> args,
        IReadOnlyDictionary<string, string>? environment = null, string? workingDirectory = null)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.WorkingDirectory = workingDirectory ?? HostProcess.NewDataDir();
        info.ArgumentList.Add(HostProcess.HostDll);
        foreach (var a in args) info.ArgumentList.Add(a);
        info.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) info.Environment[name] = value;
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        if (!process.WaitForExit(60_000)) { process.Kill(); Assert.Fail("the host command did not exit in 60 s"); }
        return (process.ExitCode, await stdout, await stderr);
    }

    [Fact]
    public async Task Keys_go_to_the_configured_data_folder_and_can_be_listed_and_revoked()
    {
        var cwd = HostProcess.NewDataDir();
        var dataDir = HostProcess.NewDataDir();
        // --DataDir=dir (one word) and WT_DataDir, as the host reads them; nothing lands in ./data of the working folder.
        var added = await RunHost(["keys", "add", "ci", $"--DataDir={dataDir}"], workingDirectory: cwd);
        Assert.True(added.Code == 0, added.Stderr);
        var key = added.Stdout.Trim();
        Assert.StartsWith("wt_", key);
        var envDir = HostProcess.NewDataDir();
        var second = await RunHost(["keys", "add", "ops"], new Dictionary<string, string> { ["WT_DataDir"] = envDir }, cwd);
        Assert.True(second.Code == 0, second.Stderr);
        Assert.True(File.Exists(Path.Combine(dataDir, "wt.db")));
        Assert.True(File.Exists(Path.Combine(envDir, "wt.db")));
        Assert.False(Directory.Exists(Path.Combine(cwd, "data")), "a key was written to ./data instead of the configured folder");
        var third = await RunHost(["keys", "add", "spare", "--DataDir", dataDir], workingDirectory: cwd);
        Assert.Equal(0, third.Code);

        // The list names each key by id, name, creation time and prefix; no secret.
        var list = await RunHost(["keys", "list", "--DataDir", dataDir]);
        Assert.Equal(0, list.Code);
        var id = host::WeakTeacher.GrpcHost.Security.Keys.IdOf(ApiKeys.Hash(key));
        var line = list.Stdout.Split('\n').Single(l => l.StartsWith(id));
        Assert.Contains(" ci ", line);
        Assert.Contains(key[..8], line);
        Assert.Contains(DateTime.UtcNow.ToString("yyyy-MM-dd"), line);
        Assert.DoesNotContain(key, list.Stdout);
        Assert.DoesNotContain(third.Stdout.Trim(), list.Stdout);
        Assert.DoesNotContain(ApiKeys.Hash(key), list.Stdout);
        Assert.Contains(" spare ", list.Stdout);

        await using var server = await HostProcess.StartAsync(dataDir, ["--Auth:Require", "true"]);
        var datasets = new DatasetsService.DatasetsServiceClient(server.Channel);
        var withKey = new Metadata { { "authorization", $"Bearer {key}" } };
        await datasets.ListDatasetsAsync(new ListDatasetsRequest(), withKey);
        // Revoked by name while the host runs: its next request with that key is refused; the other key still works.
        var revoked = await RunHost(["keys", "revoke", "ci", "--DataDir", dataDir]);
        Assert.True(revoked.Code == 0, revoked.Stderr);
        await Client.Fails(StatusCode.Unauthenticated, async () => await datasets.ListDatasetsAsync(new ListDatasetsRequest(), withKey), "not valid");
        await datasets.ListDatasetsAsync(new ListDatasetsRequest(), new Metadata { { "authorization", $"Bearer {third.Stdout.Trim()}" } });
        var after = await RunHost(["keys", "list", "--DataDir", dataDir]);
        Assert.DoesNotContain(id, after.Stdout);
        // By id too; an unknown one is one line and exit code 2.
        var spareId = host::WeakTeacher.GrpcHost.Security.Keys.IdOf(ApiKeys.Hash(third.Stdout.Trim()));
        Assert.Equal(0, (await RunHost(["keys", "revoke", spareId, "--DataDir", dataDir])).Code);
        var unknown = await RunHost(["keys", "revoke", "nobody", "--DataDir", dataDir]);
        Assert.Equal(2, unknown.Code);
        Assert.Contains("no API key with id or name 'nobody'", unknown.Stderr);
        Assert.Single(unknown.Stderr.Trim().Split('\n'));
    }

    [Theory]
    [InlineData("--Auth:Require", "maybe", "Auth:Require: 'maybe' is not one of auto, true, false")]
    [InlineData("--Auth:ApiKeyHashes:0", "not-a-hash", "Auth:ApiKeyHashes: 'not-a-hash' is not a SHA-256 hash")]
    [InlineData("--Limits:QueueCapacity", "many", "Limits:QueueCapacity")]
    [InlineData("--JobStore:LeaseSeconds", "0", "JobStore:LeaseSeconds: 0 must be at least 1")]
    [InlineData("--JobStore:PostgreSql", "Nonsense=1", "JobStore:PostgreSql: not a valid connection string")]
    [InlineData("--JobStore:PostgreSql", "Host=127.0.0.1;Port=1;Database=wt;Timeout=2", "JobStore:PostgreSql: cannot use PostgreSQL 127.0.0.1:1/wt")]
    public async Task A_setting_the_host_cannot_use_is_one_line_and_exit_code_2(string name, string value, string message)
    {
        var run = await RunHost(["--urls", $"http://127.0.0.1:{HostProcess.FreePort()}", "--DataDir", HostProcess.NewDataDir(), name, value]);
        Assert.True(run.Code == 2, $"exit code {run.Code}:\n{run.Stdout}\n{run.Stderr}");
        Assert.Contains(message, run.Stderr);
        Assert.Single(run.Stderr.Trim().Split('\n'));
        Assert.DoesNotContain("   at ", run.Stderr + run.Stdout);
    }

    [Fact]
    public async Task Keys_not_required_by_setting_on_every_interface_are_logged_as_the_settings_choice()
    {
        int port = HostProcess.FreePort();
        await using var server = await HostProcess.StartAsync(port: port, extraArgs: ["--urls", $"http://0.0.0.0:{port}", "--Auth:Require", "false"]);
        Assert.Contains("API keys not required (Auth:Require=false)", server.Log);
        Assert.DoesNotContain("loopback", server.Log);
    }

    [Fact]
    public async Task Keyless_health_streams_cannot_take_the_stream_slots_of_keyed_callers()
    {
        const string key = "wt_test_key_streams_0123";
        await using var server = await HostProcess.StartAsync(extraArgs:
            ["--Auth:Require", "true", "--Auth:ApiKeyHashes:0", ApiKeys.Hash(key), "--Limits:MaxConcurrentStreams", "8", "--Limits:MaxKeyExemptStreams", "4"]);
        var health = new Health.HealthClient(server.Channel);
        using var stop = new CancellationTokenSource();
        // More keyless Health/Watch streams than either pool holds; each is open once its first response has come.
        var watches = new List<AsyncServerStreamingCall<HealthCheckResponse>>();
        var refused = 0;
        for (int i = 0; i < 12; i++)
        {
            var call = health.Watch(new HealthCheckRequest(), cancellationToken: stop.Token);
            try { await call.ResponseStream.MoveNext(stop.Token); watches.Add(call); }
            catch (RpcException e) when (e.StatusCode == StatusCode.ResourceExhausted) { refused++; call.Dispose(); }
        }
        Assert.Equal(4, watches.Count);
        Assert.Equal(8, refused);
        // Keyed streaming calls still get their slots: all 8 at once.
        var ok = new Metadata { { "authorization", $"Bearer {key}" } };
        var uploads = await Task.WhenAll(Enumerable.Range(0, 8).Select(i =>
            Client.UploadDataset(server.Channel, $"keyed-{i}", System.Text.Encoding.UTF8.GetBytes(Client.ExplicitRows), headers: ok)));
        Assert.All(uploads, u => Assert.Equal(3, u.Rows));
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await server.HealthAsync());
        stop.Cancel();
        foreach (var w in watches) w.Dispose();
    }

    [Fact]
    public async Task A_gzip_bomb_of_one_huge_line_is_refused_by_the_row_bound_in_bounded_memory()
    {
        await using var server = await HostProcess.StartAsync();
        // 512 MiB of one line with no newline, about 0.5 MB gzip'd.
        byte[] bomb;
        using (var output = new MemoryStream())
        {
            using (var gz = new System.IO.Compression.GZipStream(output, System.IO.Compression.CompressionLevel.Optimal))
            {
                var block = System.Text.Encoding.ASCII.GetBytes("{\"prompt\": \"" + new string('a', (1 << 20) - 12));
                for (int i = 0; i < 512; i++) gz.Write(block);
            }
            bomb = output.ToArray();
        }
        Assert.True(bomb.Length < 4 << 20, $"{bomb.Length} bytes compressed");
        long before = HostileRequestTests.PeakResidentBytes(server.ProcessId);
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(server.Channel, "bomb", bomb, chunk: 1 << 20), "Limits:MaxRowLength");
        long peak = HostileRequestTests.PeakResidentBytes(server.ProcessId);
        // Without the bound the reader built the whole line (2 bytes a character, and StringBuilder growth): over 1 GiB here.
        Assert.True(peak - before < 256L << 20, $"host peak RSS grew {(peak - before) >> 20} MiB (from {before >> 20} to {peak >> 20} MiB)");
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await server.HealthAsync());
    }

    [Fact]
    public async Task The_decompressed_size_of_an_upload_is_bounded_and_named()
    {
        await using var server = await HostProcess.StartAsync(extraArgs: ["--Limits:MaxDecompressedDatasetBytes", "1000000"]);
        var rows = string.Concat(Enumerable.Repeat(Client.ExplicitRows, 20000)); // well over 1 MB once decompressed
        var gz = Client.Gzip(rows);
        Assert.True(gz.Length < 1_000_000 && rows.Length > 2_000_000, $"{gz.Length} bytes gzip, {rows.Length} characters");
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(server.Channel, "big", gz, chunk: 1 << 16), "Limits:MaxDecompressedDatasetBytes");
        // The same rows within the bound upload as before.
        var ok = await Client.UploadDataset(server.Channel, "small", Client.Gzip(Client.ExplicitRows), chunk: 1 << 16);
        Assert.Equal(3, ok.Rows);
    }

    [Fact]
    public async Task Appsettings_json_applies_when_the_host_is_started_from_another_folder()
    {
        // As `./build.sh serve` starts it: the working directory is not the host's folder.
        var elsewhere = HostProcess.NewDataDir();
        await using var server = await HostProcess.StartAsync(workingDirectory: elsewhere);
        for (int i = 0; i < 5; i++) await new DatasetsService.DatasetsServiceClient(server.Channel).ListDatasetsAsync(new ListDatasetsRequest());
        await Task.Delay(300, TestContext.Current.CancellationToken);
        // appsettings.json sets Microsoft.AspNetCore to Warning: no per-request "Request starting/finished" lines.
        Assert.DoesNotContain("Request starting", server.Log);
        Assert.Contains("Data folder", server.Log); // the host's own information lines still come
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
        Assert.Throws<host::WeakTeacher.GrpcHost.ConfigurationException>(() => ApiKeys.ResolveRequired("maybe", []));
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
