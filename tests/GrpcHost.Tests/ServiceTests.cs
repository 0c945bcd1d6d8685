using System.Text;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Reflection.V1Alpha;
using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>One real host (loopback, no key needed) shared by the class.</summary>
public sealed class SharedHost : IAsyncLifetime
{
    internal HostProcess Host { get; private set; } = null!;
    public string ImportDir { get; } = HostProcess.NewDataDir();
    public int MetricsPort { get; private set; }

    public async ValueTask InitializeAsync()
    {
        File.WriteAllText(Path.Combine(ImportDir, "good.jsonl"), Client.ExplicitRows);
        Directory.CreateDirectory(Path.Combine(ImportDir, "tiny-model"));
        File.WriteAllBytes(Path.Combine(ImportDir, "tiny-model", "config.json"), Client.OptConfig);
        File.WriteAllText(Path.Combine(ImportDir, "..", Path.GetFileName(ImportDir) + "-secret.jsonl"), Client.ExplicitRows);
        File.CreateSymbolicLink(Path.Combine(ImportDir, "link.jsonl"), "/etc/passwd");
        MetricsPort = HostProcess.FreePort();
        Host = await HostProcess.StartAsync(extraArgs: ["--ImportDir", ImportDir, "--Limits:MaxMessageBytes", "1048576",
            "--MetricsUrl", $"http://127.0.0.1:{MetricsPort}"]);
    }

    public async ValueTask DisposeAsync() => await Host.DisposeAsync();
}

public sealed class ServiceTests(SharedHost shared) : IClassFixture<SharedHost>
{
    private HostProcess Host => shared.Host;
    private DatasetsService.DatasetsServiceClient Datasets => new(Host.Channel);
    private ModelsService.ModelsServiceClient Models => new(Host.Channel);
    private JobsService.JobsServiceClient Jobs => new(Host.Channel);

    [Fact]
    public async Task Health_is_serving_and_reflection_lists_the_services()
    {
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await Host.HealthAsync());
        var reflection = new ServerReflection.ServerReflectionClient(Host.Channel);
        using var call = reflection.ServerReflectionInfo(deadline: DateTime.UtcNow.AddSeconds(10));
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        await call.RequestStream.CompleteAsync();
        Assert.True(await call.ResponseStream.MoveNext(TestContext.Current.CancellationToken));
        var names = call.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name).ToList();
        foreach (var expected in new[] { "weakteacher.v1.JobsService", "weakteacher.v1.DatasetsService", "weakteacher.v1.ModelsService",
                     "weakteacher.v1.LabelingService", "grpc.health.v1.Health" })
            Assert.Contains(expected, names);
    }

    [Fact]
    public async Task Metrics_are_scraped_in_prometheus_format()
    {
        using var http = new HttpClient();
        // Touch the service so the host's instruments have observations.
        await Datasets.ListDatasetsAsync(new ListDatasetsRequest(), cancellationToken: TestContext.Current.CancellationToken);
        // Prometheus scrapes over HTTP/1.1 on the metrics endpoint (gRPC endpoints are HTTP/2 only).
        var text = await http.GetStringAsync($"http://127.0.0.1:{shared.MetricsPort}/metrics", TestContext.Current.CancellationToken);
        Assert.Contains("wt_jobs_queue_length", text);
        Assert.Contains("wt_jobs_running", text);
    }

    [Fact]
    public async Task Dataset_upload_is_validated_stored_listed_and_deleted()
    {
        var ds = await Client.UploadDataset(Host.Channel, "explicit-3", Client.ExplicitRows);
        Assert.Equal(3, ds.Rows);
        Assert.Equal(DatasetFormat.Explicit, ds.Format);
        Assert.Equal(FileEncoding.Jsonl, ds.Encoding);
        Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(Client.ExplicitRows))), ds.Sha256);
        Assert.Equal("explicit-3", (await Datasets.GetDatasetAsync(new GetDatasetRequest { DatasetId = ds.Id })).Name);
        Assert.Contains((await Datasets.ListDatasetsAsync(new ListDatasetsRequest())).Datasets, d => d.Id == ds.Id);
        await Datasets.DeleteDatasetAsync(new DeleteDatasetRequest { DatasetId = ds.Id });
        await Client.Fails(StatusCode.NotFound, async () => await Datasets.GetDatasetAsync(new GetDatasetRequest { DatasetId = ds.Id }), "dataset_id");
    }

    [Fact]
    public async Task Gzip_and_unlabelled_and_hh_uploads_are_read_with_the_engine_readers()
    {
        var unlabelled = Client.Jsonl(new { prompt = "p1", response_a = "a", response_b = "b" }, new { prompt = "p2", response_a = "c", response_b = "d", label = 1 });
        var gz = await Client.UploadDataset(Host.Channel, "pairs.jsonl.gz", Client.Gzip(unlabelled), chunk: 5);
        Assert.Equal(FileEncoding.JsonlGz, gz.Encoding);
        Assert.Equal(DatasetFormat.Unlabelled, gz.Format);
        Assert.Equal(2, gz.Rows);
        var hh = Client.Jsonl(new { chosen = "\n\nHuman: Hi\n\nAssistant: Hello there.", rejected = "\n\nHuman: Hi\n\nAssistant: Go away." });
        Assert.Equal(DatasetFormat.HhRlhf, (await Client.UploadDataset(Host.Channel, "hh", hh)).Format);
        var prompts = Client.Jsonl(new { prompt = "Tell me a joke." }, new { prompt = "What is 3+4?" });
        Assert.Equal(2, (await Client.UploadDataset(Host.Channel, "prompts", prompts, DatasetFormat.Prompts)).Rows);
    }

    [Fact]
    public async Task A_bad_row_is_reported_with_its_line_and_field_and_nothing_is_stored()
    {
        var before = (await Datasets.ListDatasetsAsync(new ListDatasetsRequest())).Datasets.Count;
        // 300 good rows, then a row whose chosen is a number: found while streaming, past the first validation batch.
        var rows = Enumerable.Range(0, 300).Select(i => (object)new { prompt = $"q{i}", chosen = "yes", rejected = "no" })
            .Append(new { prompt = "q", chosen = 42, rejected = "no" }).ToArray();
        var e = await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(Host.Channel, "bad", Client.Jsonl(rows), chunk: 512));
        Assert.Contains("line 301", e.Status.Detail);
        Assert.Contains("'chosen'", e.Status.Detail);
        Assert.Contains("expected a string", e.Status.Detail);

        e = await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(Host.Channel, "bad",
            Client.ExplicitRows + "{not json\n"));
        Assert.Contains("line 4", e.Status.Detail);
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(Host.Channel, "bad",
            Client.Jsonl(new { prompt = "p", chosen = "c" })), "'rejected'");
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(Host.Channel, "bad",
            Client.Jsonl(new { prompt = "p", response_a = "a", response_b = "b", label = "maybe" })), "'label'");
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(Host.Channel, "bad",
            Client.Jsonl(new { prompt = 5 }), DatasetFormat.Prompts), "'prompt'");
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(Host.Channel, "empty", ""), "data");
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(Host.Channel, "gz-declared",
            Encoding.UTF8.GetBytes(Client.ExplicitRows), encoding: FileEncoding.JsonlGz), "metadata.encoding");
        Assert.Equal(before, (await Datasets.ListDatasetsAsync(new ListDatasetsRequest())).Datasets.Count);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(Host.DataDir, "tmp")));
    }

    [Theory]
    [InlineData("../escape")]
    [InlineData("a/b")]
    [InlineData(".hidden")]
    [InlineData("")]
    [InlineData("na\u0000me")]
    public async Task Dataset_names_that_could_name_a_path_are_refused(string name)
    {
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadDataset(Host.Channel, name, Client.ExplicitRows), "metadata.name");
    }

    [Fact]
    public async Task Upload_streams_out_of_order_are_refused()
    {
        var client = Datasets;
        using var call = client.UploadDataset();
        await call.RequestStream.WriteAsync(new UploadDatasetRequest { Data = Google.Protobuf.ByteString.CopyFromUtf8("{}") });
        await call.RequestStream.CompleteAsync();
        await Client.Fails(StatusCode.InvalidArgument, async () => await call.ResponseAsync, "metadata");
    }

    [Theory]
    [InlineData("../" + "x.jsonl")]
    [InlineData("/etc/passwd")]
    [InlineData("sub/../../x.jsonl")]
    [InlineData("link.jsonl")]
    [InlineData("~/x.jsonl")]
    public async Task Imports_cannot_leave_the_import_folder(string path)
    {
        await Client.Fails(StatusCode.InvalidArgument, async () => await Datasets.ImportDatasetAsync(new ImportDatasetRequest { Path = path }), "path");
    }

    [Fact]
    public async Task Import_reads_files_and_model_folders_from_the_import_folder()
    {
        var outside = "../" + Path.GetFileName(shared.ImportDir) + "-secret.jsonl";
        await Client.Fails(StatusCode.InvalidArgument, async () => await Datasets.ImportDatasetAsync(new ImportDatasetRequest { Path = outside }), "path");
        var ds = await Datasets.ImportDatasetAsync(new ImportDatasetRequest { Path = "good.jsonl" });
        Assert.Equal(3, ds.Rows);
        Assert.Equal("import", ds.Source);
        await Client.Fails(StatusCode.NotFound, async () => await Datasets.ImportDatasetAsync(new ImportDatasetRequest { Path = "missing.jsonl" }));
        var model = await Models.ImportModelAsync(new ImportModelRequest { Path = "tiny-model", Metadata = new ModelMetadata { Name = "tiny" } });
        Assert.Equal("opt", model.ModelType);
        await Client.Fails(StatusCode.InvalidArgument, async () => await Models.ImportModelAsync(new ImportModelRequest { Path = "../" }), "path");
    }

    [Fact]
    public async Task Model_upload_round_trips_in_the_hugging_face_layout()
    {
        var weights = new byte[300_000];
        new Random(1).NextBytes(weights);
        var files = new Dictionary<string, byte[]>
        {
            ["config.json"] = Client.OptConfig,
            ["model.safetensors"] = weights,
            ["tokenizer/vocab.json"] = Encoding.UTF8.GetBytes("{\"a\":0}"),
        };
        var model = await Client.UploadModel(Host.Channel, "uploaded", files, chunk: 65_536);
        Assert.Equal("opt", model.ModelType);
        Assert.Equal(3, model.Files.Count);
        var back = await Client.DownloadModel(Host.Channel, model.Id, chunkSize: 100_000);
        Assert.Equal(files.Keys.Order(), back.Keys.Order());
        foreach (var (path, bytes) in files) Assert.Equal(bytes, back[path]);
        Assert.Contains((await Models.ListModelsAsync(new ListModelsRequest())).Models, m => m.Id == model.Id);
        await Models.DeleteModelAsync(new DeleteModelRequest { ModelId = model.Id });
        await Client.Fails(StatusCode.NotFound, () => Client.DownloadModel(Host.Channel, model.Id), "model_id");
    }

    [Theory]
    [InlineData("../config.json")]
    [InlineData("/abs/config.json")]
    [InlineData("a/../../b")]
    [InlineData("a\\b")]
    public async Task Model_file_paths_cannot_escape_the_model(string path)
    {
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadModel(Host.Channel, "evil",
            new Dictionary<string, byte[]> { ["config.json"] = Client.OptConfig, [path] = [1, 2, 3] }), "chunk.path");
    }

    [Fact]
    public async Task A_model_without_a_valid_config_is_refused()
    {
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadModel(Host.Channel, "nocfg",
            new Dictionary<string, byte[]> { ["weights.bin"] = [1, 2, 3] }), "config.json");
        await Client.Fails(StatusCode.InvalidArgument, () => Client.UploadModel(Host.Channel, "badcfg",
            new Dictionary<string, byte[]> { ["config.json"] = Encoding.UTF8.GetBytes("{\"model_type\":\"bert\"}") }), "config.json");
    }

    [Fact]
    public async Task Unknown_ids_are_not_found_and_invalid_fields_are_named()
    {
        await Client.Fails(StatusCode.NotFound, async () => await Jobs.GetJobAsync(new GetJobRequest { JobId = "job-nope" }), "job_id");
        await Client.Fails(StatusCode.NotFound, async () => await Jobs.CancelJobAsync(new CancelJobRequest { JobId = "job-nope" }), "job_id");
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.GetJobAsync(new GetJobRequest()), "job_id");
        await Client.Fails(StatusCode.NotFound, async () =>
        {
            using var watch = Jobs.WatchJob(new WatchJobRequest { JobId = "job-nope" });
            await watch.ResponseStream.MoveNext(TestContext.Current.CancellationToken);
        }, "job_id");
        await Client.Fails(StatusCode.NotFound, async () => await Models.GetModelAsync(new GetModelRequest { ModelId = "mdl-nope" }), "model_id");
        await Client.Fails(StatusCode.NotFound, async () => await Jobs.TrainAsync(new TrainRequest { BaseModelId = "mdl-nope", LabelledDatasetId = "ds-nope" }), "base_model_id");
        var model = await Models.ImportModelAsync(new ImportModelRequest { Path = "tiny-model" });
        var data = await Client.UploadDataset(Host.Channel, "train", Client.ExplicitRows);
        await Client.Fails(StatusCode.NotFound, async () => await Jobs.TrainAsync(new TrainRequest { BaseModelId = model.Id, LabelledDatasetId = "ds-nope" }), "labelled_dataset_id");
        var train = new TrainRequest
        {
            BaseModelId = model.Id, LabelledDatasetId = data.Id,
            Sft = new SftConfig { Args = new TrainingArguments { LearningRate = -1 } },
        };
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.TrainAsync(train), "sft.args.learning_rate");
        train.Sft.Args.LearningRate = 1e-4;
        train.Dpo = new DpoConfig { Args = new TrainingArguments { Lora = new LoraConfig { Rank = 0 } } };
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.TrainAsync(train), "dpo.args.lora.rank");
        train.Dpo = new DpoConfig { Beta = 0 };
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.TrainAsync(train), "dpo.beta");
        train.Dpo = null;
        train.Template = "jinja";
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.TrainAsync(train), "template");
        train.Template = "";
        train.OutputName = "../../etc";
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.TrainAsync(train), "output_name");
        train.OutputName = "";
        train.Method = (TeacherMethod)17;
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.TrainAsync(train), "method");
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.EvaluateAsync(new EvaluateRequest { PromptsDatasetId = data.Id }), "models");
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.LabelAsync(new LabelRequest
        {
            TeacherModelId = model.Id, UnlabelledDatasetId = data.Id, MarginQuantile = 1.5,
        }), "margin_quantile");
        foreach (var shards in new[] { 0, 257 })
            await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.LabelAsync(new LabelRequest
            {
                TeacherModelId = model.Id, UnlabelledDatasetId = data.Id, ShardCount = shards,
            }), "shard_count");
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.ListJobsAsync(new ListJobsRequest { PageSize = -1 }), "page_size");
    }

    [Fact]
    public async Task A_message_over_the_limit_is_refused_and_the_host_keeps_serving()
    {
        var huge = new byte[2 * 1024 * 1024]; // the host runs with Limits:MaxMessageBytes = 1 MiB
        Array.Fill(huge, (byte)'x');
        await Client.Fails(StatusCode.ResourceExhausted, () => Client.UploadDataset(Host.Channel, "huge", huge, chunk: huge.Length));
        await Client.Fails(StatusCode.ResourceExhausted, async () => await Jobs.GetJobAsync(new GetJobRequest { JobId = new string('j', 2 * 1024 * 1024) }));
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await Host.HealthAsync());
    }

    [Fact]
    public async Task Deadlines_and_cancellation_end_calls_and_leave_nothing_half_written()
    {
        using (var call = Datasets.UploadDataset(deadline: DateTime.UtcNow.AddMilliseconds(800)))
        {
            await call.RequestStream.WriteAsync(new UploadDatasetRequest { Metadata = new DatasetMetadata { Name = "slow" } });
            await call.RequestStream.WriteAsync(new UploadDatasetRequest { Data = Google.Protobuf.ByteString.CopyFromUtf8(Client.ExplicitRows[..20]) });
            await Client.Fails(StatusCode.DeadlineExceeded, async () => await call.ResponseAsync);
        }
        using (var cts = new CancellationTokenSource())
        {
            using var call = Datasets.UploadDataset(cancellationToken: cts.Token);
            await call.RequestStream.WriteAsync(new UploadDatasetRequest { Metadata = new DatasetMetadata { Name = "cancelled" } });
            cts.Cancel();
            await Client.Fails(StatusCode.Cancelled, async () => await call.ResponseAsync);
        }
        await Client.Fails(StatusCode.DeadlineExceeded, async () =>
            await Datasets.ListDatasetsAsync(new ListDatasetsRequest(), deadline: DateTime.UtcNow.AddTicks(-1)));
        // The server notices the abandoned uploads and removes their staging folders.
        var tmp = Path.Combine(Host.DataDir, "tmp");
        for (int i = 0; i < 50 && Directory.EnumerateFileSystemEntries(tmp).Any(); i++) await Task.Delay(100);
        Assert.Empty(Directory.EnumerateFileSystemEntries(tmp));
        Assert.DoesNotContain((await Datasets.ListDatasetsAsync(new ListDatasetsRequest())).Datasets, d => d.Name is "slow" or "cancelled");
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await Host.HealthAsync());
    }
}
