namespace WeakTeacher.Engine.Evaluation;

/// <summary>
/// Per-prompt win rate of one student over another by gold reward: a prompt is a win when the student's response
/// scores higher than the opponent's on the same prompt, a tie counts half.
/// </summary>
public sealed record WinRate(int Wins, int Ties, int Losses)
{
    public int Count => Wins + Ties + Losses;

    /// <summary>(wins + ties / 2) / prompts; NaN with no prompts.</summary>
    public double Rate => Count == 0 ? double.NaN : (Wins + 0.5 * Ties) / Count;

    /// <summary>Standard error of <see cref="Rate"/> over prompts (per-prompt outcomes 1, 0.5, 0).</summary>
    public double StdErr
    {
        get
        {
            if (Count < 2) return double.NaN;
            double p = Rate;
            double sumSq = Wins * (1 - p) * (1 - p) + Ties * (0.5 - p) * (0.5 - p) + Losses * p * p;
            return Math.Sqrt(sumSq / (Count - 1) / Count);
        }
    }

    /// <param name="student">Gold reward of the student's response per prompt.</param>
    /// <param name="opponent">Gold reward of the opponent's response to the same prompt.</param>
    /// <param name="tieTolerance">Differences at most this large count as ties.</param>
    public static WinRate Compute(IReadOnlyList<double> student, IReadOnlyList<double> opponent, double tieTolerance = 0)
    {
        ArgumentNullException.ThrowIfNull(student);
        ArgumentNullException.ThrowIfNull(opponent);
        if (student.Count != opponent.Count)
            throw new ArgumentException($"students answered different numbers of prompts: {student.Count} vs {opponent.Count}", nameof(opponent));
        if (!(tieTolerance >= 0)) throw new ArgumentOutOfRangeException(nameof(tieTolerance), tieTolerance, "must be >= 0");
        int wins = 0, ties = 0, losses = 0;
        for (int i = 0; i < student.Count; i++)
        {
            double d = student[i] - opponent[i];
            if (double.IsNaN(d)) throw new ArgumentException($"gold reward of prompt {i} is NaN");
            if (Math.Abs(d) <= tieTolerance) ties++;
            else if (d > 0) wins++;
            else losses++;
        }
        return new WinRate(wins, ties, losses);
    }
}

/// <summary>A win rate of <see cref="Student"/> over <see cref="Opponent"/> (student names as in the report).</summary>
public sealed record WinRateEntry(string Student, string Opponent, WinRate Result);
