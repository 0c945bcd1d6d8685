namespace WeakTeacher.Engine.Training;

/// <summary>
/// Warm-up then decay, as transformers' get_scheduler defines it (LambdaLR factors): optimizer step s (0-based) uses
/// lr * factor(s). Linear warm-up from 0 over the warm-up steps, then linear decay to 0, half-cosine decay to 0, or constant.
/// </summary>
public static class LearningRateSchedule
{
    public static readonly IReadOnlyList<string> Kinds = new[] { "linear", "cosine", "constant" };

    /// <summary>Warm-up steps of a run: WarmupSteps when set, else ceil(total * WarmupRatio) (transformers' get_warmup_steps).</summary>
    public static int WarmupSteps(TrainingConfig config, int totalSteps)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.WarmupSteps > 0) return config.WarmupSteps;
        return (int)Math.Ceiling(totalSteps * config.WarmupRatio);
    }

    /// <summary>The factor (0..1) applied to the base learning rate at optimizer step <paramref name="step"/> (0-based).</summary>
    public static double Factor(string kind, int step, int warmupSteps, int totalSteps)
    {
        ArgumentNullException.ThrowIfNull(kind);
        if (step < 0) throw new ArgumentOutOfRangeException(nameof(step), step, "step must be >= 0");
        if (warmupSteps < 0) throw new ArgumentOutOfRangeException(nameof(warmupSteps), warmupSteps, "warm-up steps must be >= 0");
        if (step < warmupSteps) return (double)step / Math.Max(1, warmupSteps);
        switch (kind.ToLowerInvariant())
        {
            case "constant":
                return 1.0;
            case "linear":
                return Math.Max(0.0, (double)(totalSteps - step) / Math.Max(1, totalSteps - warmupSteps));
            case "cosine":
            {
                double progress = (double)(step - warmupSteps) / Math.Max(1, totalSteps - warmupSteps);
                return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * progress)));
            }
            default:
                throw new ArgumentException($"lr_scheduler '{kind}' is not known (known: {string.Join(", ", Kinds)})", nameof(kind));
        }
    }

    /// <summary>The learning rate at optimizer step <paramref name="step"/> (0-based).</summary>
    public static double At(string kind, double baseLearningRate, int step, int warmupSteps, int totalSteps)
        => baseLearningRate * Factor(kind, step, warmupSteps, totalSteps);
}
