using System.CommandLine;
using System.Globalization;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Runtime;

namespace WeakTeacher.Cli;

/// <summary>
/// `wt label`: label an unlabelled set with a trained teacher, in one process or as shard I of N of a scheduler's array
/// (Kubernetes Indexed Job: JOB_COMPLETION_INDEX; Slurm array: SLURM_ARRAY_TASK_ID), and `wt label merge` to join the
/// shards in input order. Every shard and the merge work in the same (shared) output folder.
/// </summary>
public static class LabelCommands
{
    public static void Add(RootCommand root, Option<int?> threads)
    {
        var teacher = new Option<string>("--teacher") { Description = "Trained teacher folder (with teacher.json).", Required = true };
        var input = new Option<string>("--input") { Description = "Unlabelled pairs (JSONL, JSONL.gz or Parquet).", Required = true };
        var output = new Option<string>("--out") { Description = "Output folder (shared by all shards).", Required = true };
        var batchSize = new Option<int>("--batch-size") { Description = "Pairs per forward pass.", DefaultValueFactory = _ => 16 };
        var quantile = new Option<double>("--margin-quantile") { Description = "Keep pairs with |margin| at or above this quantile (0 keeps all)." };
        var template = new Option<string>("--template") { Description = "Prompt template the teacher was trained with.", DefaultValueFactory = _ => "paper" };
        var skipInvalid = new Option<bool>("--skip-invalid-rows") { Description = "Skip rows that do not parse instead of failing." };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
        var shardIndex = new Option<int?>("--shard-index") { Description = "This shard's index, 0-based (default: JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID)." };
        var shardCount = new Option<int?>("--shard-count") { Description = "Number of shards (default: SLURM_ARRAY_TASK_COUNT)." };

        var label = new Command("label", "Label an unlabelled set with a trained teacher; with --shard-index/--shard-count one slice of it (then `wt label merge`).")
        {
            teacher, input, output, batchSize, quantile, template, skipInvalid, device, threads, shardIndex, shardCount,
        };
        label.SetAction((parse, ct) => Task.Run(() =>
        {
            var request = new LabelRequest
            {
                TeacherDir = Path.GetFullPath(parse.GetValue(teacher)!),
                UnlabelledDataPath = Path.GetFullPath(parse.GetValue(input)!),
                BatchSize = parse.GetValue(batchSize),
                MarginQuantile = parse.GetValue(quantile),
                Template = parse.GetValue(template)!,
                SkipInvalidRows = parse.GetValue(skipInvalid),
                Device = parse.GetValue(device)!,
            };
            if (request.BatchSize < 1) throw new ArgumentException($"--batch-size must be at least 1, not {request.BatchSize}");
            if (!(request.MarginQuantile >= 0 && request.MarginQuantile < 1))
                throw new ArgumentException($"--margin-quantile must lie in [0, 1), not {request.MarginQuantile}");
            if (!File.Exists(request.UnlabelledDataPath)) throw new FileNotFoundException($"--input: {request.UnlabelledDataPath} does not exist");
            string outDir = Path.GetFullPath(parse.GetValue(output)!);
            TorchDevice.Initialize(request.Device, threads: parse.GetValue(threads));
            var shard = ResolveShard(parse.GetValue(shardIndex), parse.GetValue(shardCount), Environment.GetEnvironmentVariable);
            if (shard is var (index, count))
            {
                var m = ProgressDisplay.Run(progress => LabelShards.RunShard(request, outDir, index, count, progress, ct));
                Console.WriteLine($"{LabelShards.ShardName(index, count)}: rows {m.FirstRow}..{m.FirstRow + m.Rows - 1} of {m.TotalRows} -> " +
                    Path.Combine(outDir, LabelShards.FolderName, m.DataFile));
                return 0;
            }
            var result = ProgressDisplay.Run(progress => PipelineStages.Label(request, outDir, progress, ct));
            PrintResult(result);
            return 0;
        }, ct));

        var mergeOut = new Option<string>("--out") { Description = "The shards' output folder.", Required = true };
        var merge = new Command("merge", "Check that every shard in the folder is finished and from the same input; write the labelled set in input order.") { mergeOut };
        merge.SetAction((parse, ct) => Task.Run(() =>
        {
            PrintResult(LabelShards.Merge(Path.GetFullPath(parse.GetValue(mergeOut)!)));
            return 0;
        }, ct));
        label.Subcommands.Add(merge);
        root.Subcommands.Add(label);
    }

    /// <summary>
    /// The shard from the flags, else from the scheduler: JOB_COMPLETION_INDEX (Kubernetes Indexed Job; give
    /// --shard-count = completions) or SLURM_ARRAY_TASK_ID (less SLURM_ARRAY_TASK_MIN, so --array=1-8 works; count
    /// SLURM_ARRAY_TASK_COUNT). Null: a single-process run.
    /// </summary>
    public static (int Index, int Count)? ResolveShard(int? index, int? count, Func<string, string?> env)
    {
        string indexSource = "--shard-index", countSource = "--shard-count";
        if (index is null)
        {
            if (Int("JOB_COMPLETION_INDEX", env) is { } k) (index, indexSource) = (k, "JOB_COMPLETION_INDEX");
            else if (Int("SLURM_ARRAY_TASK_ID", env) is { } s)
                (index, indexSource) = (s - (Int("SLURM_ARRAY_TASK_MIN", env) ?? 0), "SLURM_ARRAY_TASK_ID");
        }
        if (count is null && Int("SLURM_ARRAY_TASK_COUNT", env) is { } c && indexSource == "SLURM_ARRAY_TASK_ID")
            (count, countSource) = (c, "SLURM_ARRAY_TASK_COUNT");
        if (index is null && count is null) return null;
        if (count is null) throw new ArgumentException($"{indexSource} is {index} but no shard count was given: pass --shard-count N");
        if (index is null) throw new ArgumentException($"--shard-count is {count} but no shard index was given: pass --shard-index I");
        if (count < 1) throw new ArgumentException($"{countSource} must be at least 1, not {count}");
        if (index < 0 || index >= count) throw new ArgumentException($"{indexSource} must lie in [0, {count - 1}] for {count} shards, not {index}");
        return (index.Value, count.Value);
    }

    private static int? Int(string name, Func<string, string?> env)
    {
        var value = env(name);
        if (string.IsNullOrWhiteSpace(value)) return null;
        return int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v
            : throw new ArgumentException($"{name}='{value}' is not an integer");
    }

    private static void PrintResult(StageResult result)
    {
        foreach (var (name, value) in result.Metrics) Console.WriteLine($"{name} = {value:G6}");
        foreach (var (name, path) in result.Artifacts) Console.WriteLine($"{name}: {path}");
    }
}
