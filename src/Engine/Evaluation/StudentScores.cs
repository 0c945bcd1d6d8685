namespace WeakTeacher.Engine.Evaluation;

/// <summary>Mean gold reward of a student's responses to the held-out prompts, with its standard error.</summary>
public sealed record StudentScore(string Name, int Count, double Mean, double StdErr);

/// <summary>Summaries of students' gold rewards.</summary>
public static class StudentScores
{
    /// <summary>Canonical student names of the paper's comparison (base SFT, human-label DPO, weak-label DPO).</summary>
    public const string Sft = "sft", HumanDpo = "human_dpo", WeakDpo = "weak_dpo";

    /// <summary>Mean and standard error (sample standard deviation / sqrt(n)) of <paramref name="goldRewards"/>.</summary>
    public static StudentScore Compute(string name, IReadOnlyList<double> goldRewards)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(goldRewards);
        int n = goldRewards.Count;
        if (n == 0) return new StudentScore(name, 0, double.NaN, double.NaN);
        double mean = 0;
        for (int i = 0; i < n; i++)
        {
            if (double.IsNaN(goldRewards[i])) throw new ArgumentException($"gold reward {i} of student '{name}' is NaN", nameof(goldRewards));
            mean += goldRewards[i];
        }
        mean /= n;
        if (n == 1) return new StudentScore(name, 1, mean, double.NaN);
        double sumSq = 0;
        foreach (var r in goldRewards) sumSq += (r - mean) * (r - mean);
        return new StudentScore(name, n, mean, Math.Sqrt(sumSq / (n - 1) / n));
    }

    /// <summary>Scores every student's responses with <paramref name="scorer"/> and summarises them.</summary>
    public static StudentScore Score(string name, IGoldScorer scorer, IReadOnlyList<string> prompts, IReadOnlyList<string> responses)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        ArgumentNullException.ThrowIfNull(prompts);
        ArgumentNullException.ThrowIfNull(responses);
        if (prompts.Count != responses.Count)
            throw new ArgumentException($"student '{name}' has {responses.Count} responses for {prompts.Count} prompts", nameof(responses));
        var items = new (string, string)[prompts.Count];
        for (int i = 0; i < items.Length; i++) items[i] = (prompts[i], responses[i]);
        return Compute(name, scorer.ScoreBatch(items));
    }
}
