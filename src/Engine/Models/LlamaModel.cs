using TorchSharp;
using WeakTeacher.CudaKernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>
/// Llama (Touvron et al. 2023; also Llama-3 and Mistral without sliding window) as Hugging Face's LlamaForCausalLM:
/// RMSNorm pre-norm blocks, rotary position embeddings (rope_theta, llama3/linear/dynamic scaling), grouped-query
/// attention, SwiGLU FFN, untied (lm_head) or tied head. Parameter names: model.*, lm_head.weight.
/// </summary>
public sealed class LlamaModel : CausalLM
{
    private LlamaBase model;
    private Projection? lm_head;

    public LlamaModel(ModelConfig config) : base("LlamaForCausalLM", config)
    {
        if (config.Family != ModelFamily.Llama) throw new ArgumentException($"not a Llama config: {config.ModelType}", nameof(config));
        model = new LlamaBase(config);
        if (!config.TieWordEmbeddings) lm_head = new Projection(config.HiddenSize, config.VocabSize, hasBias: false);
        RegisterComponents();
    }

    public override Tensor OutputWeight => lm_head is null ? model.embed_tokens.weight! : lm_head.weight;

    public override Tensor ForwardHidden(Tensor inputIds, Tensor attentionMask, KvCache? cache = null)
        => model.Forward(inputIds, attentionMask, cache);
}

/// <summary>Rotary position embeddings as transformers' modeling_rope_utils computes their frequencies.</summary>
public static class Rope
{
    /// <summary>
    /// Inverse frequencies [head_dim / 2]: 1 / theta^(2i / d), then the config's scaling ("linear": / factor;
    /// "dynamic": NTK-scaled theta once <paramref name="sequenceLength"/> exceeds the trained length; "llama3":
    /// low frequencies / factor, high kept, a smooth blend between).
    /// </summary>
    public static double[] InverseFrequencies(ModelConfig config, long sequenceLength = 0)
    {
        int dim = config.ResolvedHeadDim;
        double theta = config.RopeTheta;
        var scaling = config.RopeScaling;
        if (scaling is { Type: "dynamic" })
        {
            long trained = scaling.OriginalMaxPositionEmbeddings ?? config.MaxPositionEmbeddings;
            long length = Math.Max(sequenceLength, trained);
            theta *= Math.Pow(scaling.Factor * length / trained - (scaling.Factor - 1), dim / (dim - 2.0));
        }
        var inv = new double[dim / 2];
        for (int i = 0; i < inv.Length; i++) inv[i] = 1.0 / Math.Pow(theta, 2.0 * i / dim);
        if (scaling is { Type: "linear" })
            for (int i = 0; i < inv.Length; i++) inv[i] /= scaling.Factor;
        else if (scaling is { Type: "llama3" })
        {
            double factor = scaling.Factor, low = scaling.LowFreqFactor!.Value, high = scaling.HighFreqFactor!.Value;
            double oldContext = scaling.OriginalMaxPositionEmbeddings!.Value;
            double lowFreqWavelen = oldContext / low, highFreqWavelen = oldContext / high;
            for (int i = 0; i < inv.Length; i++)
            {
                double wavelen = 2 * Math.PI / inv[i];
                if (wavelen > lowFreqWavelen) inv[i] /= factor;             // long wavelengths: interpolate
                else if (wavelen >= highFreqWavelen)                       // medium: blend
                {
                    double smooth = (oldContext / wavelen - low) / (high - low);
                    inv[i] = (1 - smooth) * inv[i] / factor + smooth * inv[i];
                }
            }
        }
        return inv;
    }

    /// <summary>cos and sin [B, 1, T, D] for positions [B, T], in <paramref name="dtype"/> (computed in fp32 as HF does).</summary>
    public static (Tensor Cos, Tensor Sin) CosSin(ModelConfig config, Tensor positions, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        long length = config.RopeScaling is { Type: "dynamic" } ? positions.max().item<long>() + 1 : 0;
        var invFreq = tensor(InverseFrequencies(config, length), float64, positions.device).to(float32);
        var freqs = positions.to(float32).unsqueeze(-1) * invFreq;       // [B, T, D/2]
        var angles = cat(new[] { freqs, freqs }, -1).unsqueeze(1);         // [B, 1, T, D]
        return (angles.cos().to(dtype).MoveToOuterDisposeScope(), angles.sin().to(dtype).MoveToOuterDisposeScope());
    }

    /// <summary>x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1) over the two halves of the head.</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = cat(new[] { x2.neg(), x1 }, -1);
        return (x * cos).Add(rotated * sin).MoveToOuterDisposeScope();
    }
}

/// <summary>RMSNorm: x / sqrt(mean(x^2) + eps) * weight, normalised in fp32 as LlamaRMSNorm does.</summary>
public sealed class RMSNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    private readonly double _eps;

    public RMSNorm(long size, double eps) : base("LlamaRMSNorm")
    {
        weight = new Parameter(ones(size));
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var x32 = x.to(float32);
        var normalised = x32 * x32.Square().mean(new long[] { -1 }, keepdim: true).Add(_eps).rsqrt();
        return (weight * normalised.to(x.dtype)).MoveToOuterDisposeScope();
    }
}

internal sealed class LlamaBase : nn.Module
{
    public Embedding embed_tokens;
    public ModuleList<LlamaDecoderLayer> layers;
    public RMSNorm norm;
    private readonly ModelConfig _config;

    public LlamaBase(ModelConfig config) : base("LlamaModel")
    {
        _config = config;
        embed_tokens = nn.Embedding(config.VocabSize, config.HiddenSize, padding_idx: config.PadTokenId);
        layers = nn.ModuleList(Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new LlamaDecoderLayer(config)).ToArray());
        norm = new RMSNorm(config.HiddenSize, config.NormEps);
        RegisterComponents();
    }

    public Tensor Forward(Tensor inputIds, Tensor attentionMask, KvCache? cache)
    {
        using var scope = NewDisposeScope();
        long length = inputIds.shape[1];
        var hidden = embed_tokens.forward(inputIds);
        var (cos, sin) = Rope.CosSin(_config, Attention.Positions(attentionMask, length), hidden.dtype);
        var mask = Attention.CausalPaddingMask(attentionMask, length);
        for (int i = 0; i < layers.Count; i++) hidden = layers[i].Forward(hidden, mask, cos, sin, cache, i);
        return norm.forward(hidden).MoveToOuterDisposeScope();
    }
}

internal sealed class LlamaAttention : nn.Module
{
    public Projection q_proj, k_proj, v_proj, o_proj;
    public Dropout attention_dropout;
    private readonly long _heads, _kvHeads, _headDim;

    public LlamaAttention(ModelConfig config) : base("LlamaAttention")
    {
        _heads = config.NumAttentionHeads;
        _kvHeads = config.ResolvedNumKeyValueHeads;
        _headDim = config.ResolvedHeadDim;
        attention_dropout = nn.Dropout(config.AttentionDropout);
        q_proj = new Projection(config.HiddenSize, _heads * _headDim, config.AttentionBias);
        k_proj = new Projection(config.HiddenSize, _kvHeads * _headDim, config.AttentionBias);
        v_proj = new Projection(config.HiddenSize, _kvHeads * _headDim, config.AttentionBias);
        o_proj = new Projection(_heads * _headDim, config.HiddenSize, config.AttentionBias);
        RegisterComponents();
    }

    public Tensor Forward(Tensor hidden, Tensor mask, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        var q = Rope.Apply(Attention.SplitHeads(q_proj.forward(hidden), _heads, _headDim), cos, sin);
        var k = Rope.Apply(Attention.SplitHeads(k_proj.forward(hidden), _kvHeads, _headDim), cos, sin);
        var v = Attention.SplitHeads(v_proj.forward(hidden), _kvHeads, _headDim);
        if (cache is not null) (k, v) = cache.Append(layer, k, v);
        var attended = Attention.ScaledDotProduct(q, k, v, mask, training ? attention_dropout.p : 0.0);
        return o_proj.forward(Attention.MergeHeads(attended)).MoveToOuterDisposeScope();
    }
}

internal sealed class LlamaMlp : nn.Module
{
    public Projection gate_proj, up_proj, down_proj;
    private readonly string _activation;

    public LlamaMlp(ModelConfig config) : base("LlamaMLP")
    {
        gate_proj = new Projection(config.HiddenSize, config.IntermediateSize, config.MlpBias);
        up_proj = new Projection(config.HiddenSize, config.IntermediateSize, config.MlpBias);
        down_proj = new Projection(config.IntermediateSize, config.HiddenSize, config.MlpBias);
        _activation = config.HiddenAct;
        RegisterComponents();
    }

    public Tensor Forward(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        var gated = Activations.Apply(_activation, gate_proj.forward(hidden)) * up_proj.forward(hidden);
        return down_proj.forward(gated).MoveToOuterDisposeScope();
    }
}

internal sealed class LlamaDecoderLayer : nn.Module
{
    public LlamaAttention self_attn;
    public LlamaMlp mlp;
    public RMSNorm input_layernorm, post_attention_layernorm;

    public LlamaDecoderLayer(ModelConfig config) : base("LlamaDecoderLayer")
    {
        self_attn = new LlamaAttention(config);
        mlp = new LlamaMlp(config);
        input_layernorm = new RMSNorm(config.HiddenSize, config.NormEps);
        post_attention_layernorm = new RMSNorm(config.HiddenSize, config.NormEps);
        RegisterComponents();
    }

    public Tensor Forward(Tensor hidden, Tensor mask, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        hidden = hidden.Add(self_attn.Forward(input_layernorm.forward(hidden), mask, cos, sin, cache, layer));
        hidden = hidden.Add(mlp.Forward(post_attention_layernorm.forward(hidden)));
        return hidden.MoveToOuterDisposeScope();
    }
}
