using WeakTeacher.Engine.Checkpoints;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace WeakTeacher.Engine.Models;

/// <summary>The FFN activations config.json names, as transformers' ACT2FN defines them.</summary>
internal static class Activations
{
    private static readonly string[] Known = { "relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "silu", "swish" };

    public static void Check(string name, string path)
    {
        if (!Known.Contains(name))
            throw new CheckpointException(path, $"unsupported activation '{name}' (supported: {string.Join(", ", Known)})");
    }

    public static Tensor Apply(string name, Tensor x) => name switch
    {
        "relu" => functional.relu(x),
        "gelu" => functional.gelu(x),
        // gelu_new / gelu_pytorch_tanh / gelu_fast: the tanh approximation 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => functional.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        "silu" or "swish" => functional.silu(x),
        _ => throw new NotSupportedException($"activation '{name}'"),
    };
}
