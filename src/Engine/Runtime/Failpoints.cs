namespace WeakTeacher.Engine.Runtime;

/// <summary>
/// Named fault-injection points for crash tests, all listed here. <c>WT_FAILPOINTS=name[@N][,name[@N]...]</c> makes the
/// process stop the N-th time (default the first) it reaches a listed point: it writes <c>failpoint 'name' reached</c> to
/// stderr and blocks that thread until the process is killed, so a test can see the data folder and the host's answers at
/// that exact moment and then kill -9 it. Unset (always, outside such tests) a point costs one lookup in an empty map.
/// </summary>
public static class Failpoints
{
    public const string Variable = "WT_FAILPOINTS";

    /// <summary>A model's files are written in its temporary save folder, not yet moved into place (PretrainedModel.Save).</summary>
    public const string ModelSaveStaged = "model-save.staged";
    /// <summary>A trainer run's result is recorded (train-result.json), its checkpoints not yet removed.</summary>
    public const string TrainResultRecorded = "train-result.recorded";
    /// <summary>An optimizer step of a trainer is done (logged and, at save_steps, checkpointed).</summary>
    public const string TrainingStepDone = "training.step";
    /// <summary>A batch of the DPO reference log-prob pass is computed.</summary>
    public const string ReferenceBatchDone = "reference-logps.batch";
    /// <summary>One output of a finished job is published to the data folder, the others not yet (the host's registration).</summary>
    public const string OutputPublished = "register.output-published";

    /// <summary>A label shard's labels are computed, its labels file and manifest not yet written (LabelShards.RunShard).</summary>
    public const string LabelShardLabelled = "label-shard.labelled";

    /// <summary>Armed points: name -> the hit that stops (1-based); and how often each was hit.</summary>
    private static readonly Dictionary<string, int> Armed = Parse(Environment.GetEnvironmentVariable(Variable));
    private static readonly Dictionary<string, int> Hits = new(StringComparer.Ordinal);

    private static Dictionary<string, int> Parse(string? value)
    {
        var armed = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in (value ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var parts = entry.Split('@', 2);
            armed[parts[0]] = parts.Length == 2 && int.TryParse(parts[1], out int n) && n > 0 ? n
                : parts.Length == 2 ? throw new ArgumentException($"{Variable}: '{entry}' is not name or name@N (N a positive count)") : 1;
        }
        return armed;
    }

    public static void Hit(string name)
    {
        if (Armed.Count == 0 || !Armed.TryGetValue(name, out int stopAt)) return;
        lock (Hits)
        {
            int hits = Hits[name] = Hits.GetValueOrDefault(name) + 1;
            if (hits != stopAt) return;
        }
        Console.Error.WriteLine($"failpoint '{name}' reached: this thread waits here until the process is killed");
        Console.Error.Flush();
        Thread.Sleep(Timeout.Infinite);
    }
}
