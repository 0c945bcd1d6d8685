using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>
/// A decoder-only language model: token ids in, hidden states / next-token logits out. One subclass per
/// architecture family (OPT, GPT-2, Llama), each in its own file, parameter names as in Hugging Face so
/// that state dicts load and save unchanged.
/// </summary>
public abstract class CausalLM : nn.Module
{
    protected CausalLM(string name, ModelConfig config) : base(name) => Config = config;

    public ModelConfig Config { get; }

    /// <summary>The checkpoint's generation_config.json (set by PretrainedModel.Load; written by PretrainedModel.Save).</summary>
    public Checkpoints.GenerationDefaults? GenerationDefaults { get; set; }

    /// <summary>
    /// Final hidden states [B, T, H_out] (after the final norm and any output projection) for
    /// <paramref name="inputIds"/> [B, T] int64 with <paramref name="attentionMask"/> [B, P + T]
    /// (1 = real token, 0 = padding; P = tokens already in <paramref name="cache"/>). Padding may be on either
    /// side; positions come from the mask (cumsum - 1), as Hugging Face computes them. When a cache is given,
    /// the new keys/values are appended to it.
    /// </summary>
    public abstract Tensor ForwardHidden(Tensor inputIds, Tensor attentionMask, KvCache? cache = null);

    /// <summary>The output embedding [V, H_out] (the input embedding where the family ties them).</summary>
    public abstract Tensor OutputWeight { get; }

    /// <summary>Next-token logits [B, T, V].</summary>
    public Tensor Logits(Tensor inputIds, Tensor attentionMask, KvCache? cache = null)
        => nn.functional.linear(ForwardHidden(inputIds, attentionMask, cache), OutputWeight);

    /// <summary>An empty key/value cache sized for this model's layers, holding <paramref name="reservedPositions"/>
    /// positions from its first append where the caller knows how many it will feed (0: grown as needed).</summary>
    public KvCache NewCache(long reservedPositions = 0) => new(Config.NumHiddenLayers, reservedPositions);

    /// <summary>The device the parameters live on.</summary>
    public Device Device => parameters().First().device;

    /// <summary>The floating-point type of the parameters.</summary>
    public ScalarType DType => parameters().First().dtype;
}
