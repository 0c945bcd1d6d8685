using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>
/// Every TRL loss_type, the f-divergences, loss weights and WPO weights of <see cref="PreferenceScoring.Loss"/>:
/// values against numbers worked out from TRL v1.9.0 dpo_trainer.py's formulas (L1400-1578) by hand in double
/// precision, and the autograd gradient against central finite differences of the loss in float64.
/// </summary>
public sealed class PreferenceLossTypesTests
{
    // three pairs: policy / reference chosen and rejected log-probs, response token counts, the chosen NLL (sft)
    private static readonly double[] Pc = [-10.0, -12.0, -7.5], Pr = [-11.0, -10.0, -9.0], Rc = [-10.5, -11.0, -8.0], Rr = [-10.5, -11.5, -8.5];
    private static readonly double[] Nc = [4, 6, 3], Nr = [5, 3, 7];
    private const double Nll = 1.7, Beta = 0.1;

    private static Tensor D(double[] v, bool grad = false) => tensor(v, ScalarType.Float64).requires_grad_(grad);

    private static PreferenceLossInputs Inputs(Tensor pc, Tensor pr, Tensor rc, Tensor rr, Tensor? nll = null, Tensor? weights = null) =>
        new(pc, pr, rc, rr) { ChosenTokens = D(Nc), RejectedTokens = D(Nr), ChosenNll = nll ?? tensor(Nll, ScalarType.Float64), PairWeights = weights };

    // The expected means were computed by hand from TRL's per-pair formulas (a separate double-precision script,
    // written out in /work/notes/issue10.md): e.g. sigmoid = mean(-logsigmoid(beta d)), d = (pi_c - ref_c) - (pi_r - ref_r).
    [Theory]
    [InlineData(PreferenceLossType.Sigmoid, 0.0, 0.7049109133419952)]
    [InlineData(PreferenceLossType.Sigmoid, 0.1, 0.7032442466753285)]
    [InlineData(PreferenceLossType.Hinge, 0.0, 1.0166666666666666)]
    [InlineData(PreferenceLossType.Ipo, 0.0, 25.862491024187452)]
    [InlineData(PreferenceLossType.ExoPair, 1e-3, 2.79277616376787)]
    [InlineData(PreferenceLossType.NcaPair, 0.0, 1.3919707020194225)]
    [InlineData(PreferenceLossType.Robust, 0.1, 0.7069942466753284)]
    [InlineData(PreferenceLossType.BcoPair, 0.0, 1.396397433305416)]
    [InlineData(PreferenceLossType.SppoHard, 0.0, 53.083333333333336)]
    [InlineData(PreferenceLossType.Aot, 0.0, 0.7036650591561496)]
    [InlineData(PreferenceLossType.Aot, 0.2, 0.7003317258228163)]
    [InlineData(PreferenceLossType.AotUnpaired, 0.0, 0.7024176560534761)]
    [InlineData(PreferenceLossType.ApoZero, 0.0, 1.004139815628616)]
    [InlineData(PreferenceLossType.ApoDown, 0.0, 1.0040779104724662)]
    [InlineData(PreferenceLossType.Discopop, 0.0, 0.8588631861707877)]
    [InlineData(PreferenceLossType.Sft, 0.0, 1.7)]
    [InlineData(PreferenceLossType.SigmoidNorm, 0.0, 0.6967699019110863)]
    public void EachLossTypeGivesTheHandComputedValue(PreferenceLossType type, double ls, double expected)
    {
        var settings = new PreferenceLossSettings { LossTypes = [type], Beta = Beta, LabelSmoothing = ls };
        var output = PreferenceScoring.Loss(Inputs(D(Pc), D(Pr), D(Rc), D(Rr)), settings);
        Assert.Equal(expected, output.Loss.item<double>(), 10);
        // rewards are beta * (policy - reference) whatever the loss, as TRL logs them
        Assert.Equal(Beta * (Pc[0] - Rc[0]), output.ChosenRewards[0].item<float>(), 5);
        Assert.Equal(Beta * (Pr[1] - Rr[1]), output.RejectedRewards[1].item<float>(), 5);
    }

    [Theory]
    [InlineData(FDivergenceType.ForwardKl, PreferenceLossType.Sigmoid, 0.7034854540584909)]
    [InlineData(FDivergenceType.ForwardKl, PreferenceLossType.BcoPair, 1.3987998134424133)]
    [InlineData(FDivergenceType.JsDivergence, PreferenceLossType.Sigmoid, 0.6957344534614958)]
    [InlineData(FDivergenceType.JsDivergence, PreferenceLossType.BcoPair, 1.3898711442095497)]
    [InlineData(FDivergenceType.AlphaDivergence, PreferenceLossType.Sigmoid, 0.701828891298252)]
    [InlineData(FDivergenceType.AlphaDivergence, PreferenceLossType.BcoPair, 1.4042068107775758)]
    public void FDivergencesScoreTheLogRatiosByHand(FDivergenceType divergence, PreferenceLossType type, double expected)
    {
        var settings = new PreferenceLossSettings { LossTypes = [type], Beta = Beta, FDivergence = divergence, AlphaDivergenceCoef = 0.5 };
        Assert.Equal(expected, PreferenceScoring.Loss(Inputs(D(Pc), D(Pr), D(Rc), D(Rr)), settings).Loss.item<double>(), 10);
    }

    [Fact]
    public void AlphaDivergenceWithAlphaOneIsReverseKl()
    {
        var alpha = new PreferenceLossSettings { Beta = Beta, FDivergence = FDivergenceType.AlphaDivergence, AlphaDivergenceCoef = 1.0 };
        Assert.Equal(0.7049109133419952, PreferenceScoring.Loss(Inputs(D(Pc), D(Pr), D(Rc), D(Rr)), alpha).Loss.item<double>(), 10);
    }

    [Fact]
    public void MpoCombinesLossTypesWithTheirWeights()
    {
        var settings = new PreferenceLossSettings
        {
            LossTypes = [PreferenceLossType.Sigmoid, PreferenceLossType.BcoPair, PreferenceLossType.Sft],
            LossWeights = [0.8, 0.2, 1.0],
            Beta = Beta,
        };
        Assert.Equal(2.543208217334679, PreferenceScoring.Loss(Inputs(D(Pc), D(Pr), D(Rc), D(Rr)), settings).Loss.item<double>(), 10);
    }

    [Fact]
    public void WpoWeightsScaleEachPairsLoss()
    {
        var settings = new PreferenceLossSettings { Beta = Beta };
        var output = PreferenceScoring.Loss(Inputs(D(Pc), D(Pr), D(Rc), D(Rr), weights: D([0.5, 0.25, 0.9])), settings);
        Assert.Equal(0.3695467263575701, output.Loss.item<double>(), 10);
    }

    public static TheoryData<PreferenceLossType, double, FDivergenceType, bool> GradientCases()
    {
        var data = new TheoryData<PreferenceLossType, double, FDivergenceType, bool>();
        foreach (var type in Enum.GetValues<PreferenceLossType>())
        {
            double ls = type is PreferenceLossType.ExoPair ? 0.01 : type is PreferenceLossType.Robust or PreferenceLossType.Sigmoid ? 0.1 : 0.0;
            bool wpo = type is not (PreferenceLossType.Aot or PreferenceLossType.AotUnpaired);
            data.Add(type, ls, FDivergenceType.ReverseKl, false);
            if (wpo) data.Add(type, ls, FDivergenceType.ReverseKl, true);
        }
        foreach (var divergence in new[] { FDivergenceType.ForwardKl, FDivergenceType.JsDivergence, FDivergenceType.AlphaDivergence })
        {
            data.Add(PreferenceLossType.Sigmoid, 0.0, divergence, false);
            data.Add(PreferenceLossType.NcaPair, 0.0, divergence, true);
            data.Add(PreferenceLossType.Ipo, 0.0, divergence, false);
        }
        return data;
    }

    /// <summary>torch.autograd.gradcheck's test: the autograd gradient of every input against central differences of
    /// the loss itself, all in float64, on a random batch.</summary>
    [Theory]
    [MemberData(nameof(GradientCases))]
    public void GradientMatchesFiniteDifferences(PreferenceLossType type, double ls, FDivergenceType divergence, bool wpo)
    {
        var gen = new Generator(23);
        const int b = 7;
        Tensor R(double scale, double shift) => randn([b], ScalarType.Float64, generator: gen) * scale + shift;
        var values = new[] { R(2, -20), R(2, -21), R(2, -20), R(2, -21) };
        var weights = wpo ? rand([b], ScalarType.Float64, generator: gen) + 0.1 : null;
        var nll = tensor(1.3, ScalarType.Float64);
        var settings = new PreferenceLossSettings
        {
            LossTypes = [type], Beta = 0.3, LabelSmoothing = ls, FDivergence = divergence, AlphaDivergenceCoef = 0.6, DiscopopTau = 0.5,
        };
        PreferenceLossInputs With(Tensor[] v, Tensor n) => new(v[0], v[1], v[2], v[3])
        {
            ChosenTokens = tensor(new double[] { 3, 5, 2, 8, 4, 6, 1 }, ScalarType.Float64),
            RejectedTokens = tensor(new double[] { 4, 2, 7, 3, 5, 5, 2 }, ScalarType.Float64),
            ChosenNll = n,
            PairWeights = weights,
        };
        var leaves = values.Select(v => v.clone().requires_grad_(true)).ToArray();
        var nllLeaf = nll.clone().requires_grad_(true);
        PreferenceScoring.Loss(With(leaves, nllLeaf), settings).Loss.backward();

        const double h = 1e-6;
        double LossAt(int input, int index, double delta)
        {
            using var noGrad = no_grad();
            var moved = values.Select(v => v.clone()).ToArray();
            moved[input][index] = moved[input][index].item<double>() + delta;
            return PreferenceScoring.Loss(With(moved, nll), settings).Loss.item<double>();
        }
        for (int input = 0; input < 4; input++)
        {
            var grad = leaves[input].grad;
            for (int i = 0; i < b; i++)
            {
                double numeric = (LossAt(input, i, h) - LossAt(input, i, -h)) / (2 * h);
                double analytic = grad is null ? 0.0 : grad[i].item<double>();
                Assert.True(Math.Abs(numeric - analytic) <= 1e-6 + 1e-5 * Math.Abs(numeric),
                    $"{type} {divergence} wpo={wpo}: d loss / d input {input}[{i}] = {analytic}, finite difference {numeric}");
            }
        }
        // the sft term is the NLL itself, scaled by the mean WPO weight when weighting is on
        if (type == PreferenceLossType.Sft) Assert.Equal(weights is null ? 1.0 : weights.mean().item<double>(), nllLeaf.grad!.item<double>(), 10);
    }

    [Fact]
    public void BadSettingsAreRefusedNamingTheSetting()
    {
        var inputs = Inputs(D(Pc), D(Pr), D(Rc), D(Rr));
        Assert.Contains("exo_pair", Assert.Throws<ArgumentOutOfRangeException>(() =>
            PreferenceScoring.Loss(inputs, new PreferenceLossSettings { LossTypes = [PreferenceLossType.ExoPair] })).Message);
        Assert.Contains("loss_weights", Assert.Throws<ArgumentException>(() =>
            PreferenceScoring.Loss(inputs, new PreferenceLossSettings { LossTypes = [PreferenceLossType.Sigmoid], LossWeights = [1, 2] })).Message);
        Assert.Contains("aot", Assert.Throws<ArgumentException>(() =>
            PreferenceScoring.Loss(inputs with { PairWeights = D([1, 1, 1]) }, new PreferenceLossSettings { LossTypes = [PreferenceLossType.Aot] })).Message);
        Assert.Contains("token counts", Assert.Throws<ArgumentException>(() =>
            PreferenceScoring.Loss(inputs with { ChosenTokens = null }, new PreferenceLossSettings { LossTypes = [PreferenceLossType.Ipo] })).Message);
        Assert.Contains("PreferenceScoring.Loss", Assert.Throws<ArgumentOutOfRangeException>(() =>
            PreferenceScoring.DpoLoss(D(Pc), D(Pr), D(Rc), D(Rr), PreferenceLossType.BcoPair, 0.1)).Message);
    }
}
