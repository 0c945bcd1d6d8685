namespace WeakTeacher.Engine.Training;

/// <summary>What a finished (or interrupted) <c>Train</c> call did.</summary>
/// <param name="GlobalStep">Optimizer steps done in total (including those of a run it resumed).</param>
/// <param name="TotalSteps">Steps the run is planned for.</param>
/// <param name="Completed">False when it stopped early on cancellation (a checkpoint was written to resume from).</param>
/// <param name="ResumedFromStep">The checkpoint step it resumed from, or null for a fresh run.</param>
/// <param name="LogHistory">Every logged row ("step" plus the TRL metric names), resumed rows included.</param>
/// <param name="LastCheckpoint">The last checkpoint folder written or resumed from.</param>
/// <param name="ModelDir">Where the final model was saved (a Hugging Face checkpoint), or null when interrupted.</param>
/// <param name="AdapterDir">Where the final LoRA adapter was saved (PEFT layout), or null.</param>
public sealed record TrainResult(
    int GlobalStep,
    int TotalSteps,
    bool Completed,
    int? ResumedFromStep,
    IReadOnlyList<IReadOnlyDictionary<string, double>> LogHistory,
    string OutputDir,
    string? LastCheckpoint,
    string? ModelDir,
    string? AdapterDir,
    TimeSpan Elapsed)
{
    /// <summary>DPO: true when the reference log-probs came from the on-disk cache, false when computed; null for other trainers.</summary>
    public bool? ReferenceLogProbsFromCache { get; init; }

    /// <summary>The loss of the last logged step, or NaN.</summary>
    public double FinalLoss => LogHistory.LastOrDefault(r => r.ContainsKey("loss")) is { } row ? row["loss"] : double.NaN;
}
