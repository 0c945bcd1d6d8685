using TorchSharp;
using WeakTeacher.CudaKernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>
/// GPT-2 (Radford et al. 2019) as Hugging Face's GPT2LMHeadModel: learned absolute positions, pre-norm blocks,
/// fused q/k/v projection c_attn, Conv1D weights stored [in, out], gelu_new (tanh approximation) FFN, head tied to wte.
/// Parameter names: transformer.*.
/// </summary>
public sealed class Gpt2Model : CausalLM
{
    private Gpt2Transformer transformer;

    public Gpt2Model(ModelConfig config) : base("GPT2LMHeadModel", config)
    {
        if (config.Family != ModelFamily.Gpt2) throw new ArgumentException($"not a GPT-2 config: {config.ModelType}", nameof(config));
        transformer = new Gpt2Transformer(config);
        RegisterComponents();
    }

    /// <summary>GPT-2 always ties lm_head to wte.</summary>
    public override Tensor OutputWeight => transformer.wte.weight!;

    public override Tensor ForwardHidden(Tensor inputIds, Tensor attentionMask, KvCache? cache = null)
        => transformer.Forward(inputIds, attentionMask, cache);
}

internal sealed class Gpt2Transformer : nn.Module
{
    public Embedding wte, wpe;
    public ModuleList<Gpt2Block> h;
    public LayerNorm ln_f;
    public Dropout drop;

    public Gpt2Transformer(ModelConfig config) : base("GPT2Model")
    {
        wte = nn.Embedding(config.VocabSize, config.HiddenSize);
        wpe = nn.Embedding(config.MaxPositionEmbeddings, config.HiddenSize);
        h = nn.ModuleList(Enumerable.Range(0, config.NumHiddenLayers).Select(i => new Gpt2Block(config, i)).ToArray());
        ln_f = nn.LayerNorm(config.HiddenSize, config.NormEps);
        drop = nn.Dropout(config.EmbeddingDropout);
        RegisterComponents();
    }

    public Tensor Forward(Tensor inputIds, Tensor attentionMask, KvCache? cache)
    {
        using var scope = NewDisposeScope();
        long length = inputIds.shape[1];
        var positions = Attention.Positions(attentionMask, length);
        var hidden = wte.forward(inputIds).Add(wpe.forward(positions));
        hidden = drop.forward(hidden);
        var mask = Attention.CausalPaddingMask(attentionMask, length);
        for (int i = 0; i < h.Count; i++) hidden = h[i].Forward(hidden, mask, cache, i);
        return ln_f.forward(hidden).MoveToOuterDisposeScope();
    }
}

internal sealed class Gpt2Attention : nn.Module
{
    public Projection c_attn, c_proj;
    private readonly long _embed, _heads, _headDim;
    public Dropout attn_dropout, resid_dropout;
    /// <summary>Extra factor on q so that SDPA's 1/sqrt(D) becomes GPT-2's configured scaling.</summary>
    private readonly double _queryScale;
    private readonly bool _upcast;

    public Gpt2Attention(ModelConfig config, int layerIndex) : base("GPT2Attention")
    {
        _embed = config.HiddenSize;
        _heads = config.NumAttentionHeads;
        _headDim = _embed / _heads;
        c_attn = new Projection(_embed, 3 * _embed, hasBias: true, fanInFanOut: true);
        c_proj = new Projection(_embed, _embed, hasBias: true, fanInFanOut: true);
        attn_dropout = nn.Dropout(config.AttentionDropout);
        resid_dropout = nn.Dropout(config.ResidDropout);
        double scale = 1.0;
        if (!config.ScaleAttnWeights) scale *= Math.Sqrt(_headDim);
        if (config.ScaleAttnByInverseLayerIdx) scale /= layerIndex + 1;
        _queryScale = scale;
        _upcast = config.ReorderAndUpcastAttn;
        RegisterComponents();
    }

    public Tensor Forward(Tensor hidden, Tensor mask, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        var qkv = c_attn.forward(hidden).split(new[] { _embed, _embed, _embed }, 2);
        var q = Attention.SplitHeads(qkv[0], _heads, _headDim);
        var k = Attention.SplitHeads(qkv[1], _heads, _headDim);
        var v = Attention.SplitHeads(qkv[2], _heads, _headDim);
        if (cache is not null) (k, v) = cache.Append(layer, k, v);
        if (_queryScale != 1.0) q = q.Mul(_queryScale);
        var dtype = q.dtype;
        // reorder_and_upcast_attn: scores and softmax in fp32 for stability of half-precision training
        var attended = _upcast && dtype != float32
            ? Attention.ScaledDotProduct(q.to(float32), k.to(float32), v.to(float32), mask, training ? attn_dropout.p : 0.0).to(dtype)
            : Attention.ScaledDotProduct(q, k, v, mask, training ? attn_dropout.p : 0.0);
        var output = c_proj.forward(Attention.MergeHeads(attended));
        return resid_dropout.forward(output).MoveToOuterDisposeScope();
    }
}

internal sealed class Gpt2Mlp : nn.Module
{
    public Projection c_fc, c_proj;
    public Dropout dropout;
    private readonly string _activation;

    public Gpt2Mlp(ModelConfig config) : base("GPT2MLP")
    {
        c_fc = new Projection(config.HiddenSize, config.ResolvedIntermediateSize, hasBias: true, fanInFanOut: true);
        c_proj = new Projection(config.ResolvedIntermediateSize, config.HiddenSize, hasBias: true, fanInFanOut: true);
        _activation = config.HiddenAct;
        dropout = nn.Dropout(config.ResidDropout);
        RegisterComponents();
    }

    public Tensor Forward(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        var output = c_proj.forward(Activations.Apply(_activation, c_fc.forward(hidden)));
        return dropout.forward(output).MoveToOuterDisposeScope();
    }
}

internal sealed class Gpt2Block : nn.Module
{
    public LayerNorm ln_1, ln_2;
    public Gpt2Attention attn;
    public Gpt2Mlp mlp;

    public Gpt2Block(ModelConfig config, int layerIndex) : base("GPT2Block")
    {
        ln_1 = nn.LayerNorm(config.HiddenSize, config.NormEps);
        attn = new Gpt2Attention(config, layerIndex);
        ln_2 = nn.LayerNorm(config.HiddenSize, config.NormEps);
        mlp = new Gpt2Mlp(config);
        RegisterComponents();
    }

    public Tensor Forward(Tensor hidden, Tensor mask, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        hidden = hidden.Add(attn.Forward(ln_1.forward(hidden), mask, cache, layer));
        hidden = hidden.Add(mlp.Forward(ln_2.forward(hidden)));
        return hidden.MoveToOuterDisposeScope();
    }
}
