using System.CommandLine;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using WeakTeacher.Client;
using Spectre.Console;
using WeakTeacher.Grpc.V1;
using JobProgressEvent = WeakTeacher.Engine.Pipeline.JobProgress;

namespace WeakTeacher.Cli;

/// <summary>
/// `wt remote ...`: the command line as a client of a (possibly remote) WeakTeacher gRPC host. Ids come from the host
/// (uploads, `datasets`, `models`); `--watch` follows a job with the same progress bar as local runs.
/// </summary>
public static class RemoteCommands
{
    private static readonly Option<string> Host = new("--host")
    {
        Description = "Host address, several separated by commas (round_robin over the replicas), or dns:///name:port (every address of a headless service) (env WT_HOST).",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("WT_HOST") ?? "http://127.0.0.1:50051",
    };
    private static readonly Option<string?> ApiKey = new("--api-key") { Description = "API key, sent as a bearer token (env WT_API_KEY)." };
    private static readonly Option<bool> Watch = new("--watch") { Description = "Follow the job's progress until it ends." };

    public static void Add(RootCommand root)
    {
        var remote = new Command("remote", "Drive a WeakTeacher gRPC host: upload data, start Train/Label/Align/Evaluate jobs, watch them.");
        remote.Options.Add(Host);
        remote.Options.Add(ApiKey);

        var jobs = new Command("jobs", "List jobs.");
        jobs.SetAction((p, ct) => Call(p, async (c, h) =>
        {
            var list = await new JobsService.JobsServiceClient(c).ListJobsAsync(new ListJobsRequest(), h, cancellationToken: ct);
            foreach (var j in list.Jobs) Console.WriteLine($"{j.Id}  {j.Kind,-18} {j.State,-20} {j.Progress?.Stage} {j.Progress?.Step}/{j.Progress?.TotalSteps} {j.Error}");
        }));
        remote.Subcommands.Add(jobs);

        var jobId = new Argument<string>("job-id");
        var watch = new Command("watch", "Follow a job's progress until it ends.") { jobId };
        watch.SetAction((p, ct) => Call(p, (c, h) => WatchJob(c, h, p.GetValue(jobId)!, ct)));
        remote.Subcommands.Add(watch);

        var cancel = new Command("cancel", "Cancel a job.") { jobId };
        cancel.SetAction((p, ct) => Call(p, async (c, h) =>
        {
            var job = await new JobsService.JobsServiceClient(c).CancelJobAsync(new CancelJobRequest { JobId = p.GetValue(jobId)! }, h, cancellationToken: ct);
            Console.WriteLine($"{job.Id} {job.State}");
        }));
        remote.Subcommands.Add(cancel);

        var file = new Argument<string>("file");
        var name = new Option<string?>("--name") { Description = "Name on the host (default: the file name)." };
        var upload = new Command("upload-dataset", "Upload a preference/unlabelled/prompt file (JSONL, JSONL.gz or Parquet); prints its id.") { file, name };
        upload.SetAction((p, ct) => Call(p, async (c, h) =>
        {
            string path = p.GetValue(file)!;
            using var call = new DatasetsService.DatasetsServiceClient(c).UploadDataset(h, cancellationToken: ct);
            await call.RequestStream.WriteAsync(new UploadDatasetRequest { Metadata = new DatasetMetadata { Name = p.GetValue(name) ?? Path.GetFileName(path) } }, ct);
            await using var stream = File.OpenRead(path);
            var buffer = new byte[1 << 20];
            int read;
            while ((read = await stream.ReadAsync(buffer, ct)) > 0)
                await call.RequestStream.WriteAsync(new UploadDatasetRequest { Data = ByteString.CopyFrom(buffer, 0, read) }, ct);
            await call.RequestStream.CompleteAsync();
            var dataset = await call;
            Console.WriteLine($"{dataset.Id}  {dataset.Name}  {dataset.Format}  {dataset.Rows} rows");
        }));
        remote.Subcommands.Add(upload);

        var datasets = new Command("datasets", "List datasets.");
        datasets.SetAction((p, ct) => Call(p, async (c, h) =>
        {
            var list = await new DatasetsService.DatasetsServiceClient(c).ListDatasetsAsync(new ListDatasetsRequest(), h, cancellationToken: ct);
            foreach (var d in list.Datasets) Console.WriteLine($"{d.Id}  {d.Name,-32} {d.Format,-28} {d.Rows} rows");
        }));
        remote.Subcommands.Add(datasets);

        var models = new Command("models", "List models.");
        models.SetAction((p, ct) => Call(p, async (c, h) =>
        {
            var list = await new ModelsService.ModelsServiceClient(c).ListModelsAsync(new ListModelsRequest(), h, cancellationToken: ct);
            foreach (var m in list.Models) Console.WriteLine($"{m.Id}  {m.Name,-32} {m.ModelType,-8} {m.SizeBytes / 1024} KiB");
        }));
        remote.Subcommands.Add(models);

        var baseModel = new Option<string>("--base-model") { Description = "Model id on the host.", Required = true };
        var dataset = new Option<string>("--dataset") { Description = "Dataset id on the host.", Required = true };
        var teacher = new Option<string>("--teacher") { Description = "Trained teacher model id.", Required = true };
        var method = new Option<string>("--method") { Description = "dpo or reward-model.", DefaultValueFactory = _ => "dpo" };

        var train = new Command("train", "Train a weak teacher (SFT + DPO, or a reward model) on a labelled dataset.") { baseModel, dataset, method, Watch };
        train.SetAction((p, ct) => Call(p, (c, h) => Start(c, h, p, client => client.TrainAsync(new TrainRequest
        {
            BaseModelId = p.GetValue(baseModel)!,
            LabelledDatasetId = p.GetValue(dataset)!,
            Method = p.GetValue(method) == "reward-model" ? TeacherMethod.RewardModel : TeacherMethod.Dpo,
            RequestId = NewRequestId(),
        }, h, cancellationToken: ct), ct)));
        remote.Subcommands.Add(train);

        var label = new Command("label", "Label an unlabelled dataset with a trained teacher.") { teacher, dataset, Watch };
        label.SetAction((p, ct) => Call(p, (c, h) => Start(c, h, p, client => client.LabelAsync(new LabelRequest
        {
            TeacherModelId = p.GetValue(teacher)!,
            UnlabelledDatasetId = p.GetValue(dataset)!,
            RequestId = NewRequestId(),
        }, h, cancellationToken: ct), ct)));
        remote.Subcommands.Add(label);

        var align = new Command("align", "Align a student (SFT + DPO) on a labelled dataset.") { baseModel, dataset, Watch };
        align.SetAction((p, ct) => Call(p, (c, h) => Start(c, h, p, client => client.AlignAsync(new AlignRequest
        {
            BaseModelId = p.GetValue(baseModel)!,
            LabelledDatasetId = p.GetValue(dataset)!,
            RequestId = NewRequestId(),
        }, h, cancellationToken: ct), ct)));
        remote.Subcommands.Add(align);

        var modelPairs = new Option<string[]>("--model") { Description = "name=model-id, repeatable.", Required = true, AllowMultipleArgumentsPerToken = true };
        var prompts = new Option<string>("--prompts") { Description = "Prompt dataset id.", Required = true };
        var gold = new Option<string>("--gold") { Description = "Gold scorer: synthetic or a reward-model id.", DefaultValueFactory = _ => "synthetic" };
        var evaluate = new Command("evaluate", "Generate for held-out prompts and score with a gold scorer.") { modelPairs, prompts, gold, Watch };
        evaluate.SetAction((p, ct) => Call(p, (c, h) =>
        {
            var request = new EvaluateRequest { PromptsDatasetId = p.GetValue(prompts)!, GoldScorer = p.GetValue(gold)!, RequestId = NewRequestId() };
            foreach (var pair in p.GetValue(modelPairs)!)
            {
                int eq = pair.IndexOf('=');
                if (eq <= 0) throw new ArgumentException($"--model '{pair}' must be name=model-id");
                request.Models[pair[..eq]] = pair[(eq + 1)..];
            }
            return Start(c, h, p, client => client.EvaluateAsync(request, h, cancellationToken: ct), ct);
        }));
        remote.Subcommands.Add(evaluate);

        var pairsFile = new Argument<string>("pairs") { Description = "JSONL of LabelPairRequest: {\"id\", \"prompt\", \"response_a\", \"response_b\"} a line." };
        var labelsOut = new Option<string?>("--out") { Description = "Where the labels go, JSONL in the pairs' order (default: standard output)." };
        var streams = new Option<int>("--streams") { Description = "Streams open at once (round_robin spreads them over the replicas).", DefaultValueFactory = _ => 1 };
        var labelStream = new Command("label-stream", "Label pairs online with LabelStream; a replica lost mid-stream costs only its unanswered pairs, sent again to the others.")
        {
            teacher, pairsFile, labelsOut, streams,
        };
        labelStream.SetAction((p, ct) => Call(p, async (c, h) =>
        {
            string path = p.GetValue(pairsFile)!;
            if (!File.Exists(path)) throw new FileNotFoundException($"pairs: {path} does not exist");
            var pairs = new List<LabelPairRequest>();
            int line = 0;
            foreach (var text in File.ReadLines(path))
            {
                line++;
                if (string.IsNullOrWhiteSpace(text)) continue;
                try { pairs.Add(JsonParser.Default.Parse<LabelPairRequest>(text)); }
                catch (InvalidProtocolBufferException e) { throw new ArgumentException($"pairs: line {line}: {e.Message}"); }
            }
            var result = await ReplicatedLabelStream.LabelAsync(c, p.GetValue(teacher)!, pairs,
                new LabelStreamOptions { Streams = p.GetValue(streams) }, h, ct);
            await using var output = p.GetValue(labelsOut) is { } o ? new StreamWriter(o) : new StreamWriter(Console.OpenStandardOutput());
            foreach (var label in result.Labels) await output.WriteLineAsync(JsonFormatter.Default.Format(label));
            Console.Error.WriteLine($"{result.Labels.Count} labels; {result.StreamsReopened} streams reopened, {result.PairsResent} pairs sent again");
        }));
        remote.Subcommands.Add(labelStream);

        root.Subcommands.Add(remote);
    }

    /// <summary>The job start's idempotency key: the retry policy may send a start twice; the job store makes it one job.</summary>
    private static string NewRequestId() => Guid.NewGuid().ToString("N");

    private static Task<int> Call(ParseResult parse, Func<GrpcChannel, Metadata, Task> action) => Task.Run(async () =>
    {
        using var channel = HostChannel.Create(parse.GetValue(Host)!);
        var headers = new Metadata();
        string? key = parse.GetValue(ApiKey) ?? Environment.GetEnvironmentVariable("WT_API_KEY");
        if (!string.IsNullOrEmpty(key)) headers.Add("authorization", "Bearer " + key);
        try
        {
            await action(channel, headers);
            return 0;
        }
        catch (RpcException e)
        {
            Console.Error.WriteLine($"error: {e.StatusCode}: {e.Status.Detail}");
            return 1;
        }
    });

    private static async Task Start(GrpcChannel channel, Metadata headers, ParseResult parse,
        Func<JobsService.JobsServiceClient, AsyncUnaryCall<StartJobResponse>> start, CancellationToken ct)
    {
        var response = await start(new JobsService.JobsServiceClient(channel));
        Console.WriteLine(response.JobId);
        if (parse.GetValue(Watch)) await WatchJob(channel, headers, response.JobId, ct);
    }

    private static async Task WatchJob(GrpcChannel channel, Metadata headers, string id, CancellationToken ct)
    {
        using var call = new JobsService.JobsServiceClient(channel).WatchJob(new WatchJobRequest { JobId = id }, headers, cancellationToken: ct);
        await ProgressDisplay.RunAsync(async bar =>
        {
            await foreach (var e in call.ResponseStream.ReadAllAsync(ct))
            {
                if (e.Progress is { } p)
                {
                    var metrics = new Dictionary<string, double>(p.Metrics);
                    if (p.HasLoss) metrics["loss"] = p.Loss;
                    bar.Report(new JobProgressEvent(p.Stage, p.Step, p.TotalSteps, metrics, p.TokensPerSecond,
                        p.HasEtaSeconds ? TimeSpan.FromSeconds(p.EtaSeconds) : null));
                }
                else if (e.StateChange is { } s)
                {
                    AnsiConsole.WriteLine($"{id}: {s.State}{(string.IsNullOrEmpty(s.Error) ? "" : " - " + s.Error)}");
                    if (s.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled) break;
                }
            }
        });
        var job = await new JobsService.JobsServiceClient(channel).GetJobAsync(new GetJobRequest { JobId = id }, headers, cancellationToken: ct);
        foreach (var a in job.Artifacts) Console.WriteLine($"  artifact {a.Name}: {a.Kind} {a.Id}");
        foreach (var (k, v) in job.Metrics) Console.WriteLine($"  {k} = {v:G6}");
    }
}
