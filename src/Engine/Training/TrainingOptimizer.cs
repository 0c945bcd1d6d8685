using TorchSharp;
using TorchSharp.Modules;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Checkpoints;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// AdamW over a model's trainable parameters (requires_grad), in two groups: weight decay for matrices, none for
/// vectors (biases and normalisation parameters), the groups transformers' Trainer builds for these models. The learning rate is set per step by
/// <see cref="LearningRateSchedule"/>; gradients are clipped by total norm. The optimizer state (exp_avg,
/// exp_avg_sq, step per parameter) is saved and restored by parameter name through safetensors.
/// The step is the engine's own (torch.optim.AdamW's update, Loshchilov and Hutter 2019, algorithm 2, in the same
/// operations as TorchSharp's AdamW): TorchSharp's optimizers pass their coefficients as implicitly converted Scalars
/// that nothing holds, which another thread's garbage collection can free while libtorch reads them (see ScalarOps).
/// </summary>
public sealed class TrainingOptimizer : IDisposable
{
    /// <summary>AdamW state of one parameter (torch.optim.AdamW's state["exp_avg"], ["exp_avg_sq"], ["step"]).</summary>
    private sealed class State(Tensor expAvg, Tensor expAvgSq)
    {
        public Tensor ExpAvg { get; } = expAvg;
        public Tensor ExpAvgSq { get; } = expAvgSq;
        public long Step { get; set; }
    }

    private readonly List<(string Name, Parameter Parameter)> _parameters;
    private readonly double[] _weightDecay;
    // allocated at a parameter's first update (or by Load): nothing held during what comes before the first step
    // (the reference pass, a resumed run's setup), as torch.optim allocates its state lazily
    private readonly State?[] _states;
    private readonly double _beta1, _beta2, _epsilon;
    private double _learningRate;

    private TrainingOptimizer(List<(string, Parameter)> parameters, IReadOnlySet<string> noDecay, TrainingConfig config)
    {
        _parameters = parameters;
        NoDecayParameters = noDecay;
        _weightDecay = parameters.Select(p => noDecay.Contains(p.Item1) ? 0.0 : config.WeightDecay).ToArray();
        _beta1 = config.AdamBeta1;
        _beta2 = config.AdamBeta2;
        _epsilon = config.AdamEpsilon;
        _learningRate = config.LearningRate;
        _states = new State?[parameters.Count];
    }

    /// <summary>The state of parameter <paramref name="i"/>, zeros at first use (torch.optim.AdamW's initial state).</summary>
    private State StateOf(int i)
    {
        if (_states[i] is { } state) return state;
        using var noGrad = no_grad();
        var parameter = _parameters[i].Parameter;
        return _states[i] = new State(zeros_like(parameter).DetachFromDisposeScope(), zeros_like(parameter).DetachFromDisposeScope());
    }

    /// <summary>Whether any parameter's state is allocated (false until the first <see cref="Step"/> or <see cref="Load"/>).</summary>
    public bool StateAllocated => _states.Any(s => s is not null);

    /// <summary>The optimised parameters, by name, in the optimizer's order.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Parameters => _parameters;

    /// <summary>Names of the parameters without weight decay (those of rank below 2: biases, norms).</summary>
    public IReadOnlySet<string> NoDecayParameters { get; }

    /// <summary>AdamW over the trainable parameters of <paramref name="model"/>, or over <paramref name="parameters"/>
    /// (named as in the model: the float32 masters of <see cref="MixedPrecision"/>) when given.</summary>
    public static TrainingOptimizer Create(nn.Module model, TrainingConfig config, IReadOnlyList<(string Name, Parameter Parameter)>? parameters = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        var trainable = parameters?.Select(p => (name: p.Name, parameter: p.Parameter)).ToList()
            ?? model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("the model has no trainable parameters (requires_grad is false everywhere)");
        // by rank, as nanoGPT groups them: matrices (projections, embeddings as in transformers, LoRA factors) decay,
        // vectors (biases, norm scales and shifts) do not; no name or type patterns to keep in step with the models
        var noDecayNames = trainable.Where(p => p.parameter.dim() < 2).Select(p => p.name).ToHashSet(StringComparer.Ordinal);
        // the optimizer's order: decay group first, then the no-decay group (state is keyed by name, not position)
        var ordered = new List<(string, Parameter)>();
        ordered.AddRange(trainable.Where(p => !noDecayNames.Contains(p.name)));
        ordered.AddRange(trainable.Where(p => noDecayNames.Contains(p.name)));
        return new TrainingOptimizer(ordered, noDecayNames, config);
    }

    /// <summary>Sets the learning rate of every group (the schedule is computed by the trainer).</summary>
    public void SetLearningRate(double learningRate) => _learningRate = learningRate;

    /// <summary>Gradients released, as torch's zero_grad(set_to_none=True) (its default since 2.0): none is held through
    /// the next forward (a model's size in float32); the next backward allocates them anew and accumulation adds into
    /// those. A parameter the next backward gives no gradient is then skipped by <see cref="Step"/>, as torch.optim skips it.</summary>
    public void ZeroGrad()
    {
        foreach (var (_, parameter) in _parameters) parameter.grad = null;
    }

    /// <summary>
    /// One AdamW update of every parameter with a gradient, torch.optim.AdamW's single-tensor update in place:
    /// p *= 1 - lr wd (skipped at wd 0); m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
    /// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). Five passes over a parameter and one temporary (the
    /// denominator), disposed before the next parameter, so the step's extra memory is one parameter's size, not all of them;
    /// float32 CPU parameters take <see cref="FusedAdamW"/>, the same update in one pass and no temporary.
    /// </summary>
    public void Step()
    {
        using var noGrad = no_grad();
        // the coefficients shared by every parameter, held for the whole step (see ScalarOps on why they are held)
        using var oneMinusBeta1 = (1 - _beta1).ToScalar();
        using var beta2 = _beta2.ToScalar();
        using var oneMinusBeta2 = (1 - _beta2).ToScalar();
        using var epsilon = _epsilon.ToScalar();
        // TorchSharp's lerp_ takes its weight as a tensor: one 0-dim 1 - b1 per device and dtype the parameters use
        var lerpWeights = new Dictionary<(DeviceType, int, ScalarType), Tensor>();
        try
        {
            StepAll(oneMinusBeta1, beta2, oneMinusBeta2, epsilon, lerpWeights);
        }
        finally
        {
            foreach (var w in lerpWeights.Values) w.Dispose();
        }
    }

    private void StepAll(Scalar oneMinusBeta1, Scalar beta2, Scalar oneMinusBeta2, Scalar epsilon,
        Dictionary<(DeviceType, int, ScalarType), Tensor> lerpWeights)
    {
        for (int i = 0; i < _parameters.Count; i++)
        {
            var parameter = _parameters[i].Parameter;
            using var grad = parameter.grad;
            if (grad is null) continue;
            var state = StateOf(i);
            state.Step += 1;
            double biasCorrection1 = 1 - Math.Pow(_beta1, state.Step);
            double biasCorrection2 = 1 - Math.Pow(_beta2, state.Step);
            if (FusedAdamW.Serves(parameter, grad, state.ExpAvg, state.ExpAvgSq))
            {
                // the same update in one pass over the four tensors (the CPU's float32 parameters)
                FusedAdamW.Step(parameter, grad, state.ExpAvg, state.ExpAvgSq, new FusedAdamW.Coefficients(
                    Decay: (float)(1 - _learningRate * _weightDecay[i]), OneMinusBeta1: (float)(1 - _beta1), Beta2: (float)_beta2,
                    OneMinusBeta2: (float)(1 - _beta2), Correction2Sqrt: (float)Math.Sqrt(biasCorrection2), Epsilon: (float)_epsilon,
                    StepSize: (float)(-(_learningRate / biasCorrection1))));
                continue;
            }
            if (_weightDecay[i] != 0)
            {
                using var decay = (1 - _learningRate * _weightDecay[i]).ToScalar();
                parameter.mul_(decay);
            }
            var key = (state.ExpAvg.device_type, state.ExpAvg.device_index, state.ExpAvg.dtype);
            if (!lerpWeights.TryGetValue(key, out var lerpWeight))
                lerpWeights[key] = lerpWeight = full([], oneMinusBeta1, key.dtype, state.ExpAvg.device).DetachFromDisposeScope();
            state.ExpAvg.lerp_(grad, lerpWeight);
            state.ExpAvgSq.mul_(beta2).addcmul_(grad, grad, oneMinusBeta2);
            using var correction2Sqrt = Math.Sqrt(biasCorrection2).ToScalar();
            using var stepSize = (-(_learningRate / biasCorrection1)).ToScalar();
            using var denominator = state.ExpAvgSq.sqrt();
            denominator.div_(correction2Sqrt).add_(epsilon, ScalarOps.One);
            parameter.addcdiv_(state.ExpAvg, denominator, stepSize);
        }
    }

    /// <summary>
    /// Total L2 norm of the gradients (torch.nn.utils.clip_grad_norm_: norm of the per-parameter norms); when
    /// <paramref name="maxNorm"/> > 0 the gradients are scaled by min(1, maxNorm / (norm + 1e-6)). Returns the norm before clipping.
    /// </summary>
    public double ClipGradients(double maxNorm)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var grads = _parameters.Select(p => p.Parameter.grad).Where(g => g is not null).Select(g => g!).ToList();
        if (grads.Count == 0) return 0.0;
        var norms = grads.Select(g => g.to(ScalarType.Float32).norm()).ToArray();
        var total = stack(norms).norm();
        double value = total.item<float>();
        if (maxNorm > 0)
        {
            var coefficient = total.Add(1e-6).DivideInto(maxNorm).ClampMax(1.0);
            foreach (var g in grads) g.mul_(coefficient.to(g.dtype));
        }
        return value;
    }

    /// <summary>exp_avg / exp_avg_sq per parameter as "name.exp_avg" / "name.exp_avg_sq", and the AdamW step count per name.</summary>
    public (Dictionary<string, Tensor> Tensors, Dictionary<string, long> Steps) StateTensors()
    {
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var steps = new Dictionary<string, long>(StringComparer.Ordinal);
        for (int i = 0; i < _parameters.Count; i++)
        {
            var (name, _) = _parameters[i];
            var state = StateOf(i);   // a parameter not yet updated saves torch's initial state (zeros, step 0)
            tensors[name + ".exp_avg"] = state.ExpAvg;
            tensors[name + ".exp_avg_sq"] = state.ExpAvgSq;
            steps[name] = state.Step;
        }
        return (tensors, steps);
    }

    /// <summary>Writes the optimizer state to <paramref name="path"/> (safetensors; steps in the metadata).</summary>
    public void Save(string path)
    {
        var (tensors, steps) = StateTensors();
        var metadata = steps.ToDictionary(kv => "step." + kv.Key, kv => kv.Value.ToString(System.Globalization.CultureInfo.InvariantCulture));
        SafeTensors.Save(tensors, path, metadata);
    }

    /// <summary>Restores the state written by <see cref="Save"/>; every optimised parameter must be in the file.</summary>
    public void Load(string path)
    {
        var loaded = SafeTensors.Load(path, out var metadata);
        try
        {
            using var noGrad = no_grad();
            for (int i = 0; i < _parameters.Count; i++)
            {
                var name = _parameters[i].Name;
                if (!loaded.TryGetValue(name + ".exp_avg", out var avg) || !loaded.TryGetValue(name + ".exp_avg_sq", out var avgSq)
                    || !metadata.TryGetValue("step." + name, out var stepText))
                    throw new CheckpointException(path, $"optimizer state has no entry for parameter '{name}'");
                var parameterShape = _parameters[i].Parameter.shape;
                if (!avg.shape.SequenceEqual(parameterShape) || !avgSq.shape.SequenceEqual(parameterShape))
                    throw new CheckpointException(path, $"optimizer state of '{name}' has shape [{string.Join(", ", avg.shape)}], the parameter [{string.Join(", ", parameterShape)}]");
                var state = StateOf(i);
                state.ExpAvg.copy_(avg);
                state.ExpAvgSq.copy_(avgSq);
                state.Step = long.Parse(stepText, System.Globalization.CultureInfo.InvariantCulture);
            }
        }
        finally
        {
            foreach (var t in loaded.Values) t.Dispose();
        }
    }

    public void Dispose()
    {
        for (int i = 0; i < _states.Length; i++)
        {
            _states[i]?.ExpAvg.Dispose();
            _states[i]?.ExpAvgSq.Dispose();
            _states[i] = null;
        }
    }
}
