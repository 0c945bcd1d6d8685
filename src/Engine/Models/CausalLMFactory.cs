using TorchSharp;
using WeakTeacher.CudaKernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>Builds the model class of a config's family.</summary>
public static class CausalLMFactory
{
    /// <summary>
    /// A randomly initialised model, initialised as Hugging Face initialises it (weights ~ normal(0, initializer_range),
    /// biases 0, norms 1, embedding padding row 0; GPT-2's c_proj weights with std / sqrt(2 n_layer)), in eval mode.
    /// Initialisation runs on the CPU with a generator seeded by <paramref name="seed"/>, so a seed gives the same
    /// weights on every device; the model is then moved to <paramref name="device"/> / cast to <paramref name="dtype"/>.
    /// </summary>
    public static CausalLM Create(ModelConfig config, Device? device = null, ScalarType? dtype = null, long? seed = null)
    {
        var model = Construct(config);
        try
        {
            var generator = new Generator((ulong)(seed ?? Random.Shared.NextInt64()));
            InitialiseAsHuggingFace(model, generator);
            MoveTo(model, device, dtype);
            model.eval();
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The family's model with TorchSharp's default init (to be overwritten by a checkpoint), on the CPU in fp32.</summary>
    internal static CausalLM Construct(ModelConfig config) => config.Family switch
    {
        ModelFamily.Opt => new OptModel(config),
        ModelFamily.Gpt2 => new Gpt2Model(config),
        ModelFamily.Llama => new LlamaModel(config),
        _ => throw new ArgumentOutOfRangeException(nameof(config), config.Family, "unknown model family"),
    };

    internal static void MoveTo(CausalLM model, Device? device, ScalarType? dtype)
    {
        if (dtype is ScalarType t && t != model.DType) model.to(t);
        if (device is not null && (device.type != model.Device.type || device.index != model.Device.index)) model.to(device);
    }

    private static void InitialiseAsHuggingFace(CausalLM model, Generator generator)
    {
        var config = model.Config;
        double std = config.InitializerRange;
        using var noGrad = no_grad();
        foreach (var (name, module) in model.named_modules())
        {
            switch (module)
            {
                case Projection projection:
                    // GPT-2 scales residual projections by 1/sqrt(2 n_layer) (GPT2PreTrainedModel._init_weights)
                    double projectionStd = config.Family == ModelFamily.Gpt2 && name.EndsWith("c_proj", StringComparison.Ordinal)
                        ? std / Math.Sqrt(2.0 * config.NumHiddenLayers) : std;
                    projection.weight.normal_(0, projectionStd, generator);
                    projection.bias?.zero_();
                    break;
                case Embedding embedding:
                    embedding.weight!.normal_(0, std, generator);
                    break;
                case LayerNorm norm:
                    norm.weight?.FillInPlace(1.0);
                    norm.bias?.zero_();
                    break;
                case RMSNorm rms:
                    rms.weight.FillInPlace(1.0);
                    break;
            }
        }
        // the token embedding's padding row starts at zero (nn.Embedding padding_idx) for OPT and Llama
        if (config.Family != ModelFamily.Gpt2 && config.PadTokenId is int pad && pad >= 0 && pad < config.VocabSize)
        {
            var embedName = config.Family == ModelFamily.Opt ? "model.decoder.embed_tokens.weight" : "model.embed_tokens.weight";
            var embed = model.named_parameters().First(p => p.name == embedName).parameter;
            embed[pad].zero_();
        }
    }
}
