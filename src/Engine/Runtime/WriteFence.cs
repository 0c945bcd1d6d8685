namespace WeakTeacher.Engine.Runtime;

/// <summary>
/// Fencing of the writes a stage makes in a work folder that several hosts share. A host runs a job's stage inside
/// <see cref="Enter"/> with a test of whether it still holds the job (its lease, renewed recently enough on a monotonic
/// clock, for its attempt number); every write that publishes or removes something there (AtomicFile's rename, a
/// checkpoint or model folder moved into place, checkpoints removed, a training log row) calls <see cref="Check"/> first.
/// So a holder that stalled past its lease (SIGSTOP, a long GC pause) and wakes after another host took the job fails
/// its next such write instead of overwriting or deleting the new holder's files. Outside a fenced run (the CLI, tests)
/// a check costs one AsyncLocal read. Temporary files carry unique names, so only these published names are contended.
/// </summary>
public static class WriteFence
{
    // null = may write; otherwise why not. AsyncLocal: flows into the Task.Run and threads the stage starts.
    private static readonly AsyncLocal<Func<string?>?> Current = new();

    /// <summary>Fences the writes of the code run from here (and the tasks it starts) until disposed.</summary>
    public static IDisposable Enter(Func<string?> refusal)
    {
        var outer = Current.Value;
        Current.Value = refusal;
        return new Exit(outer);
    }

    /// <summary>Throws <see cref="FencedWriteException"/> when the fenced run no longer holds its job.</summary>
    public static void Check(string what)
    {
        if (Current.Value?.Invoke() is { } why) throw new FencedWriteException(what, why);
    }

    private sealed class Exit(Func<string?>? outer) : IDisposable
    {
        public void Dispose() => Current.Value = outer;
    }
}

/// <summary>A write refused because the run that tried it no longer holds its job (a cancellation of that run).</summary>
public sealed class FencedWriteException(string what, string why) : OperationCanceledException($"write refused ({what}): {why}");
