using System.Globalization;
using MathNet.Numerics.Distributions;

namespace WeakTeacher.Engine.Experiments;

/// <summary>A mean with its two-sided 95% confidence interval from the t-distribution over <see cref="Count"/> values.</summary>
public sealed record Interval(double Mean, double Low, double High, int Count)
{
    public double HalfWidth => (High - Low) / 2;

    public string Format(string f = "F2") => !double.IsFinite(Mean) ? "n/a"
        : double.IsFinite(Low) ? string.Create(CultureInfo.InvariantCulture, $"{Mean.ToString(f, CultureInfo.InvariantCulture)} [{Low.ToString(f, CultureInfo.InvariantCulture)}, {High.ToString(f, CultureInfo.InvariantCulture)}]")
        : Mean.ToString(f, CultureInfo.InvariantCulture);
}

/// <summary>Outcome of a claim "A >= B" tested by the 95% interval of A - B.</summary>
public enum VerdictOutcome { Supported, NotSupported, Contradicted }

/// <summary>One claim, its interval and the one-line verdict (the same sentence whichever way the data fall).</summary>
public sealed record Verdict(string Claim, Interval Difference, string Basis)
{
    /// <summary>Supported when the whole 95% interval of the difference lies above 0; contradicted when it lies below 0.</summary>
    public VerdictOutcome Outcome => Difference.Low > 0 ? VerdictOutcome.Supported
        : Difference.High < 0 ? VerdictOutcome.Contradicted : VerdictOutcome.NotSupported;

    public string OutcomeText => Outcome switch
    {
        VerdictOutcome.Supported => "supported at 95%",
        VerdictOutcome.Contradicted => "not supported at 95% (the interval lies below 0)",
        _ => "not supported at 95% (the interval contains 0)",
    };

    public string Line => $"{Claim}: {OutcomeText}; difference {Signed(Difference.Mean)}, 95% CI [{Signed(Difference.Low)}, {Signed(Difference.High)}] ({Basis})";

    /// <summary>Two decimals with a sign; a bound that two decimals would show as 0.00 gets three, so a supported
    /// interval never reads [0.00, ...].</summary>
    private static string Signed(double v) => !double.IsFinite(v) ? "n/a"
        : v.ToString(v != 0 && Math.Abs(v) < 0.005 ? "+0.000;-0.000;0.000" : "+0.00;-0.00;0.00", CultureInfo.InvariantCulture);
}

/// <summary>
/// The statistics of the experiments: a quantity measured once per seed is summarised by its mean over seeds with a
/// t-interval (n - 1 degrees of freedom); a comparison of two students is the per-prompt difference of their gold
/// rewards, paired on the same prompt and seed and pooled over seeds, with its t-interval.
/// </summary>
public static class SeedStatistics
{
    public const double Level = 0.95;

    /// <summary>Mean and 95% t-interval of <paramref name="values"/> (one value: no interval; none: NaN).</summary>
    public static Interval MeanInterval(IReadOnlyList<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        int n = values.Count;
        if (n == 0) return new Interval(double.NaN, double.NaN, double.NaN, 0);
        double mean = values.Average();
        if (n == 1) return new Interval(mean, double.NaN, double.NaN, 1);
        double sd = Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (n - 1));
        double half = TQuantile(n - 1) * sd / Math.Sqrt(n);
        return new Interval(mean, mean - half, mean + half, n);
    }

    /// <summary>The paired per-prompt difference a - b pooled over seeds: a[s][p] - b[s][p] for every seed s and prompt p.</summary>
    public static Interval PairedDifference(IReadOnlyList<IReadOnlyList<double>> a, IReadOnlyList<IReadOnlyList<double>> b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (a.Count != b.Count) throw new ArgumentException($"{a.Count} seeds against {b.Count}", nameof(b));
        var differences = new List<double>();
        for (int s = 0; s < a.Count; s++)
        {
            if (a[s].Count != b[s].Count) throw new ArgumentException($"seed {s}: {a[s].Count} prompts against {b[s].Count}", nameof(b));
            for (int p = 0; p < a[s].Count; p++) differences.Add(a[s][p] - b[s][p]);
        }
        return MeanInterval(differences);
    }

    /// <summary>The 97.5% quantile of Student's t with <paramref name="degreesOfFreedom"/> (two-sided 95%).</summary>
    public static double TQuantile(int degreesOfFreedom) => StudentT.InvCDF(0, 1, degreesOfFreedom, 1 - (1 - Level) / 2);
}
