using System.Runtime.InteropServices;

namespace WeakTeacher.Engine.Runtime;

/// <summary>
/// Named fault-injection points for crash tests, all listed here. <c>WT_FAILPOINTS=name[@N][:freeze][,...]</c> makes the
/// process stop the N-th time (default the first) it reaches a listed point: it writes <c>failpoint 'name' reached</c> to
/// stderr and blocks that thread until the process is killed, so a test can see the data folder and the host's answers at
/// that exact moment and then kill -9 it. With <c>:freeze</c> the whole process stops instead (SIGSTOP to itself, as a
/// long GC pause or a frozen VM stops it: no lease renewal, no request served) and runs on from that point at SIGCONT,
/// so a test can freeze a host at a known step rather than at whatever step a poll happened to see (Linux only).
/// Unset (always, outside such tests) a point costs one lookup in an empty map.
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

    /// <summary>A job's lease is being renewed: its row updated (and locked, in PostgreSQL), the transaction not yet committed.</summary>
    public const string LeaseRenewing = "job-store.lease-renewing";

    /// <summary>A label shard's labels are computed, its labels file and manifest not yet written (LabelShards.RunShard).</summary>
    public const string LabelShardLabelled = "label-shard.labelled";

    /// <summary>An armed point: the hit that stops (1-based), and whether the whole process freezes there.</summary>
    public readonly record struct Arming(int StopAt, bool Freeze);

    /// <summary>Armed points by name; and how often each was hit.</summary>
    private static readonly Dictionary<string, Arming> Armed = Parse(Environment.GetEnvironmentVariable(Variable));
    private static readonly Dictionary<string, int> Hits = new(StringComparer.Ordinal);

    /// <summary>The points a <see cref="Variable"/> value arms.</summary>
    public static Dictionary<string, Arming> Parse(string? value)
    {
        var armed = new Dictionary<string, Arming>(StringComparer.Ordinal);
        foreach (var entry in (value ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var point = entry;
            bool freeze = point.EndsWith(":freeze", StringComparison.Ordinal);
            if (freeze) point = point[..^":freeze".Length];
            var parts = point.Split('@', 2);
            int stopAt = 1;
            if (parts[0].Length == 0 || parts[0].Contains(':') || parts.Length == 2 && !(int.TryParse(parts[1],
                    System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out stopAt) && stopAt > 0))
                throw new ArgumentException($"{Variable}: '{entry}' is not name[@N][:freeze] (N a positive count)");
            armed[parts[0]] = new Arming(stopAt, freeze);
        }
        return armed;
    }

    /// <summary>The start of the stderr line a stopping point writes, which tests wait for.</summary>
    public static string ReachedLine(string name) => $"failpoint '{name}' reached";

    public static void Hit(string name)
    {
        if (Armed.Count == 0 || !Armed.TryGetValue(name, out var arming)) return;
        lock (Hits)
        {
            int hits = Hits[name] = Hits.GetValueOrDefault(name) + 1;
            if (hits != arming.StopAt) return;
        }
        if (arming.Freeze)
        {
            Console.Error.WriteLine($"{ReachedLine(name)}: the process freezes here (SIGSTOP) until SIGCONT {DateTime.UtcNow:O}");
            Console.Error.Flush();
            // Sent to this thread, not the process: a process-directed SIGSTOP may be taken by another thread, and this
            // one ran on for a millisecond or so (measured: enough to commit the transaction a test froze it inside).
            if (!OperatingSystem.IsLinux() || ThreadKill(Environment.ProcessId, CurrentThreadId(), SigStop) != 0)
                throw new InvalidOperationException($"{Variable}: failpoint '{name}' could not freeze the process (SIGSTOP needs Linux)");
            Console.Error.WriteLine($"failpoint '{name}' left: the process runs on {DateTime.UtcNow:O}");
            return;
        }
        Console.Error.WriteLine($"{ReachedLine(name)}: this thread waits here until the process is killed");
        Console.Error.Flush();
        Thread.Sleep(Timeout.Infinite);
    }

    private const int SigStop = 19;   // Linux (x86-64 and arm64)

    [DllImport("libc", EntryPoint = "tgkill", SetLastError = true)]   // glibc 2.30+
    private static extern int ThreadKill(int pid, int tid, int signal);

    [DllImport("libc", EntryPoint = "gettid")]
    private static extern int CurrentThreadId();
}
