using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>The DPO-family losses and the implicit-reward labelling against values computed here with doubles.</summary>
public sealed class PreferenceScoringTests
{
    internal static double LogSigmoid(double x) => Math.Min(x, 0) - Math.Log(1 + Math.Exp(-Math.Abs(x)));

    /// <summary>TRL DPOTrainer.dpo_loss per pair, l = (pi_c - ref_c) - (pi_r - ref_r).</summary>
    internal static double PairLoss(PreferenceLossType type, double l, double beta, double ls) => type switch
    {
        PreferenceLossType.Sigmoid => -LogSigmoid(beta * l) * (1 - ls) - LogSigmoid(-beta * l) * ls,
        PreferenceLossType.Robust => (-LogSigmoid(beta * l) * (1 - ls) + LogSigmoid(-beta * l) * ls) / (1 - 2 * ls),
        PreferenceLossType.Hinge => Math.Max(0, 1 - beta * l),
        PreferenceLossType.Ipo => Math.Pow(l - 1 / (2 * beta), 2),
        _ => throw new ArgumentOutOfRangeException(nameof(type)),
    };

    private static Tensor F(params double[] values) => tensor(values.Select(v => (float)v).ToArray());

    // pairs with l = 1 and l = -2 (beta 0.1); the expected means were computed from the formulas above
    [Theory]
    [InlineData(PreferenceLossType.Sigmoid, 0.0, 0.7212677647275814)]
    [InlineData(PreferenceLossType.Sigmoid, 0.1, 0.7162677647275814)]
    [InlineData(PreferenceLossType.Robust, 0.1, 0.7275177647275815)]
    [InlineData(PreferenceLossType.Hinge, 0.0, 1.05)]
    [InlineData(PreferenceLossType.Ipo, 0.0, 32.5)]
    public void FixedPairsGiveTheFormulaValue(PreferenceLossType type, double ls, double expected)
    {
        var output = PreferenceScoring.DpoLoss(F(-10, -12), F(-11, -10), F(-10.5, -11), F(-10.5, -11), type, 0.1, ls);
        Assert.Equal(expected, output.Loss.item<float>(), 5);
        Assert.Equal(0.5 * (PairLoss(type, 1, 0.1, ls) + PairLoss(type, -2, 0.1, ls)), expected, 12);
        Assert.Equal([0.05f, -0.1f], output.ChosenRewards.data<float>().ToArray(), (a, b) => Math.Abs(a - b) < 1e-6);
        Assert.Equal([-0.05f, 0.1f], output.RejectedRewards.data<float>().ToArray(), (a, b) => Math.Abs(a - b) < 1e-6);
        Assert.Equal([1f, 0f], output.Accuracies.data<float>().ToArray());
        Assert.Equal([0.1f, -0.2f], output.Margins.data<float>().ToArray(), (a, b) => Math.Abs(a - b) < 1e-6);
    }

    [Theory]
    [InlineData(PreferenceLossType.Sigmoid, 0.0)]
    [InlineData(PreferenceLossType.Sigmoid, 0.2)]
    [InlineData(PreferenceLossType.Robust, 0.0)]
    [InlineData(PreferenceLossType.Robust, 0.3)]
    [InlineData(PreferenceLossType.Hinge, 0.0)]
    [InlineData(PreferenceLossType.Ipo, 0.0)]
    public void RandomBatchLossAndGradientMatchDoubles(PreferenceLossType type, double ls)
    {
        var gen = new TorchSharp.torch.Generator(17);
        const int b = 33;
        const double beta = 0.25;
        var pc = (randn([b], generator: gen) * 4 - 30).requires_grad_(true);
        var pr = (randn([b], generator: gen) * 4 - 30).requires_grad_(true);
        var rc = randn([b], generator: gen) * 4 - 30;
        var rr = randn([b], generator: gen) * 4 - 30;
        var output = PreferenceScoring.DpoLoss(pc, pr, rc, rr, type, beta, ls);
        output.Loss.backward();

        float[] a = pc.data<float>().ToArray(), c = pr.data<float>().ToArray(), r1 = rc.data<float>().ToArray(), r2 = rr.data<float>().ToArray();
        double mean = 0;
        var gradChosen = new double[b];
        for (int i = 0; i < b; i++)
        {
            double l = ((double)a[i] - r1[i]) - ((double)c[i] - r2[i]);
            mean += PairLoss(type, l, beta, ls) / b;
            const double h = 1e-5;   // central difference of the double formula: independent of the kernel's derivative
            gradChosen[i] = (PairLoss(type, l + h, beta, ls) - PairLoss(type, l - h, beta, ls)) / (2 * h) / b;
        }
        Assert.Equal(mean, output.Loss.item<float>(), 4);
        TestData.Close(tensor(gradChosen), pc.grad!, 1e-6, 1e-4, "d loss / d policy chosen");
        TestData.Close(-tensor(gradChosen), pr.grad!, 1e-6, 1e-4, "d loss / d policy rejected");
        Assert.False(output.ChosenRewards.requires_grad);
        TestData.Close(((pc - rc) * beta).detach() - ((pr - rr) * beta).detach(), output.Margins, 1e-6, 1e-6, "margins");
    }

    [Fact]
    public void RobustRejectsLabelSmoothingOfOneHalf()
    {
        var x = F(-1, -2);
        Assert.Contains("[0, 0.5)", Assert.Throws<ArgumentOutOfRangeException>(() =>
            PreferenceScoring.DpoLoss(x, x, x, x, PreferenceLossType.Robust, 0.1, 0.5)).Message);
        Assert.Contains("beta", Assert.Throws<ArgumentOutOfRangeException>(() =>
            PreferenceScoring.DpoLoss(x, x, x, x, PreferenceLossType.Sigmoid, 0, 0)).Message);
        Assert.Contains("referenceRejected must be [2]", Assert.Throws<ArgumentException>(() =>
            PreferenceScoring.DpoLoss(x, x, x, F(1), PreferenceLossType.Sigmoid, 0.1)).Message);
    }

    [Fact]
    public void LabelPairsUsesTheImplicitRewardWithTiesToA()
    {
        // rA = -1 - (-3) = 2, rB = -2 - (-5) = 3 -> margin -1 -> B;  tie -> A;  rA = 0.5, rB = -0.25 -> A
        var labels = PreferenceScoring.LabelPairs(F(-1, -4, -2), F(-3, -5, -2.5), F(-2, -1, -3), F(-5, -2, -2.75), beta: 2.0);
        Assert.Equal([2f, 1f, 0.5f], labels.RewardA.data<float>().ToArray());
        Assert.Equal([3f, 1f, -0.25f], labels.RewardB.data<float>().ToArray());
        Assert.Equal([-1f, 0f, 0.75f], labels.Margin.data<float>().ToArray());
        Assert.Equal(ScalarType.Int64, labels.Label.dtype);
        Assert.Equal([1L, 0L, 0L], labels.Label.data<long>().ToArray());
        double[] expected = [1 / (1 + Math.Exp(-2.0 * 1)), 0.5, 1 / (1 + Math.Exp(-2.0 * 0.75))];
        TestData.Close(tensor(expected), labels.Confidence, 1e-6, 1e-6, "confidence");
    }
}
