namespace WeakTeacher.Engine.Evaluation;

/// <summary>Mean gold reward of the chosen and the rejected responses of <see cref="Count"/> pairs labelled by <see cref="Source"/>.</summary>
public sealed record GoldGapRow(string Source, int Count, double Chosen, double Rejected)
{
    public double Gap => Chosen - Rejected;
}

/// <summary>
/// The paper's Table 2: mean gold reward of chosen and rejected responses per label source (human, weak), and on
/// the subsets where the weak labels agree and disagree with the human labels, plus the fraction of the
/// disagreeing subset in which the teacher's choice has the higher gold reward (gold ties count half).
/// </summary>
public sealed record GoldGapTable(
    GoldGapRow Human,
    GoldGapRow Weak,
    GoldGapRow Agreeing,
    GoldGapRow DisagreeingWeak,
    GoldGapRow DisagreeingHuman,
    double TeacherBetterInDisagreeing)
{
    public IReadOnlyList<GoldGapRow> Rows => [Human, Weak, Agreeing, DisagreeingWeak, DisagreeingHuman];

    /// <param name="goldA">Gold reward of response A per pair.</param>
    /// <param name="goldB">Gold reward of response B per pair.</param>
    /// <param name="human">Human label per pair (0 = A preferred, 1 = B preferred).</param>
    /// <param name="weak">Weak teacher's label per pair.</param>
    public static GoldGapTable Compute(IReadOnlyList<double> goldA, IReadOnlyList<double> goldB, IReadOnlyList<int> human, IReadOnlyList<int> weak)
    {
        ArgumentNullException.ThrowIfNull(goldA);
        ArgumentNullException.ThrowIfNull(goldB);
        CheckPreferences(human, nameof(human));
        CheckPreferences(weak, nameof(weak));
        int n = goldA.Count;
        if (goldB.Count != n || human.Count != n || weak.Count != n)
            throw new ArgumentException($"inputs differ in length: goldA {n}, goldB {goldB.Count}, human {human.Count}, weak {weak.Count}");

        var all = Enumerable.Range(0, n).ToList();
        var agreeing = all.Where(i => human[i] == weak[i]).ToList();
        var disagreeing = all.Where(i => human[i] != weak[i]).ToList();

        GoldGapRow Row(string source, List<int> pairs, IReadOnlyList<int> labels)
        {
            if (pairs.Count == 0) return new GoldGapRow(source, 0, double.NaN, double.NaN);
            double chosen = 0, rejected = 0;
            foreach (int i in pairs)
            {
                chosen += labels[i] == 0 ? goldA[i] : goldB[i];
                rejected += labels[i] == 0 ? goldB[i] : goldA[i];
            }
            return new GoldGapRow(source, pairs.Count, chosen / pairs.Count, rejected / pairs.Count);
        }

        double better = double.NaN;
        if (disagreeing.Count > 0)
        {
            double wins = 0;
            foreach (int i in disagreeing)
            {
                double chosen = weak[i] == 0 ? goldA[i] : goldB[i];
                double rejected = weak[i] == 0 ? goldB[i] : goldA[i];
                wins += chosen > rejected ? 1.0 : chosen == rejected ? 0.5 : 0.0;
            }
            better = wins / disagreeing.Count;
        }

        return new GoldGapTable(
            Row("human", all, human),
            Row("weak", all, weak),
            Row("agree", agreeing, weak),
            Row("disagree_weak", disagreeing, weak),
            Row("disagree_human", disagreeing, human),
            better);
    }

    private static void CheckPreferences(IReadOnlyList<int> labels, string name)
    {
        ArgumentNullException.ThrowIfNull(labels, name);
        for (int i = 0; i < labels.Count; i++)
        {
            if (labels[i] is not (0 or 1))
                throw new ArgumentException($"label {i} is {labels[i]}; expected 0 (A preferred) or 1 (B preferred)", name);
        }
    }
}
