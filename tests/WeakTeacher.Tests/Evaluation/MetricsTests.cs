using WeakTeacher.Engine.Evaluation;
using Xunit;

namespace WeakTeacher.Tests.Evaluation;

public sealed class MetricsTests
{
    [Fact]
    public void LabelAgreementCountsByHand()
    {
        // Pair 3 is a gold tie: it drops out of the two comparisons with gold only.
        var agreement = LabelAgreement.Compute(teacher: [0, 1, 1, 0], human: [0, 1, 0, 0], gold: [0, 0, 0, -1]);
        Assert.Equal(new AgreementCount(3, 4), agreement.TeacherVsHuman);
        Assert.Equal(new AgreementCount(1, 3), agreement.TeacherVsGold);
        Assert.Equal(new AgreementCount(2, 3), agreement.HumanVsGold);
        Assert.Equal(0.75, agreement.TeacherVsHuman.Rate);
        Assert.Equal(1.0 / 3.0, agreement.TeacherVsGold.Rate, 12);
        Assert.True(double.IsNaN(new AgreementCount(0, 0).Rate));
    }

    [Fact]
    public void GoldLabelsMarkTies()
    {
        Assert.Equal([0, 1, -1], LabelAgreement.GoldLabels([2.0, 1.0, 3.0], [1.0, 2.0, 3.0]));
    }

    [Fact]
    public void BadLabelsAreRejected()
    {
        var e = Assert.Throws<ArgumentException>(() => LabelAgreement.Compute([0, 2], [0, 1], [0, 1]));
        Assert.Contains("label 1 is 2", e.Message);
        Assert.Throws<ArgumentException>(() => LabelAgreement.Compute([0, 1], [0], [0, 1]));
        Assert.Throws<ArgumentException>(() => GoldGapTable.Compute([1.0], [2.0], [-1], [0]));
        Assert.Throws<ArgumentException>(() => WinRate.Compute([1.0, 2.0], [1.0]));
    }

    [Fact]
    public void GoldGapTableByHand()
    {
        // pair:        0    1    2    3
        // gold A:      1    2    3    4
        // gold B:      2    1    5    0
        // human:       B    A    B    A   -> chosen 2,2,5,4 (3.25)   rejected 1,1,3,0 (1.25)
        // weak:        B    B    A    A   -> chosen 2,1,3,4 (2.50)   rejected 1,2,5,0 (2.00)
        // agree {0,3}: chosen 2,4 (3.0) rejected 1,0 (0.5); disagree {1,2} by weak: chosen 1,3 (2.0) rejected 2,5 (3.5)
        var table = GoldGapTable.Compute([1, 2, 3, 4], [2, 1, 5, 0], human: [1, 0, 1, 0], weak: [1, 1, 0, 0]);
        Assert.Equal(new GoldGapRow("human", 4, 3.25, 1.25), table.Human);
        Assert.Equal(2.0, table.Human.Gap);
        Assert.Equal(new GoldGapRow("weak", 4, 2.5, 2.0), table.Weak);
        Assert.Equal(new GoldGapRow("agree", 2, 3.0, 0.5), table.Agreeing);
        Assert.Equal(new GoldGapRow("disagree_weak", 2, 2.0, 3.5), table.DisagreeingWeak);
        Assert.Equal(new GoldGapRow("disagree_human", 2, 3.5, 2.0), table.DisagreeingHuman);
        Assert.Equal(-1.5, table.DisagreeingWeak.Gap);
        Assert.Equal(0.0, table.TeacherBetterInDisagreeing);
    }

    [Fact]
    public void TeacherBetterFractionCountsGoldTiesHalf()
    {
        // Both pairs disagree; the teacher picks B: a tie (1 vs 1) and a loss (0 vs 2), then one win (3 vs 1).
        var table = GoldGapTable.Compute([1, 2, 1], [1, 0, 3], human: [0, 0, 0], weak: [1, 1, 1]);
        Assert.Equal((0.5 + 0 + 1) / 3, table.TeacherBetterInDisagreeing, 12);
        Assert.Equal(0, table.Agreeing.Count);
        Assert.True(double.IsNaN(table.Agreeing.Chosen));
    }

    [Fact]
    public void WinRateByHand()
    {
        var w = WinRate.Compute(student: [1, 2, 3], opponent: [1, 1, 4]);
        Assert.Equal(new WinRate(1, 1, 1), w);
        Assert.Equal(0.5, w.Rate);
        // outcomes 1, 0.5, 0: sample variance 0.25, stderr sqrt(0.25 / 3)
        Assert.Equal(Math.Sqrt(0.25 / 3), w.StdErr, 12);
        var tolerant = WinRate.Compute([1.0, 2.0, 3.0], [1.05, 1.0, 4.0], tieTolerance: 0.1);
        Assert.Equal(new WinRate(1, 1, 1), tolerant);
        Assert.Equal(0.75, WinRate.Compute([2.0, 2.0], [1.0, 2.0]).Rate);
    }

    [Fact]
    public void StudentScoreMeanAndStandardError()
    {
        var s = StudentScores.Compute("weak_dpo", [1.0, 2.0, 3.0]);
        Assert.Equal("weak_dpo", s.Name);
        Assert.Equal(3, s.Count);
        Assert.Equal(2.0, s.Mean);
        Assert.Equal(1.0 / Math.Sqrt(3), s.StdErr, 12);
        Assert.True(double.IsNaN(StudentScores.Compute("x", []).Mean));
        Assert.True(double.IsNaN(StudentScores.Compute("x", [4.0]).StdErr));
    }

    private sealed class LengthScorer : IGoldScorer
    {
        public string Name => "length";
        public double Score(string prompt, string response) => response.Length;
    }

    [Fact]
    public void StudentScoreWithAPluggedInScorer()
    {
        var s = StudentScores.Score("sft", new LengthScorer(), ["p", "q"], ["ab", "abcd"]);
        Assert.Equal(3.0, s.Mean);
        Assert.Throws<ArgumentException>(() => StudentScores.Score("sft", new LengthScorer(), ["p"], ["a", "b"]));
    }
}
