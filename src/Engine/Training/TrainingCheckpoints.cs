using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;
using TorchSharp;
using WeakTeacher.Engine.Checkpoints;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>Where the data stream stands: the epoch, the next micro-batch within it, and the seed of the epoch's shuffle.</summary>
public sealed record DataPosition(int Epoch, int BatchIndex, long ShuffleSeed);

/// <summary>
/// The resumable state of a run besides tensors (trainer_state.json of a checkpoint folder, as transformers names it):
/// global step, schedule, data position, RNG state of the engine's own streams, and the metrics history.
/// </summary>
public sealed record TrainerState
{
    public required string Trainer { get; init; }
    public required int GlobalStep { get; init; }
    public required int TotalSteps { get; init; }
    public required int WarmupSteps { get; init; }
    public required DataPosition Data { get; init; }
    /// <summary>Fractional epoch (global step / steps per epoch), as transformers logs it.</summary>
    public double Epoch { get; init; }
    public long TokensSeen { get; init; }
    /// <summary>A fingerprint of the settings that must not change across a resume (data size, batch size, schedule).</summary>
    public required string RunFingerprint { get; init; }
    /// <summary>The settings the fingerprint is made of, by name, so a refused resume can say which one differs.</summary>
    public SortedDictionary<string, string>? Settings { get; init; }
    public List<Dictionary<string, double>> LogHistory { get; init; } = new();

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
}

/// <summary>
/// checkpoint-N folders of an output folder. A checkpoint is written to checkpoint-N.tmp and renamed when complete,
/// so a folder named checkpoint-N is always whole; leftovers of an interrupted write are removed.
/// Contents: trainable.safetensors (trainable parameters by name), optimizer.safetensors, rng_state.safetensors
/// (torch's CPU generator), trainer_state.json.
/// </summary>
public static class TrainingCheckpoints
{
    public const string TrainableFile = "trainable.safetensors";
    public const string OptimizerFile = "optimizer.safetensors";
    public const string RngFile = "rng_state.safetensors";
    public const string StateFile = "trainer_state.json";
    private static readonly Regex CheckpointName = new(@"^checkpoint-(\d+)$", RegexOptions.Compiled);

    public static string FolderName(int step) => "checkpoint-" + step.ToString(CultureInfo.InvariantCulture);

    /// <summary>The complete checkpoints of <paramref name="outputDir"/>, oldest first.</summary>
    public static IReadOnlyList<(int Step, string Path)> List(string outputDir)
    {
        if (!Directory.Exists(outputDir)) return Array.Empty<(int, string)>();
        return Directory.GetDirectories(outputDir)
            .Select(d => (Match: CheckpointName.Match(Path.GetFileName(d)), Path: d))
            .Where(x => x.Match.Success && File.Exists(Path.Combine(x.Path, StateFile)))
            .Select(x => (int.Parse(x.Match.Groups[1].Value, CultureInfo.InvariantCulture), x.Path))
            .OrderBy(x => x.Item1)
            .ToList();
    }

    /// <summary>The latest complete checkpoint folder, or null.</summary>
    public static string? Latest(string outputDir)
    {
        var all = List(outputDir);
        return all.Count == 0 ? null : all[^1].Path;
    }

    /// <summary>Writes a checkpoint atomically; returns its folder.</summary>
    public static string Save(string outputDir, TrainerState state, IEnumerable<(string Name, Tensor Tensor)> trainable,
        TrainingOptimizer optimizer, int saveTotalLimit)
    {
        Runtime.WriteFence.Check(outputDir);
        Directory.CreateDirectory(outputDir);
        var final = Path.Combine(outputDir, FolderName(state.GlobalStep));
        // one temporary folder per writer: a stalled earlier holder of the job, woken mid-save, writes into its own
        var temp = final + ".tmp-" + Guid.NewGuid().ToString("N");
        Directory.CreateDirectory(temp);
        SafeTensors.Save(trainable.ToDictionary(t => t.Name, t => t.Tensor, StringComparer.Ordinal), Path.Combine(temp, TrainableFile));
        optimizer.Save(Path.Combine(temp, OptimizerFile));
        using (var rng = torch.get_rng_state())
            SafeTensors.Save(new Dictionary<string, Tensor> { ["torch_cpu"] = rng }, Path.Combine(temp, RngFile));
        File.WriteAllText(Path.Combine(temp, StateFile), JsonSerializer.Serialize(state, TrainerState.Json));
        Runtime.WriteFence.Check(final);
        if (Directory.Exists(final)) Directory.Delete(final, recursive: true);
        Directory.Move(temp, final);
        if (saveTotalLimit > 0)
        {
            var all = List(outputDir);
            foreach (var (_, path) in all.Take(Math.Max(0, all.Count - saveTotalLimit)))
                Directory.Delete(path, recursive: true);
        }
        return final;
    }

    /// <summary>Removes the checkpoint-N.tmp-* folders of interrupted writes.</summary>
    public static void RemoveIncomplete(string outputDir)
    {
        if (!Directory.Exists(outputDir)) return;
        Runtime.WriteFence.Check(outputDir);
        foreach (var dir in Directory.GetDirectories(outputDir, "checkpoint-*.tmp*"))
            Directory.Delete(dir, recursive: true);
    }

    public static TrainerState ReadState(string checkpointDir)
    {
        var path = Path.Combine(checkpointDir, StateFile);
        try
        {
            return JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path), TrainerState.Json)
                ?? throw new CheckpointException(path, "empty trainer state");
        }
        catch (JsonException e)
        {
            throw new CheckpointException(path, $"not a valid trainer state ({e.Message})");
        }
    }

    /// <summary>Copies the checkpoint's trainable tensors into the named parameters (all must be present) and restores torch's CPU generator.</summary>
    public static void Restore(string checkpointDir, IReadOnlyList<(string Name, Tensor Tensor)> trainable, TrainingOptimizer optimizer)
    {
        var weightsPath = Path.Combine(checkpointDir, TrainableFile);
        var loaded = SafeTensors.Load(weightsPath);
        try
        {
            using var noGrad = no_grad();
            foreach (var (name, tensor) in trainable)
            {
                if (!loaded.TryGetValue(name, out var value))
                    throw new CheckpointException(weightsPath, $"parameter '{name}' is missing (was the run started with other LoRA/trainable settings?)");
                if (!value.shape.SequenceEqual(tensor.shape))
                    throw new CheckpointException(weightsPath, $"parameter '{name}' has shape [{string.Join(", ", value.shape)}], the model [{string.Join(", ", tensor.shape)}]");
                tensor.copy_(value);
            }
        }
        finally
        {
            foreach (var t in loaded.Values) t.Dispose();
        }
        optimizer.Load(Path.Combine(checkpointDir, OptimizerFile));
        var rngPath = Path.Combine(checkpointDir, RngFile);
        var rng = SafeTensors.Load(rngPath);
        try
        {
            if (!rng.TryGetValue("torch_cpu", out var state)) throw new CheckpointException(rngPath, "tensor 'torch_cpu' is missing");
            torch.set_rng_state(state);
        }
        finally
        {
            foreach (var t in rng.Values) t.Dispose();
        }
    }
}
