namespace WeakTeacher.Engine.Pipeline;

/// <summary>
/// One progress event of a long-running stage (training, labelling, generation): what the gRPC host streams
/// to watchers and the command line shows as a progress bar. Metric names are TRL's
/// (loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected,
/// logits/chosen, logits/rejected, grad_norm, learning_rate).
/// </summary>
public sealed record JobProgress(
    string Stage,
    long Step,
    long TotalSteps,
    IReadOnlyDictionary<string, double> Metrics,
    double TokensPerSecond,
    TimeSpan? Eta)
{
    public double Fraction => TotalSteps > 0 ? Math.Clamp((double)Step / TotalSteps, 0, 1) : 0;
}
