using System.CommandLine;
using System.Diagnostics;
using WeakTeacher.Cli;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Engine.Training;

// wt: the command-line front end. Local runs call the engine; `wt remote ...` drives a WeakTeacher gRPC host.
// The kernels' once-per-process warnings go through Spectre.Console too, so they print above a live progress display.
WeakTeacher.CudaKernels.KernelSettings.FallbackReporter = message => Spectre.Console.AnsiConsole.MarkupLine($"[yellow]{Spectre.Console.Markup.Escape(message)}[/]");
var root = new RootCommand("WeakTeacher.Native: a weak LLM teaches a strong one to align (Tao & Li, ICLR 2025).");

var outOption = new Option<string>("--out") { Description = "Output folder.", DefaultValueFactory = _ => "runs/demo" };
var sizeOption = new Option<DefaultTaskSize>("--size") { Description = "Embedded task size: Demo or Tiny.", DefaultValueFactory = _ => DefaultTaskSize.Demo };
var deviceOption = new Option<string>("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
var threadsOption = new Option<int?>("--threads") { Description = "CPU threads for libtorch (default: all cores)." };
var precisionOption = new Option<string?>("--precision")
{
    Description = "Training precision of every trainer: fp32 or bf16 (bfloat16 compute, float32 master weights); default: the config's (fp32).",
};
precisionOption.AcceptOnlyFromAmong([.. TrainingPrecisions.Names]);
var paddingFreeOption = new Option<bool>("--padding-free")
{
    Description = "Every trainer packs its micro-batches (padding_free: sequences side by side in rows, attention and positions per sequence); default: the config's (off).",
};
PipelineConfig WithTrainingOptions(PipelineConfig config, ParseResult parse)
{
    if (parse.GetValue(precisionOption) is { } name) config = config.WithPrecision(TrainingPrecisions.Parse(name)!.Value);
    return parse.GetValue(paddingFreeOption) ? config.WithPaddingFree(true) : config;
}

var demo = new Command("demo", "The main job: prepare the embedded synthetic task, run the paper's pipeline on it, print the tables.")
{
    outOption, sizeOption, deviceOption, threadsOption, precisionOption, paddingFreeOption,
};
demo.SetAction((parse, ct) => Task.Run(() =>
{
    string output = Path.GetFullPath(parse.GetValue(outOption)!);
    var size = parse.GetValue(sizeOption);
    string device = parse.GetValue(deviceOption)!;
    TorchDevice.Initialize(device, threads: parse.GetValue(threadsOption));
    var clock = Stopwatch.StartNew();
    Console.WriteLine($"WeakTeacher demo ({size}) on {device} -> {output}");
    var report = ProgressDisplay.Run(progress =>
    {
        var assets = DefaultTask.Prepare(Path.Combine(output, "task"), progress, ct, size);
        var prepared = new WeakTeacher.Engine.Evaluation.StageTiming("prepare_task", clock.Elapsed.TotalSeconds);
        return WeakToStrongPipeline.Run(WithTrainingOptions(DemoConfig.Create(assets, output, size, device), parse), progress, ct, [prepared]);
    });
    Console.WriteLine();
    ReportTables.Write(report);
    Console.WriteLine($"report: {Path.Combine(output, "report.md")}  {Path.Combine(output, "report.json")}");
    return 0;
}, ct));
root.Subcommands.Add(demo);

var configOption = new Option<string>("--config") { Description = "Pipeline config file (JSON, see README).", Required = true };
var run = new Command("run", "Run the whole pipeline on your own checkpoints and data from one config file.") { configOption, threadsOption, precisionOption, paddingFreeOption };
run.SetAction((parse, ct) => Task.Run(() =>
{
    var config = WithTrainingOptions(PipelineConfig.Load(parse.GetValue(configOption)!), parse);
    TorchDevice.Initialize(config.Device, threads: parse.GetValue(threadsOption));
    var report = ProgressDisplay.Run(progress => WeakToStrongPipeline.Run(config, progress, ct));
    ReportTables.Write(report);
    Console.WriteLine($"report: {Path.Combine(config.OutputDir, "report.md")}");
    return 0;
}, ct));
root.Subcommands.Add(run);

var experimentsConfigOption = new Option<string?>("--config") { Description = "Experiment config file (JSON); without it, the default study set on the embedded task." };
var studyOption = new Option<string[]>("--study") { Description = "Run only these studies (names or 1-9; repeatable).", AllowMultipleArgumentsPerToken = true };
var seedsOption = new Option<long[]>("--seeds") { Description = "Seeds (overrides the config's list).", AllowMultipleArgumentsPerToken = true };
var experimentsOut = new Option<string>("--out") { Description = "Folder of the embedded task's default study set.", DefaultValueFactory = _ => "runs/experiments" };
var jobsOption = new Option<int?>("--jobs")
{
    Description = "Processes the seeds are split over, each with a share of the CPU threads (default: on the CPU one per seed, up to twice the cores; on a GPU 1).",
};
// a process started by --jobs: trains its seeds' models and writes nothing the seeds share
var workerOption = new Option<bool>("--worker") { Hidden = true };
var experiments = new Command("experiments", "The paper's studies over several seeds as one resumable job; writes report.md, report.json and a plot per study.")
{
    experimentsConfigOption, experimentsOut, sizeOption, deviceOption, studyOption, seedsOption, threadsOption, jobsOption, workerOption,
};
experiments.SetAction((parse, ct) => Task.Run(() =>
{
    var clock = Stopwatch.StartNew();
    string? configPath = parse.GetValue(experimentsConfigOption);
    if (configPath is null)
    {
        string device = parse.GetValue(deviceOption)!;
        TorchDevice.Initialize(device, threads: parse.GetValue(threadsOption));
        configPath = ProgressDisplay.Run(progress => WeakTeacher.Engine.Experiments.DefaultExperiments.Prepare(
            Path.GetFullPath(parse.GetValue(experimentsOut)!), parse.GetValue(sizeOption), progress, ct, device));
        Console.WriteLine($"default study set: {configPath} (prepared in {clock.Elapsed.TotalSeconds:F0} s)");
    }
    var config = WeakTeacher.Engine.Experiments.ExperimentConfig.Load(configPath);
    var studies = parse.GetValue(studyOption) ?? [];
    if (studies.Length > 0) config = config with { Studies = studies };
    if (parse.GetValue(seedsOption) is { Length: > 0 } seeds) config = config with { Seeds = seeds };
    string pipelineDevice = WeakTeacher.Engine.Pipeline.PipelineConfig.Load(config.Pipeline).Device;
    if (parse.GetValue(workerOption))
    {
        TorchDevice.Initialize(pipelineDevice, threads: parse.GetValue(threadsOption));
        ProgressDisplay.Run(progress => { WeakTeacher.Engine.Experiments.ExperimentRunner.RunWorker(config, progress, ct); return 0; });
        return 0;
    }
    int jobs = parse.GetValue(jobsOption) ?? ExperimentWorkers.DefaultJobs(pipelineDevice, config.Seeds.Count);
    if (jobs < 1) throw new ArgumentException($"--jobs {jobs}: give at least 1");
    if (jobs > 1 && config.Seeds.Count > 1)
    {
        WeakTeacher.Engine.Experiments.ExperimentRunner.PrepareShared(config);
        ExperimentWorkers.Run(Path.GetFullPath(configPath), config, studies, jobs, ct);
        Console.WriteLine($"workers done at {clock.Elapsed.TotalSeconds:F0} s; writing the report");
    }
    TorchDevice.Initialize(pipelineDevice, threads: parse.GetValue(threadsOption));
    var report = ProgressDisplay.Run(progress => WeakTeacher.Engine.Experiments.ExperimentRunner.Run(config, progress, ct));
    foreach (var line in report.VerdictLines()) Console.WriteLine(line);
    Console.WriteLine($"report: {Path.Combine(config.OutputDir, "report.md")}  {Path.Combine(config.OutputDir, "report.json")}  ({clock.Elapsed.TotalSeconds:F0} s in all)");
    return 0;
}, ct));
root.Subcommands.Add(experiments);

var prepare = new Command("prepare-default", "Write the embedded task (data, tokenizer, pretrained base models) into a folder.")
{
    outOption, sizeOption, threadsOption,
};
prepare.SetAction((parse, ct) => Task.Run(() =>
{
    TorchDevice.Initialize("cpu", threads: parse.GetValue(threadsOption));
    var assets = ProgressDisplay.Run(progress => DefaultTask.Prepare(Path.GetFullPath(parse.GetValue(outOption)!), progress, ct, parse.GetValue(sizeOption)));
    Console.WriteLine(assets);
    return 0;
}, ct));
root.Subcommands.Add(prepare);

LabelCommands.Add(root, threadsOption);
RemoteCommands.Add(root);

return await ErrorReporting.InvokeAsync(root, args);
