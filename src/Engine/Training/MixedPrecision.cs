using TorchSharp;
using TorchSharp.Modules;
using WeakTeacher.CudaKernels;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>The numeric precision a trainer computes in (the config's <c>precision</c>).</summary>
public enum TrainingPrecision
{
    /// <summary>Everything in float32 (the default; bit-identical to the engine before mixed precision).</summary>
    Fp32,
    /// <summary>bfloat16 forward and backward, float32 master weights, gradients, optimizer state and loss (<see cref="MixedPrecision"/>).</summary>
    Bf16,
}

/// <summary>Names and compute dtypes of <see cref="TrainingPrecision"/>.</summary>
public static class TrainingPrecisions
{
    /// <summary>"fp32" / "bf16", as configs, the CLI and the proto spell it.</summary>
    public static string Name(this TrainingPrecision precision) => precision.ToString().ToLowerInvariant();

    public static IReadOnlyList<string> Names { get; } = Enum.GetValues<TrainingPrecision>().Select(Name).ToArray();

    /// <summary>The precision called <paramref name="name"/>, or null.</summary>
    public static TrainingPrecision? Parse(string name) =>
        Enum.GetValues<TrainingPrecision>().Where(p => p.Name() == name).Select(p => (TrainingPrecision?)p).FirstOrDefault();

    /// <summary>The dtype forward and backward run in.</summary>
    public static ScalarType ComputeType(this TrainingPrecision precision) =>
        precision == TrainingPrecision.Bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
}

/// <summary>
/// The standard mixed-precision recipe (Micikevicius et al. 2018, without loss scaling, which bfloat16's float32 range
/// makes unneeded), explicit and in this one place because TorchSharp has no autocast. With <see cref="TrainingPrecision.Bf16"/>:
/// float32 master copies of every floating parameter are taken and the model itself is cast to bfloat16, so forward and
/// backward run in bfloat16; the optimizer (AdamW state included) works on the trainable masters; after each
/// micro-batch's backward its bfloat16 gradients are added into the masters' float32 gradients (so accumulation and
/// clipping are float32); after each optimizer step the trainable masters are rounded into the model; at the end the
/// model is cast back to float32 and given the masters' values exactly. Log-prob and loss sums are float32 already
/// (<see cref="CudaKernels.FusedHeadLogProbs"/> returns float32). With <see cref="TrainingPrecision.Fp32"/> nothing
/// is copied or cast: the model's own parameters are the masters.
/// </summary>
internal sealed class MixedPrecision : IDisposable
{
    private readonly nn.Module _model;
    private readonly List<(string Name, Parameter Master)> _trainable = new();
    private readonly Dictionary<string, Tensor> _frozen = new(StringComparer.Ordinal);
    private bool _ended;

    private MixedPrecision(nn.Module model, TrainingPrecision precision)
    {
        _model = model;
        Precision = precision;
        var parameters = model.named_parameters().ToList();
        if (precision == TrainingPrecision.Fp32)
        {
            _trainable.AddRange(parameters.Where(p => p.parameter.requires_grad).Select(p => (p.name, p.parameter)));
            return;
        }
        if (parameters.Any(p => p.parameter.dtype != ScalarType.Float32))
            throw new ArgumentException($"precision {precision.Name()} needs a float32 model to take float32 master weights from; it is {parameters.First(p => p.parameter.dtype != ScalarType.Float32).parameter.dtype}");
        using (no_grad())
        {
            foreach (var (name, parameter) in parameters)
            {
                var copy = parameter.detach().clone().DetachFromDisposeScope();
                if (parameter.requires_grad) _trainable.Add((name, new Parameter(copy, requires_grad: true)));
                else _frozen[name] = copy;
            }
        }
        model.to(ComputeType);
    }

    /// <summary>Starts <paramref name="precision"/> on <paramref name="model"/> (float32, LoRA adapters already attached).</summary>
    public static MixedPrecision Begin(nn.Module model, TrainingPrecision precision) => new(model, precision);

    public TrainingPrecision Precision { get; }

    /// <summary>The dtype forward and backward run in.</summary>
    public ScalarType ComputeType => Precision.ComputeType();

    private bool Mixed => Precision != TrainingPrecision.Fp32;

    /// <summary>The float32 parameters the optimizer updates and checkpoints hold, by the model's names.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Trainable => _trainable;

    /// <summary>After a micro-batch's backward: its compute-dtype gradients are added into the masters' float32 ones
    /// and released in the model (the next backward allocates them anew).</summary>
    public void AccumulateGradients()
    {
        if (!Mixed) return;
        using var noGrad = no_grad();
        var compute = ModelParameters();
        foreach (var (name, master) in _trainable)
        {
            using var grad = compute[name].grad;
            if (grad is null) continue;
            using var masterGrad = master.grad;
            if (masterGrad is null)
            {
                // the wrapper is disposed here: the gradient lives in the master only, released with it by ZeroGrad
                using var grad32 = grad.to(ScalarType.Float32);
                master.grad = grad32;
            }
            else masterGrad.AddInPlace(grad);
            compute[name].grad = null;
        }
    }

    /// <summary>After an optimizer step (or a restore): the trainable masters rounded into the model's compute copies.</summary>
    public void CopyToModel()
    {
        if (!Mixed) return;
        using var noGrad = no_grad();
        var compute = ModelParameters();
        foreach (var (name, master) in _trainable) compute[name].copy_(master);
    }

    /// <summary>The model back in float32 with exactly the masters' values (also on failure, by <see cref="Dispose"/>).</summary>
    public void End()
    {
        if (!Mixed || _ended) return;
        _ended = true;
        _model.to(ScalarType.Float32);
        using var noGrad = no_grad();
        var model = ModelParameters();
        foreach (var (name, master) in _trainable) model[name].copy_(master);
        foreach (var (name, value) in _frozen) model[name].copy_(value);
    }

    private Dictionary<string, Parameter> ModelParameters() =>
        _model.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);

    public void Dispose()
    {
        End();
        if (!Mixed) return;
        foreach (var (_, master) in _trainable)
        {
            master.grad?.Dispose();
            master.Dispose();
        }
        foreach (var value in _frozen.Values) value.Dispose();
        _trainable.Clear();
        _frozen.Clear();
    }
}
