using System.Text.RegularExpressions;
using TorchSharp;
using TorchSharp.Modules;
using WeakTeacher.Engine.Checkpoints;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// AdamW over a model's trainable parameters (requires_grad), in two groups as transformers' Trainer builds them:
/// weight decay for weights, none for biases and normalisation parameters. The learning rate is set per step by
/// <see cref="LearningRateSchedule"/>; gradients are clipped by total norm. The optimizer state (exp_avg,
/// exp_avg_sq, step per parameter) is saved and restored by parameter name through safetensors.
/// </summary>
public sealed class TrainingOptimizer : IDisposable
{
    private static readonly Regex NoDecayName = new(@"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)|(?:^|\.)ln_", RegexOptions.Compiled);

    private readonly AdamW _adam;
    private readonly List<(string Name, Parameter Parameter)> _parameters;

    private TrainingOptimizer(AdamW adam, List<(string, Parameter)> parameters, IReadOnlySet<string> noDecay)
    {
        _adam = adam;
        _parameters = parameters;
        NoDecayParameters = noDecay;
    }

    /// <summary>The optimised parameters, by name, in the optimizer's order.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Parameters => _parameters;

    /// <summary>Names of the parameters without weight decay (biases, norms).</summary>
    public IReadOnlySet<string> NoDecayParameters { get; }

    /// <summary>AdamW over the trainable parameters of <paramref name="model"/>.</summary>
    public static TrainingOptimizer Create(nn.Module model, TrainingConfig config)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        var noDecayModules = model.named_modules()
            .Where(m => m.module is LayerNorm || m.module.GetType().Name.Contains("Norm", StringComparison.Ordinal))
            .Select(m => m.name + ".")
            .ToList();
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("the model has no trainable parameters (requires_grad is false everywhere)");
        var decay = new List<Parameter>();
        var none = new List<Parameter>();
        var noDecayNames = new HashSet<string>(StringComparer.Ordinal);
        var ordered = new List<(string, Parameter)>();
        foreach (var (name, parameter) in trainable)
        {
            bool noDecay = NoDecayName.IsMatch(name.ToLowerInvariant()) || noDecayModules.Any(prefix => name.StartsWith(prefix, StringComparison.Ordinal));
            (noDecay ? none : decay).Add(parameter);
            if (noDecay) noDecayNames.Add(name);
        }
        // the optimizer's order: decay group first, then the no-decay group (state is keyed by name, not position)
        ordered.AddRange(trainable.Where(p => !noDecayNames.Contains(p.name)));
        ordered.AddRange(trainable.Where(p => noDecayNames.Contains(p.name)));
        var groups = new List<AdamW.ParamGroup>();
        if (decay.Count > 0) groups.Add(new AdamW.ParamGroup(decay, new AdamW.Options { weight_decay = config.WeightDecay }));
        if (none.Count > 0) groups.Add(new AdamW.ParamGroup(none, new AdamW.Options { weight_decay = 0.0 }));
        var adam = torch.optim.AdamW(groups, lr: config.LearningRate, beta1: config.AdamBeta1, beta2: config.AdamBeta2, eps: config.AdamEpsilon);
        return new TrainingOptimizer(adam, ordered, noDecayNames);
    }

    /// <summary>Sets the learning rate of every group (the schedule is computed by the trainer).</summary>
    public void SetLearningRate(double learningRate)
    {
        foreach (var group in _adam.ParamGroups) group.LearningRate = learningRate;
    }

    /// <summary>Gradients to zero (kept allocated, as accumulation adds into them).</summary>
    public void ZeroGrad() => _adam.zero_grad();

    public void Step() => _adam.step();

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
        var norms = grads.Select(g => linalg.vector_norm(g.to(ScalarType.Float32), 2)).ToArray();
        var total = linalg.vector_norm(stack(norms), 2);
        double value = total.item<float>();
        if (maxNorm > 0)
        {
            var coefficient = (maxNorm / (total + 1e-6)).clamp(max: 1.0);
            foreach (var g in grads) g.mul_(coefficient.to(g.dtype));
        }
        return value;
    }

    /// <summary>exp_avg / exp_avg_sq per parameter as "name.exp_avg" / "name.exp_avg_sq", and the AdamW step count per name.</summary>
    public (Dictionary<string, Tensor> Tensors, Dictionary<string, long> Steps) StateTensors()
    {
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var steps = new Dictionary<string, long>(StringComparer.Ordinal);
        var states = OrderedStates();
        for (int i = 0; i < _parameters.Count; i++)
        {
            var (name, _) = _parameters[i];
            tensors[name + ".exp_avg"] = states[i].exp_avg;
            tensors[name + ".exp_avg_sq"] = states[i].exp_avg_sq;
            steps[name] = states[i].step;
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
            var states = OrderedStates();
            using var noGrad = no_grad();
            for (int i = 0; i < _parameters.Count; i++)
            {
                var name = _parameters[i].Name;
                if (!loaded.TryGetValue(name + ".exp_avg", out var avg) || !loaded.TryGetValue(name + ".exp_avg_sq", out var avgSq)
                    || !metadata.TryGetValue("step." + name, out var stepText))
                    throw new CheckpointException(path, $"optimizer state has no entry for parameter '{name}'");
                if (!avg.shape.SequenceEqual(states[i].exp_avg.shape))
                    throw new CheckpointException(path, $"optimizer state of '{name}' has shape [{string.Join(", ", avg.shape)}], the parameter [{string.Join(", ", states[i].exp_avg.shape)}]");
                states[i].exp_avg.copy_(avg);
                states[i].exp_avg_sq.copy_(avgSq);
                states[i].step = long.Parse(stepText, System.Globalization.CultureInfo.InvariantCulture);
            }
        }
        finally
        {
            foreach (var t in loaded.Values) t.Dispose();
        }
    }

    private List<AdamW.State> OrderedStates()
    {
        // state_dict() lists the states group by group in parameter order, which is the order of _parameters
        var states = _adam.state_dict().State.Cast<AdamW.State>().ToList();
        if (states.Count != _parameters.Count) throw new InvalidOperationException("optimizer state count differs from the parameter count");
        return states;
    }

    public void Dispose() => _adam.Dispose();
}
