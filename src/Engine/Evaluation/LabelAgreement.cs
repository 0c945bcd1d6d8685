namespace WeakTeacher.Engine.Evaluation;

/// <summary>How many of <see cref="Total"/> compared labels agree.</summary>
public readonly record struct AgreementCount(int Agree, int Total)
{
    /// <summary>Agree / Total; NaN when nothing was compared.</summary>
    public double Rate => Total == 0 ? double.NaN : (double)Agree / Total;
}

/// <summary>
/// Label agreement on the unlabelled set: the teacher's labels against the hidden human labels and the gold
/// preference, and the human labels against gold. Labels are per pair: 0 = response A preferred, 1 = response B
/// preferred, <see cref="NoPreference"/> = no preference (a gold tie); pairs with no preference on either side
/// are left out of that comparison.
/// </summary>
public sealed record LabelAgreement(AgreementCount TeacherVsHuman, AgreementCount TeacherVsGold, AgreementCount HumanVsGold)
{
    public const int NoPreference = -1;

    public static LabelAgreement Compute(IReadOnlyList<int> teacher, IReadOnlyList<int> human, IReadOnlyList<int> gold)
    {
        CheckLabels(teacher, nameof(teacher));
        CheckLabels(human, nameof(human));
        CheckLabels(gold, nameof(gold));
        if (teacher.Count != human.Count || teacher.Count != gold.Count)
            throw new ArgumentException($"label arrays differ in length: teacher {teacher.Count}, human {human.Count}, gold {gold.Count}");
        return new LabelAgreement(Agreement(teacher, human), Agreement(teacher, gold), Agreement(human, gold));
    }

    /// <summary>Agreement of two label arrays, skipping pairs where either has no preference.</summary>
    public static AgreementCount Agreement(IReadOnlyList<int> a, IReadOnlyList<int> b)
    {
        CheckLabels(a, nameof(a));
        CheckLabels(b, nameof(b));
        if (a.Count != b.Count) throw new ArgumentException($"label arrays differ in length: {a.Count} vs {b.Count}", nameof(b));
        int agree = 0, total = 0;
        for (int i = 0; i < a.Count; i++)
        {
            if (a[i] == NoPreference || b[i] == NoPreference) continue;
            total++;
            if (a[i] == b[i]) agree++;
        }
        return new AgreementCount(agree, total);
    }

    /// <summary>Gold preference per pair from gold rewards: 0 if A scores higher, 1 if B does, <see cref="NoPreference"/> on a tie.</summary>
    public static int[] GoldLabels(IReadOnlyList<double> goldA, IReadOnlyList<double> goldB)
    {
        ArgumentNullException.ThrowIfNull(goldA);
        ArgumentNullException.ThrowIfNull(goldB);
        if (goldA.Count != goldB.Count) throw new ArgumentException($"gold reward arrays differ in length: {goldA.Count} vs {goldB.Count}", nameof(goldB));
        var labels = new int[goldA.Count];
        for (int i = 0; i < labels.Length; i++)
        {
            if (double.IsNaN(goldA[i]) || double.IsNaN(goldB[i])) throw new ArgumentException($"gold reward of pair {i} is NaN");
            labels[i] = goldA[i] > goldB[i] ? 0 : goldA[i] < goldB[i] ? 1 : NoPreference;
        }
        return labels;
    }

    internal static void CheckLabels(IReadOnlyList<int> labels, string name)
    {
        ArgumentNullException.ThrowIfNull(labels, name);
        for (int i = 0; i < labels.Count; i++)
        {
            if (labels[i] is not (0 or 1 or NoPreference))
                throw new ArgumentException($"label {i} is {labels[i]}; expected 0 (A preferred), 1 (B preferred) or -1 (no preference)", name);
        }
    }
}
