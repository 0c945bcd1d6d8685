using WeakTeacher.CudaKernels.Cuda;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>The DPO-family losses, as TRL's DPOConfig.loss_type names them (trl/trainer/dpo_trainer.py, v1.9.0,
/// _compute_loss L1433-1563). The first four keep their numbers: the preference kernel switches on them.</summary>
public enum PreferenceLossType
{
    /// <summary>-logsigmoid(beta d) (1 - ls) - logsigmoid(-beta d) ls (DPO; cDPO with label smoothing ls, as TRL v0.23 L1083).</summary>
    Sigmoid,
    /// <summary>(d_avg - 1/(2 beta))^2 with per-token averaged scores (IPO; beta is IPO's tau).</summary>
    Ipo,
    /// <summary>relu(1 - beta d) (RSO's hinge).</summary>
    Hinge,
    /// <summary>(-logsigmoid(beta d) (1 - ls) + logsigmoid(-beta d) ls) / (1 - 2 ls) (robust DPO).</summary>
    Robust,
    /// <summary>EXO-pref: KL(softmax(beta scores) || [1 - eps, eps]) with eps = label smoothing &gt; 0.</summary>
    ExoPair,
    /// <summary>NCA: -logsigmoid(beta c) - logsigmoid(-beta c)/2 - logsigmoid(-beta r)/2.</summary>
    NcaPair,
    /// <summary>BCO pair: -logsigmoid(beta c) - logsigmoid(-beta r).</summary>
    BcoPair,
    /// <summary>SPPO (hard labels): (c - 1/(2 beta))^2 + (r + 1/(2 beta))^2.</summary>
    SppoHard,
    /// <summary>AOT: sigmoid loss on sorted policy log-ratios minus sorted reference log-ratios (paired).</summary>
    Aot,
    /// <summary>AOT unpaired: sigmoid loss on sorted chosen minus sorted rejected log-ratios.</summary>
    AotUnpaired,
    /// <summary>APO-zero: (1 - sigmoid(beta c)) + sigmoid(beta r).</summary>
    ApoZero,
    /// <summary>APO-down: sigmoid(beta c) + (1 - sigmoid(beta d)).</summary>
    ApoDown,
    /// <summary>DiscoPOP: logistic/exponential blend, mixed by sigmoid(beta d / tau).</summary>
    Discopop,
    /// <summary>NLL of the chosen responses (mean over their tokens) as a loss term (MPO's third term).</summary>
    Sft,
    /// <summary>Sigmoid loss on per-token averaged scores (length-normalised, SimPO-style).</summary>
    SigmoidNorm,
}

/// <summary>The f-divergence regulariser of f-DPO (TRL's f_divergence_type): maps each log-ratio u to a score.</summary>
public enum FDivergenceType
{
    /// <summary>score = u (standard DPO).</summary>
    ReverseKl,
    /// <summary>score = -exp(-u).</summary>
    ForwardKl,
    /// <summary>score = logsigmoid(u).</summary>
    JsDivergence,
    /// <summary>score = exp((alpha - 1) u) / (alpha - 1) (u itself when alpha = 1).</summary>
    AlphaDivergence,
}

/// <summary>The loss of a DPO step as TRL's DPOConfig describes it: one or more loss types with weights (MPO), beta,
/// label smoothing, the f-divergence and the DiscoPOP temperature.</summary>
public sealed record PreferenceLossSettings
{
    public IReadOnlyList<PreferenceLossType> LossTypes { get; init; } = [PreferenceLossType.Sigmoid];
    /// <summary>One weight per loss type; null = 1 each.</summary>
    public IReadOnlyList<double>? LossWeights { get; init; }
    public double Beta { get; init; } = 0.1;
    public double LabelSmoothing { get; init; }
    public FDivergenceType FDivergence { get; init; } = FDivergenceType.ReverseKl;
    public double AlphaDivergenceCoef { get; init; } = 0.5;
    public double DiscopopTau { get; init; } = 0.05;

    /// <summary>Throws naming the first setting that is out of range.</summary>
    public void Validate(string owner = nameof(PreferenceLossSettings))
    {
        if (LossTypes is null || LossTypes.Count == 0) throw new ArgumentException($"{owner}: loss_type names no loss.");
        foreach (var t in LossTypes)
            if (!Enum.IsDefined(t)) throw new ArgumentOutOfRangeException(nameof(LossTypes), t, $"{owner}: unknown loss type.");
        if (LossWeights is not null && LossWeights.Count != LossTypes.Count)
            throw new ArgumentException($"{owner}: loss_weights has {LossWeights.Count} weights for {LossTypes.Count} loss types.");
        if (LossWeights is not null && LossWeights.Any(w => !double.IsFinite(w)))
            throw new ArgumentException($"{owner}: loss_weights must be finite numbers.");
        if (!double.IsFinite(Beta) || Beta <= 0)
            throw new ArgumentOutOfRangeException(nameof(Beta), Beta, $"{owner}: beta must be a finite number > 0.");
        if (!(LabelSmoothing >= 0 && LabelSmoothing <= 1))
            throw new ArgumentOutOfRangeException(nameof(LabelSmoothing), LabelSmoothing, $"{owner}: label smoothing must lie in [0, 1].");
        if (LossTypes.Contains(PreferenceLossType.Robust) && !(LabelSmoothing < 0.5))
            throw new ArgumentOutOfRangeException(nameof(LabelSmoothing), LabelSmoothing, $"{owner}: label smoothing must lie in [0, 0.5) for the robust loss (it divides by 1 - 2 ls).");
        if (LossTypes.Contains(PreferenceLossType.ExoPair) && !(LabelSmoothing > 0 && LabelSmoothing < 1))
            throw new ArgumentOutOfRangeException(nameof(LabelSmoothing), LabelSmoothing, $"{owner}: exo_pair needs label smoothing (its epsilon) in (0, 1); the EXO paper uses 1e-3.");
        if (!Enum.IsDefined(FDivergence)) throw new ArgumentOutOfRangeException(nameof(FDivergence), FDivergence, $"{owner}: unknown f-divergence.");
        if (!double.IsFinite(AlphaDivergenceCoef))
            throw new ArgumentOutOfRangeException(nameof(AlphaDivergenceCoef), AlphaDivergenceCoef, $"{owner}: the alpha-divergence coefficient must be finite.");
        if (!double.IsFinite(DiscopopTau) || DiscopopTau <= 0)
            throw new ArgumentOutOfRangeException(nameof(DiscopopTau), DiscopopTau, $"{owner}: discopop_tau must be > 0.");
    }

    /// <summary>True when a loss needs the response token counts (ipo, sigmoid_norm).</summary>
    public bool NeedsTokenCounts => LossTypes.Any(t => t is PreferenceLossType.Ipo or PreferenceLossType.SigmoidNorm);
}

/// <summary>The inputs of <see cref="PreferenceScoring.Loss"/>: per-sequence log-probs [B] (summed over response tokens,
/// LD-DPO weighted when that is on), plus what some losses need.</summary>
/// <param name="ChosenTokens">[B] response token counts of the chosen responses (ipo, sigmoid_norm).</param>
/// <param name="RejectedTokens">[B] response token counts of the rejected responses.</param>
/// <param name="ChosenNll">Scalar: mean NLL over every chosen response token of the batch (sft).</param>
/// <param name="PairWeights">[B] WPO weights w_chosen * w_rejected (no gradient flows through them).</param>
public sealed record PreferenceLossInputs(Tensor PolicyChosen, Tensor PolicyRejected, Tensor ReferenceChosen, Tensor ReferenceRejected)
{
    /// <summary>From [2B] log-probs laid out as a collated preference batch's sequences: the B chosen, then the B rejected.</summary>
    public static PreferenceLossInputs FromConcatenated(Tensor policy, Tensor reference, int pairs)
        => new(policy.narrow(0, 0, pairs), policy.narrow(0, pairs, pairs), reference.narrow(0, 0, pairs), reference.narrow(0, pairs, pairs));

    public Tensor? ChosenTokens { get; init; }
    public Tensor? RejectedTokens { get; init; }
    public Tensor? ChosenNll { get; init; }
    public Tensor? PairWeights { get; init; }
}

/// <param name="Loss">Scalar mean loss, differentiable with respect to the policy (and reference) log-probs.</param>
/// <param name="ChosenRewards">[B] beta * (policy_chosen - reference_chosen), detached.</param>
/// <param name="RejectedRewards">[B] beta * (policy_rejected - reference_rejected), detached.</param>
/// <param name="Accuracies">[B] float32, 1 where the chosen reward exceeds the rejected reward.</param>
/// <param name="Margins">[B] chosen reward - rejected reward.</param>
public sealed record PreferenceLossOutput(Tensor Loss, Tensor ChosenRewards, Tensor RejectedRewards, Tensor Accuracies, Tensor Margins);

/// <param name="RewardA">[B] implicit reward of response A: policy - reference (no beta).</param>
/// <param name="RewardB">[B] implicit reward of response B.</param>
/// <param name="Margin">[B] RewardA - RewardB.</param>
/// <param name="Label">[B] int64: 0 when A is preferred (margin >= 0, ties go to A), 1 when B is.</param>
/// <param name="Confidence">[B] sigmoid(beta |margin|), in [0.5, 1].</param>
public sealed record ImplicitRewardLabels(Tensor RewardA, Tensor RewardB, Tensor Margin, Tensor Label, Tensor Confidence);

/// <summary>Pairwise preference scoring from per-sequence log-probs: the DPO-family training loss and the labelling of
/// pairs by a DPO teacher's implicit reward. On CUDA each is one kernel launch.</summary>
public static class PreferenceScoring
{
    /// <summary>
    /// The loss of one DPO step as TRL's DPOTrainer._compute_loss (v1.9.0 L1397-1578): the f-divergence maps the
    /// log-ratios u = policy - reference to scores, each loss type gives a per-pair loss, the loss is
    /// sum over types of weight * mean(per-pair loss * WPO weight). Rewards are beta * u, as TRL logs them. On CUDA a
    /// single sigmoid / hinge / robust / ipo loss with reverse KL and no WPO weights is one launch of the preference
    /// kernel; every other combination runs as differentiable tensor ops on the inputs' device (the same maths,
    /// autograd for the backward).
    /// </summary>
    public static PreferenceLossOutput Loss(PreferenceLossInputs inputs, PreferenceLossSettings settings)
    {
        const string op = "PreferenceScoring.Loss";
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(settings);
        settings.Validate(op);
        CheckPairs(op, inputs.PolicyChosen, (inputs.PolicyRejected, nameof(inputs.PolicyRejected)),
            (inputs.ReferenceChosen, nameof(inputs.ReferenceChosen)), (inputs.ReferenceRejected, nameof(inputs.ReferenceRejected)));
        if (settings.NeedsTokenCounts)
        {
            if (inputs.ChosenTokens is null || inputs.RejectedTokens is null)
                throw new ArgumentException($"{op}: ipo and sigmoid_norm need the chosen and rejected token counts.");
            CheckPairs(op, inputs.PolicyChosen, (inputs.ChosenTokens.to(inputs.PolicyChosen.dtype), nameof(inputs.ChosenTokens)),
                (inputs.RejectedTokens.to(inputs.PolicyChosen.dtype), nameof(inputs.RejectedTokens)));
        }
        if (settings.LossTypes.Contains(PreferenceLossType.Sft) && (inputs.ChosenNll is null || inputs.ChosenNll.dim() != 0))
            throw new ArgumentException($"{op}: the sft loss needs the chosen responses' mean NLL as a scalar.");
        if (inputs.PairWeights is not null)
        {
            CheckPairs(op, inputs.PolicyChosen, (inputs.PairWeights, nameof(inputs.PairWeights)));
            if (settings.LossTypes.Any(t => t is PreferenceLossType.Aot or PreferenceLossType.AotUnpaired))
                throw new ArgumentException($"{op}: WPO weighting cannot be used with aot / aot_unpaired (they sort the pairs, which would misalign the weights).");
        }

        bool single = settings.LossTypes.Count == 1 && (settings.LossWeights is null || settings.LossWeights[0] == 1.0);
        var type = settings.LossTypes[0];
        if (single && settings.FDivergence == FDivergenceType.ReverseKl && inputs.PairWeights is null
            && type is PreferenceLossType.Sigmoid or PreferenceLossType.Hinge or PreferenceLossType.Robust or PreferenceLossType.Ipo
            && KernelSettings.UseCuda(inputs.PolicyChosen, op))
        {
            if (type != PreferenceLossType.Ipo)
                return DpoLoss(inputs.PolicyChosen, inputs.PolicyRejected, inputs.ReferenceChosen, inputs.ReferenceRejected, type, settings.Beta, settings.LabelSmoothing);
            // ipo on per-token averages: (u_c / n_c) - (u_r / n_r) = (pi_c / n_c - ref_c / n_c) - (...); rewards stay beta * u
            var nc = inputs.ChosenTokens!.to(inputs.PolicyChosen.dtype).ClampMin(1L);
            var nr = inputs.RejectedTokens!.to(inputs.PolicyChosen.dtype).ClampMin(1L);
            var averaged = DpoLoss(inputs.PolicyChosen / nc, inputs.PolicyRejected / nr, inputs.ReferenceChosen / nc, inputs.ReferenceRejected / nr,
                type, settings.Beta, settings.LabelSmoothing);
            var (c, r) = Rewards(inputs, settings.Beta);
            return new PreferenceLossOutput(averaged.Loss, c, r, c.gt(r).to(ScalarType.Float32), c - r);
        }
        return ReferenceLoss(inputs, settings);
    }

    private static (Tensor Chosen, Tensor Rejected) Rewards(PreferenceLossInputs inputs, double beta)
    {
        using var noGrad = no_grad();
        var chosen = (inputs.PolicyChosen - inputs.ReferenceChosen).Mul(beta).detach().to(ScalarType.Float32);
        var rejected = (inputs.PolicyRejected - inputs.ReferenceRejected).Mul(beta).detach().to(ScalarType.Float32);
        return (chosen, rejected);
    }

    /// <summary>The f-divergence score of log-ratios u (TRL v1.9.0 dpo_trainer.py L1400-1428).</summary>
    private static Tensor Score(Tensor u, PreferenceLossSettings settings) => settings.FDivergence switch
    {
        FDivergenceType.ReverseKl => u,
        FDivergenceType.ForwardKl => -(-u).exp(),                     // f'(t) = 1 - 1/t, constant dropped
        FDivergenceType.JsDivergence => nn.functional.logsigmoid(u),   // f'(t) = log(2t / (t + 1)), log 2 dropped
        _ when Math.Abs(settings.AlphaDivergenceCoef - 1.0) < 1e-6 => u, // alpha -> 1 is reverse KL
        // f'(t) = (t^(alpha-1) - 1) / (alpha - 1), constant dropped; clamped as TRL so exp stays finite in float32
        _ => u.Mul(settings.AlphaDivergenceCoef - 1.0).ClampMax(80.0).exp().Mul(1.0 / (settings.AlphaDivergenceCoef - 1.0)),
    };

    /// <summary>Every loss type as tensor ops; autograd gives the backward.</summary>
    private static PreferenceLossOutput ReferenceLoss(PreferenceLossInputs inputs, PreferenceLossSettings settings)
    {
        static Tensor LogSig(Tensor x) => nn.functional.logsigmoid(x);
        double beta = settings.Beta, ls = settings.LabelSmoothing;
        var chosenLogratios = inputs.PolicyChosen - inputs.ReferenceChosen;
        var rejectedLogratios = inputs.PolicyRejected - inputs.ReferenceRejected;
        var chosenScores = Score(chosenLogratios, settings);
        var rejectedScores = Score(rejectedLogratios, settings);
        var delta = chosenScores - rejectedScores;
        Tensor Averaged() // per-token averaged score difference (L1446-1449, L1552-1555)
        {
            var nc = inputs.ChosenTokens!.to(chosenScores.dtype).ClampMin(1L);
            var nr = inputs.RejectedTokens!.to(chosenScores.dtype).ClampMin(1L);
            return chosenScores / nc - rejectedScores / nr;
        }
        Tensor SigmoidOf(Tensor d) => (-LogSig(d.Mul(beta))).Mul(1 - ls) - LogSig((-d).Mul(beta)).Mul(ls);

        Tensor? loss = null;
        for (int k = 0; k < settings.LossTypes.Count; k++)
        {
            double weight = settings.LossWeights?[k] ?? 1.0;
            Tensor perPair = settings.LossTypes[k] switch
            {
                // L1434 (v0.23.0 L1083 with label smoothing, cDPO)
                PreferenceLossType.Sigmoid => SigmoidOf(delta),
                // L1437
                PreferenceLossType.Hinge => nn.functional.relu(delta.Mul(beta).SubtractFrom(1.0)),
                // L1440-1451
                PreferenceLossType.Ipo => Averaged().Sub(1 / (2 * beta)).Square(),
                // L1453-1464: qw (log qw - log(1 - eps)) + ql (log ql - log eps)
                PreferenceLossType.ExoPair => (delta.Mul(beta).sigmoid() * LogSig(delta.Mul(beta)).Sub(Math.Log(1 - ls)))
                    .Add((-delta).Mul(beta).sigmoid() * LogSig((-delta).Mul(beta)).Sub(Math.Log(ls))),
                // L1466-1473
                PreferenceLossType.NcaPair => -LogSig(chosenScores.Mul(beta)) - LogSig((-chosenScores).Mul(beta)).Mul(0.5) - LogSig((-rejectedScores).Mul(beta)).Mul(0.5),
                // L1475-1478
                PreferenceLossType.Robust => (-LogSig(delta.Mul(beta))).Mul(1 - ls).Add(LogSig((-delta).Mul(beta)).Mul(ls)).Div(1 - 2 * ls),
                // L1480-1483
                PreferenceLossType.BcoPair => -LogSig(chosenScores.Mul(beta)) - LogSig((-rejectedScores).Mul(beta)),
                // L1485-1492
                PreferenceLossType.SppoHard => chosenScores.Sub(0.5 / beta).Square().Add(rejectedScores.Add(0.5 / beta).Square()),
                // L1494-1503: sorted policy log-ratios minus sorted reference log-ratios
                PreferenceLossType.Aot => SigmoidOf((inputs.PolicyChosen - inputs.PolicyRejected).sort(0).Values
                    - (inputs.ReferenceChosen - inputs.ReferenceRejected).sort(0).Values),
                // L1505-1512
                PreferenceLossType.AotUnpaired => SigmoidOf(chosenLogratios.sort(0).Values - rejectedLogratios.sort(0).Values),
                // L1514-1520 (on the log-ratios, not the f-divergence scores)
                PreferenceLossType.ApoZero => chosenLogratios.Mul(beta).sigmoid().SubtractFrom(1.0).Add(rejectedLogratios.Mul(beta).sigmoid()),
                // L1522-1528
                PreferenceLossType.ApoDown => chosenLogratios.Mul(beta).sigmoid().Add(delta.Mul(beta).sigmoid().SubtractFrom(1.0)),
                // L1530-1540
                PreferenceLossType.Discopop => Discopop(delta.Mul(beta), settings.DiscopopTau),
                // L1542-1549: the batch's chosen-token NLL, one value per pair
                PreferenceLossType.Sft => inputs.ChosenNll!.to(delta.dtype).expand(delta.shape[0]),
                // L1551-1556
                PreferenceLossType.SigmoidNorm => -LogSig(Averaged().Mul(beta)),
                _ => throw new ArgumentOutOfRangeException(nameof(settings), settings.LossTypes[k], "unknown loss type"),
            };
            // L1565-1576: WPO weights (computed without gradient) scale every loss type's per-pair loss
            if (inputs.PairWeights is not null) perPair = perPair * inputs.PairWeights.detach().to(perPair.dtype);
            var term = perPair.mean().Mul(weight);
            loss = loss is null ? term : loss.Add(term);
        }
        var (chosen, rejected) = Rewards(inputs, beta);
        return new PreferenceLossOutput(loss!, chosen, rejected, chosen.gt(rejected).to(ScalarType.Float32), chosen - rejected);
    }

    private static Tensor Discopop(Tensor logits, double tau)
    {
        var modulation = logits.Div(tau).sigmoid();
        return (-nn.functional.logsigmoid(logits) * modulation.SubtractFrom(1.0)).Add((-logits).exp() * modulation);
    }

    /// <summary>The preference kernel's losses (sigmoid, ipo, hinge, robust) with l = (pi_c - ref_c) - (pi_r - ref_r),
    /// averaged over the batch. For IPO, TRL feeds length-averaged log-probs; <see cref="Loss"/> does.</summary>
    public static PreferenceLossOutput DpoLoss(Tensor policyChosen, Tensor policyRejected, Tensor referenceChosen, Tensor referenceRejected,
        PreferenceLossType type, double beta, double labelSmoothing = 0.0)
    {
        const string op = "PreferenceScoring.DpoLoss";
        CheckPairs(op, policyChosen, (policyRejected, nameof(policyRejected)), (referenceChosen, nameof(referenceChosen)), (referenceRejected, nameof(referenceRejected)));
        if (!double.IsFinite(beta) || beta <= 0)
            throw new ArgumentOutOfRangeException(nameof(beta), beta, $"{op}: beta must be a finite number > 0.");
        if (type is not (PreferenceLossType.Sigmoid or PreferenceLossType.Ipo or PreferenceLossType.Hinge or PreferenceLossType.Robust))
            throw new ArgumentOutOfRangeException(nameof(type), type, $"{op}: the preference kernel computes sigmoid, ipo, hinge and robust; use PreferenceScoring.Loss for {type}.");
        if (type == PreferenceLossType.Robust && !(labelSmoothing >= 0 && labelSmoothing < 0.5))
            throw new ArgumentOutOfRangeException(nameof(labelSmoothing), labelSmoothing, $"{op}: label smoothing must lie in [0, 0.5) for the robust loss (it divides by 1 - 2 ls).");
        if (!(labelSmoothing >= 0 && labelSmoothing <= 1))
            throw new ArgumentOutOfRangeException(nameof(labelSmoothing), labelSmoothing, $"{op}: label smoothing must lie in [0, 1].");

        if (KernelSettings.UseCuda(policyChosen, op))
        {
            var results = PreferenceLossFunction.apply(F32(policyChosen), F32(policyRejected), F32(referenceChosen), F32(referenceRejected),
                (int)type, beta, labelSmoothing);
            return new PreferenceLossOutput(results[0], results[1], results[2], results[3], results[4]);
        }
        return ReferenceDpoLoss(policyChosen, policyRejected, referenceChosen, referenceRejected, type, beta, labelSmoothing);
    }

    /// <summary>Labels a pair with a DPO teacher: r = policy - reference for each response, margin = rA - rB,
    /// label 0 when A is preferred (margin >= 0, ties to A) else 1, confidence = sigmoid(beta |margin|). Not differentiable.</summary>
    public static ImplicitRewardLabels LabelPairs(Tensor policyA, Tensor referenceA, Tensor policyB, Tensor referenceB, double beta)
    {
        const string op = "PreferenceScoring.LabelPairs";
        CheckPairs(op, policyA, (referenceA, nameof(referenceA)), (policyB, nameof(policyB)), (referenceB, nameof(referenceB)));
        if (!double.IsFinite(beta) || beta <= 0)
            throw new ArgumentOutOfRangeException(nameof(beta), beta, $"{op}: beta must be a finite number > 0.");
        using var noGrad = no_grad();
        if (KernelSettings.UseCuda(policyA, op))
        {
            long n = policyA.shape[0];
            Tensor F() => empty(n, ScalarType.Float32, policyA.device);
            Tensor rA = F(), rB = F(), m = F(), conf = F();
            var label = empty(n, ScalarType.Int64, policyA.device);
            CudaOps.PreferenceLabel(F32(policyA), F32(referenceA), F32(policyB), F32(referenceB), beta, rA, rB, m, conf, label);
            return new ImplicitRewardLabels(rA, rB, m, label, conf);
        }
        var rewardA = (policyA - referenceA).to(ScalarType.Float32);
        var rewardB = (policyB - referenceB).to(ScalarType.Float32);
        var margin = rewardA - rewardB;
        var labels = margin.Lt(0).to(ScalarType.Int64);
        var confidence = margin.abs().Mul(beta).sigmoid();
        return new ImplicitRewardLabels(rewardA, rewardB, margin, labels, confidence);
    }

    private static PreferenceLossOutput ReferenceDpoLoss(Tensor policyChosen, Tensor policyRejected, Tensor referenceChosen, Tensor referenceRejected,
        PreferenceLossType type, double beta, double ls)
    {
        var logits = (policyChosen - policyRejected) - (referenceChosen - referenceRejected);
        var z = logits.Mul(beta);
        Tensor losses = type switch
        {
            PreferenceLossType.Sigmoid => (-nn.functional.logsigmoid(z)).Mul(1 - ls) - nn.functional.logsigmoid(-z).Mul(ls),
            PreferenceLossType.Robust => (-nn.functional.logsigmoid(z)).Mul(1 - ls).Add(nn.functional.logsigmoid(-z).Mul(ls)).Div(1 - 2 * ls),
            PreferenceLossType.Hinge => nn.functional.relu(z.SubtractFrom(1.0)),
            PreferenceLossType.Ipo => logits.Sub(1 / (2 * beta)).Square(),
            _ => throw new ArgumentOutOfRangeException(nameof(type)),
        };
        var loss = losses.mean();
        Tensor chosen, rejected;
        using (no_grad())
        {
            chosen = (policyChosen - referenceChosen).Mul(beta).detach();
            rejected = (policyRejected - referenceRejected).Mul(beta).detach();
        }
        return new PreferenceLossOutput(loss, chosen, rejected, chosen.gt(rejected).to(ScalarType.Float32), chosen - rejected);
    }

    private static Tensor F32(Tensor t) => t.to(ScalarType.Float32).contiguous();

    private static void CheckPairs(string op, Tensor first, params (Tensor Tensor, string Name)[] others)
    {
        ArgumentNullException.ThrowIfNull(first);
        if (first.dim() != 1 || first.shape[0] == 0)
            throw new ArgumentException($"{op}: the per-sequence log-probs must be 1-D [B] with B >= 1, got shape [{string.Join(", ", first.shape)}].");
        if (!first.is_floating_point())
            throw new ArgumentException($"{op}: the per-sequence log-probs must be floating point, got {first.dtype}.");
        foreach (var (t, name) in others)
        {
            ArgumentNullException.ThrowIfNull(t, name);
            if (t.dim() != 1 || t.shape[0] != first.shape[0])
                throw new ArgumentException($"{op}: {name} must be [{first.shape[0]}] like the first input, got shape [{string.Join(", ", t.shape)}].", name);
            if (!InputChecks.SameDevice(t, first))
                throw new ArgumentException($"{op}: {name} is on {t.device} but the first input is on {first.device}.", name);
            if (!t.is_floating_point())
                throw new ArgumentException($"{op}: {name} must be floating point, got {t.dtype}.", name);
        }
    }
}

/// <summary>CUDA autograd function of the DPO-family loss: the forward kernel also writes d loss / d input, so the
/// backward is one multiply by the upstream gradient. Outputs: loss, chosen rewards, rejected rewards, accuracies,
/// margins (only the loss carries a gradient).</summary>
internal sealed class PreferenceLossFunction : TorchSharp.torch.autograd.MultiTensorFunction<PreferenceLossFunction>
{
    public override string Name => "WeakTeacher.PreferenceLoss";

    public override List<Tensor> forward(TorchSharp.torch.autograd.AutogradContext ctx, params object[] vars)
    {
        Tensor pc = (Tensor)vars[0], pr = (Tensor)vars[1], rc = (Tensor)vars[2], rr = (Tensor)vars[3];
        int type = (int)vars[4];
        double beta = (double)vars[5], ls = (double)vars[6];
        long n = pc.shape[0];
        Tensor F() => empty(n, ScalarType.Float32, pc.device);
        Tensor chosen = F(), rejected = F(), accuracies = F(), margins = F();
        var grads = empty([4, n], ScalarType.Float32, pc.device);
        var loss = empty([], ScalarType.Float32, pc.device);
        CudaOps.PreferenceLoss(pc, pr, rc, rr, type, beta, ls, chosen, rejected, accuracies, margins, grads, loss);
        ctx.save_for_backward([grads]);
        ctx.mark_non_differentiable([chosen, rejected, accuracies, margins]);
        ctx.set_materialize_grads(false);   // see AutogradGrads
        return [loss, chosen, rejected, accuracies, margins];
    }

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, List<Tensor> grads) =>
        AutogradGrads.Backward(ctx, grads, saved =>
        {
            if (grads[0] is null || grads[0].IsInvalid) return [null!, null!, null!, null!, null!, null!, null!];
            var inputGrads = saved[0] * grads[0];
            return [inputGrads[0], inputGrads[1], inputGrads[2], inputGrads[3], null!, null!, null!];
        });
}
