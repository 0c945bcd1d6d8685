using WeakTeacher.CudaKernels.Cuda;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>The DPO-family losses, as TRL's DPOTrainer.dpo_loss names them.</summary>
public enum PreferenceLossType
{
    /// <summary>-logsigmoid(beta l) (1 - ls) - logsigmoid(-beta l) ls (DPO; cDPO with label smoothing ls).</summary>
    Sigmoid,
    /// <summary>(l - 1/(2 beta))^2 (IPO; l is the log-ratio difference, beta is IPO's tau).</summary>
    Ipo,
    /// <summary>relu(1 - beta l) (RSO's hinge).</summary>
    Hinge,
    /// <summary>(-logsigmoid(beta l) (1 - ls) + logsigmoid(-beta l) ls) / (1 - 2 ls) (robust DPO).</summary>
    Robust,
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
    /// <summary>The DPO-family loss as TRL's DPOTrainer defines it, with l = (pi_c - ref_c) - (pi_r - ref_r), averaged
    /// over the batch. For IPO, TRL feeds length-averaged log-probs; pass those if that is what you want.</summary>
    public static PreferenceLossOutput DpoLoss(Tensor policyChosen, Tensor policyRejected, Tensor referenceChosen, Tensor referenceRejected,
        PreferenceLossType type, double beta, double labelSmoothing = 0.0)
    {
        const string op = "PreferenceScoring.DpoLoss";
        CheckPairs(op, policyChosen, (policyRejected, nameof(policyRejected)), (referenceChosen, nameof(referenceChosen)), (referenceRejected, nameof(referenceRejected)));
        if (!double.IsFinite(beta) || beta <= 0)
            throw new ArgumentOutOfRangeException(nameof(beta), beta, $"{op}: beta must be a finite number > 0.");
        if (!Enum.IsDefined(type))
            throw new ArgumentOutOfRangeException(nameof(type), type, $"{op}: unknown loss type.");
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
        var labels = margin.lt(0).to(ScalarType.Int64);
        var confidence = (margin.abs() * beta).sigmoid();
        return new ImplicitRewardLabels(rewardA, rewardB, margin, labels, confidence);
    }

    private static PreferenceLossOutput ReferenceDpoLoss(Tensor policyChosen, Tensor policyRejected, Tensor referenceChosen, Tensor referenceRejected,
        PreferenceLossType type, double beta, double ls)
    {
        var logits = (policyChosen - policyRejected) - (referenceChosen - referenceRejected);
        var z = logits * beta;
        Tensor losses = type switch
        {
            PreferenceLossType.Sigmoid => -nn.functional.logsigmoid(z) * (1 - ls) - nn.functional.logsigmoid(-z) * ls,
            PreferenceLossType.Robust => (-nn.functional.logsigmoid(z) * (1 - ls) + nn.functional.logsigmoid(-z) * ls) / (1 - 2 * ls),
            PreferenceLossType.Hinge => nn.functional.relu(1 - z),
            PreferenceLossType.Ipo => (logits - 1 / (2 * beta)).square(),
            _ => throw new ArgumentOutOfRangeException(nameof(type)),
        };
        var loss = losses.mean();
        Tensor chosen, rejected;
        using (no_grad())
        {
            chosen = ((policyChosen - referenceChosen) * beta).detach();
            rejected = ((policyRejected - referenceRejected) * beta).detach();
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

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, List<Tensor> grads)
    {
        if (grads[0] is null || grads[0].IsInvalid) return [null!, null!, null!, null!, null!, null!, null!];
        var inputGrads = ctx.get_saved_variables()[0] * grads[0];
        return [inputGrads[0], inputGrads[1], inputGrads[2], inputGrads[3], null!, null!, null!];
    }
}
