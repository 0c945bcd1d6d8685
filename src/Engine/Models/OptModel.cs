using TorchSharp;
using WeakTeacher.CudaKernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>
/// OPT (Zhang et al. 2022) as Hugging Face's OPTForCausalLM: learned positions offset by 2 and counted over real tokens,
/// pre-norm blocks (125m, 1.3b, ...) or post-norm blocks (350m, with project_in / project_out between the
/// word_embed_proj_dim embeddings and the hidden size), ReLU FFN, head tied to the token embeddings.
/// Parameter names: model.decoder.*.
/// </summary>
public sealed class OptModel : CausalLM
{
    private OptBase model;

    public OptModel(ModelConfig config) : base("OPTForCausalLM", config)
    {
        if (config.Family != ModelFamily.Opt) throw new ArgumentException($"not an OPT config: {config.ModelType}", nameof(config));
        model = new OptBase(config);
        RegisterComponents();
    }

    /// <summary>OPT always ties lm_head to embed_tokens (transformers' _tied_weights_keys).</summary>
    public override Tensor OutputWeight => model.decoder.embed_tokens.weight!;

    /// <summary>The decoder's modules (ModelBench's per-part profile of a decode step times them one by one).</summary>
    internal OptDecoder Decoder => model.decoder;

    public override Tensor ForwardHidden(Tensor inputIds, Tensor attentionMask, KvCache? cache = null)
        => model.decoder.Forward(inputIds, attentionMask, cache);
}

internal sealed class OptBase : nn.Module
{
    public OptDecoder decoder;

    public OptBase(ModelConfig config) : base("OPTModel")
    {
        decoder = new OptDecoder(config);
        RegisterComponents();
    }
}

internal sealed class OptDecoder : nn.Module
{
    private const int PositionOffset = 2; // fairseq reserved positions 0 and 1 for padding

    public Embedding embed_tokens;
    public Embedding embed_positions;
    public Projection? project_in;
    public Projection? project_out;
    public LayerNorm? final_layer_norm;
    public ModuleList<OptDecoderLayer> layers;

    public OptDecoder(ModelConfig config) : base("OPTDecoder")
    {
        int embedDim = config.ResolvedWordEmbedProjDim;
        embed_tokens = nn.Embedding(config.VocabSize, embedDim, padding_idx: config.PadTokenId);
        embed_positions = nn.Embedding(config.MaxPositionEmbeddings + PositionOffset, config.HiddenSize);
        if (embedDim != config.HiddenSize)
        {
            project_in = new Projection(embedDim, config.HiddenSize, hasBias: false);
            project_out = new Projection(config.HiddenSize, embedDim, hasBias: false);
        }
        if (config.DoLayerNormBefore && !config.RemoveFinalLayerNorm)
            final_layer_norm = nn.LayerNorm(config.HiddenSize, elementwise_affine: config.LayerNormElementwiseAffine);
        layers = nn.ModuleList(Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new OptDecoderLayer(config)).ToArray());
        RegisterComponents();
    }

    public Tensor Forward(Tensor inputIds, Tensor attentionMask, KvCache? cache)
    {
        using var scope = NewDisposeScope();
        long length = inputIds.shape[1];
        var positions = Attention.Positions(attentionMask, length).Add((long)PositionOffset);
        var hidden = embed_tokens.forward(inputIds);
        if (project_in is not null) hidden = project_in.forward(hidden);
        hidden = hidden.Add(embed_positions.forward(positions));
        var mask = Attention.CausalPaddingMask(attentionMask, length);
        for (int i = 0; i < layers.Count; i++) hidden = layers[i].Forward(hidden, mask, cache, i);
        if (final_layer_norm is not null) hidden = final_layer_norm.forward(hidden);
        if (project_out is not null) hidden = project_out.forward(hidden);
        return hidden.MoveToOuterDisposeScope();
    }
}

internal sealed class OptAttention : nn.Module
{
    public Projection q_proj, k_proj, v_proj, out_proj;
    // transformers keeps OPT's rates as floats; modules here so train()/eval() and disable_dropout reach them
    public Dropout attention_dropout;
    private readonly long _heads, _headDim;

    public OptAttention(ModelConfig config) : base("OPTAttention")
    {
        long h = config.HiddenSize;
        _heads = config.NumAttentionHeads;
        _headDim = h / _heads;
        attention_dropout = nn.Dropout(config.AttentionDropout);
        k_proj = new Projection(h, h, config.EnableBias);
        v_proj = new Projection(h, h, config.EnableBias);
        q_proj = new Projection(h, h, config.EnableBias);
        out_proj = new Projection(h, h, config.EnableBias);
        RegisterComponents();
    }

    public Tensor Forward(Tensor hidden, Tensor mask, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        var q = Attention.SplitHeads(q_proj.forward(hidden), _heads, _headDim);
        var k = Attention.SplitHeads(k_proj.forward(hidden), _heads, _headDim);
        var v = Attention.SplitHeads(v_proj.forward(hidden), _heads, _headDim);
        if (cache is not null) (k, v) = cache.Append(layer, k, v);
        var attended = Attention.ScaledDotProduct(q, k, v, mask, training ? attention_dropout.p : 0.0);
        return out_proj.forward(Attention.MergeHeads(attended)).MoveToOuterDisposeScope();
    }
}

internal sealed class OptDecoderLayer : nn.Module
{
    public OptAttention self_attn;
    public LayerNorm self_attn_layer_norm;
    public Projection fc1, fc2;
    public LayerNorm final_layer_norm;
    public Dropout dropout;
    private readonly bool _normBefore;
    private readonly string _activation;

    public OptDecoderLayer(ModelConfig config) : base("OPTDecoderLayer")
    {
        self_attn = new OptAttention(config);
        self_attn_layer_norm = nn.LayerNorm(config.HiddenSize, elementwise_affine: config.LayerNormElementwiseAffine);
        fc1 = new Projection(config.HiddenSize, config.ResolvedIntermediateSize, config.EnableBias);
        fc2 = new Projection(config.ResolvedIntermediateSize, config.HiddenSize, config.EnableBias);
        final_layer_norm = nn.LayerNorm(config.HiddenSize, elementwise_affine: config.LayerNormElementwiseAffine);
        _normBefore = config.DoLayerNormBefore;
        dropout = nn.Dropout(config.ResidDropout);
        _activation = config.HiddenAct;
        RegisterComponents();
    }

    public Tensor Forward(Tensor hidden, Tensor mask, KvCache? cache, int layer)
    {
        using var scope = NewDisposeScope();
        // attention block: 125m and up normalise before, 350m after
        var residual = hidden;
        if (_normBefore) hidden = self_attn_layer_norm.forward(hidden);
        hidden = self_attn.Forward(hidden, mask, cache, layer);
        hidden = residual.Add(dropout.forward(hidden));
        if (!_normBefore) hidden = self_attn_layer_norm.forward(hidden);

        // feed-forward block
        residual = hidden;
        if (_normBefore) hidden = final_layer_norm.forward(hidden);
        hidden = fc2.forward(Activations.Apply(_activation, fc1.forward(hidden)));
        hidden = residual.Add(dropout.forward(hidden));
        if (!_normBefore) hidden = final_layer_norm.forward(hidden);
        return hidden.MoveToOuterDisposeScope();
    }
}
