// preference.cu -- the DPO-family pairwise loss (TRL DPOTrainer's sigmoid / ipo / hinge / robust), its gradient with
// respect to the four per-sequence log-prob inputs, the TRL metrics, and the implicit-reward labelling of a DPO teacher.
//
// preference_loss: ONE launch per batch (a single block striding over the B pairs, a deterministic block reduction for
//   the mean). With l = (pi_c - ref_c) - (pi_r - ref_r), z = beta * l, ls = label smoothing:
//     sigmoid: -logsigmoid(z) (1 - ls) - logsigmoid(-z) ls
//     robust : (-logsigmoid(z) (1 - ls) + logsigmoid(-z) ls) / (1 - 2 ls)
//     hinge  : relu(1 - z)
//     ipo    : (l - 1 / (2 beta))^2
//   loss = mean over pairs. Also written: chosen/rejected rewards beta*(pi - ref), accuracies (chosen > rejected),
//   margins (chosen - rejected), and d loss / d {pi_c, pi_r, ref_c, ref_r} (the backward only scales these by the
//   upstream gradient). The eager formula needs about a dozen elementwise launches plus a reduction; this is one.
// preference_label: r = pi - ref per response, margin = rA - rB, label 0 when margin >= 0 (ties go to A) else 1,
//   confidence = sigmoid(beta |margin|); grid-stride over pairs, one launch.
//
// Bound: launch latency (B is a few hundred pairs at most); math in double so the results match a float64 reference.

#define WT_BLOCK 256

__device__ __forceinline__ double log_sigmoid(double x)
{
    // log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)), stable for large |x|
    return fmin(x, 0.0) - log1p(exp(-fabs(x)));
}

__device__ __forceinline__ double sigmoid(double x)
{
    return x >= 0.0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
}

// Outputs (float32): chosen_rewards, rejected_rewards, accuracies, margins [B] each; grads [4, B] holding
// dL/dpi_c, dL/dpi_r, dL/dref_c, dL/dref_r; loss a scalar. loss_type: 0 sigmoid, 1 ipo, 2 hinge, 3 robust.
extern "C" __global__ void preference_loss(const float* __restrict__ policy_chosen, const float* __restrict__ policy_rejected,
    const float* __restrict__ reference_chosen, const float* __restrict__ reference_rejected, int n, int loss_type,
    double beta, double label_smoothing, float* __restrict__ chosen_rewards, float* __restrict__ rejected_rewards,
    float* __restrict__ accuracies, float* __restrict__ margins, float* __restrict__ grads, float* __restrict__ loss)
{
    __shared__ double partial[WT_BLOCK];
    double sum = 0.0;
    const double inv_n = 1.0 / (double)n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
    {
        const double chosen_ratio = (double)policy_chosen[i] - (double)reference_chosen[i];
        const double rejected_ratio = (double)policy_rejected[i] - (double)reference_rejected[i];
        const double l = chosen_ratio - rejected_ratio;
        const double z = beta * l;
        const double ls = label_smoothing;
        double value, dvalue_dl;
        switch (loss_type)
        {
        case 0: // sigmoid; d/dz logsigmoid(z) = sigmoid(-z), d/dz logsigmoid(-z) = -sigmoid(z)
            value = -log_sigmoid(z) * (1.0 - ls) - log_sigmoid(-z) * ls;
            dvalue_dl = beta * (-(1.0 - ls) * sigmoid(-z) + ls * sigmoid(z));
            break;
        case 1: // ipo
        {
            const double t = l - 1.0 / (2.0 * beta);
            value = t * t;
            dvalue_dl = 2.0 * t;
            break;
        }
        case 2: // hinge (relu'(0) = 0, as torch)
            value = fmax(1.0 - z, 0.0);
            dvalue_dl = 1.0 - z > 0.0 ? -beta : 0.0;
            break;
        default: // robust
            value = (-log_sigmoid(z) * (1.0 - ls) + log_sigmoid(-z) * ls) / (1.0 - 2.0 * ls);
            dvalue_dl = beta * (-(1.0 - ls) * sigmoid(-z) - ls * sigmoid(z)) / (1.0 - 2.0 * ls);
            break;
        }
        sum += value;
        const double chosen_reward = beta * chosen_ratio, rejected_reward = beta * rejected_ratio;
        const double g = dvalue_dl * inv_n;
        chosen_rewards[i] = (float)chosen_reward;
        rejected_rewards[i] = (float)rejected_reward;
        accuracies[i] = chosen_reward > rejected_reward ? 1.0f : 0.0f;
        margins[i] = (float)(chosen_reward - rejected_reward);
        grads[i] = (float)g;
        grads[n + i] = (float)(-g);
        grads[2 * n + i] = (float)(-g);
        grads[3 * n + i] = (float)g;
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1)
    {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) *loss = (float)(partial[0] * inv_n);
}

// Outputs: reward_a, reward_b, margin, confidence [B] float32; label [B] int64.
extern "C" __global__ void preference_label(const float* __restrict__ policy_a, const float* __restrict__ reference_a,
    const float* __restrict__ policy_b, const float* __restrict__ reference_b, int n, double beta,
    float* __restrict__ reward_a_out, float* __restrict__ reward_b_out, float* __restrict__ margin_out,
    float* __restrict__ confidence_out, long long* __restrict__ label)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    {
        const double reward_a = (double)policy_a[i] - (double)reference_a[i];
        const double reward_b = (double)policy_b[i] - (double)reference_b[i];
        const double margin = reward_a - reward_b;
        reward_a_out[i] = (float)reward_a;
        reward_b_out[i] = (float)reward_b;
        margin_out[i] = (float)margin;
        confidence_out[i] = (float)sigmoid(beta * fabs(margin));
        label[i] = margin >= 0.0 ? 0 : 1;
    }
}
