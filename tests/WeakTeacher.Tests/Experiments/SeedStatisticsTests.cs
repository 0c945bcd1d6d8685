using WeakTeacher.Engine.Experiments;
using Xunit;

namespace WeakTeacher.Tests.Experiments;

/// <summary>The experiments' statistics against hand values (t quantiles from tables) and the verdict wording.</summary>
public class SeedStatisticsTests
{
    [Fact]
    public void MeanIntervalUsesTheTDistribution()
    {
        // t(0.975, 2) = 4.3027: mean 2, sd 1, n 3 -> half width 4.3027 / sqrt(3)
        var i = SeedStatistics.MeanInterval([1.0, 2.0, 3.0]);
        Assert.Equal(2.0, i.Mean, 12);
        Assert.Equal(4.302653 / Math.Sqrt(3), i.HalfWidth, 5);
        Assert.Equal(1.959964, SeedStatistics.TQuantile(1_000_000), 4);
        Assert.True(double.IsNaN(SeedStatistics.MeanInterval([5.0]).Low));
    }

    [Fact]
    public void PairedDifferencePoolsPromptsOverSeeds()
    {
        IReadOnlyList<IReadOnlyList<double>> a = [[1.0, 2.0], [3.0, 4.0]];
        IReadOnlyList<IReadOnlyList<double>> b = [[0.0, 2.0], [1.0, 4.0]];
        var d = SeedStatistics.PairedDifference(a, b);
        Assert.Equal(4, d.Count);
        Assert.Equal(0.75, d.Mean, 12);
        Assert.Throws<ArgumentException>(() => SeedStatistics.PairedDifference(a, [[0.0]]));
    }

    [Fact]
    public void VerdictsReadTheSameWhicheverWayTheDataFall()
    {
        Assert.Equal(VerdictOutcome.Supported, new Verdict("a >= b", new Interval(1, 0.5, 1.5, 9), "x").Outcome);
        Assert.Equal(VerdictOutcome.NotSupported, new Verdict("a >= b", new Interval(0.1, -0.5, 0.7, 9), "x").Outcome);
        Assert.Equal(VerdictOutcome.Contradicted, new Verdict("a >= b", new Interval(-1, -1.5, -0.5, 9), "x").Outcome);
        Assert.StartsWith("a >= b: supported at 95%", new Verdict("a >= b", new Interval(1, 0.5, 1.5, 9), "x").Line);
        Assert.StartsWith("a >= b: not supported at 95%", new Verdict("a >= b", new Interval(-1, -1.5, -0.5, 9), "x").Line);
    }

    [Fact]
    public void StudiesResolveByNameOrNumberAndRejectUnknownOnes()
    {
        Assert.Equal(Studies.Beta, Studies.Resolve("5"));
        Assert.Equal(Studies.NoSft, Studies.Resolve("no-sft"));
        var e = Assert.Throws<ArgumentException>(() => Studies.Resolve("gamma"));
        Assert.Contains("unknown study 'gamma'", e.Message);
    }
}
