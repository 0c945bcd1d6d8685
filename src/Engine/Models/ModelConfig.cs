using System.Text.Json.Nodes;

namespace WeakTeacher.Engine.Models;

/// <summary>Architecture family; one model file each.</summary>
public enum ModelFamily { Opt, Gpt2, Llama }

/// <summary>
/// RoPE frequency scaling (config.json <c>rope_scaling</c> in transformers 4.x, <c>rope_parameters</c> in 5.x).
/// <paramref name="Type"/>: "linear", "dynamic" or "llama3" ("default" is represented by no scaling at all).
/// </summary>
public sealed record RopeScaling(
    string Type,
    double Factor,
    double? LowFreqFactor = null,
    double? HighFreqFactor = null,
    int? OriginalMaxPositionEmbeddings = null);

/// <summary>
/// A model's configuration as Hugging Face's config.json states it, normalised across families.
/// (Parsing and writing live in ModelConfig.Json.cs.)
/// </summary>
public sealed partial record ModelConfig
{
    public required ModelFamily Family { get; init; }
    /// <summary>The config.json model_type as written ("opt", "gpt2", "llama", "mistral").</summary>
    public required string ModelType { get; init; }
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    /// <summary>Key/value heads (GQA); 0 means "as many as query heads".</summary>
    public int NumKeyValueHeads { get; init; }
    /// <summary>FFN inner size (OPT ffn_dim, GPT-2 n_inner, Llama intermediate_size); 0 means the family default.</summary>
    public int IntermediateSize { get; init; }
    public int MaxPositionEmbeddings { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = Array.Empty<int>();
    public int? PadTokenId { get; init; }
    public bool TieWordEmbeddings { get; init; }

    // ---- common ----
    /// <summary>Per-head size; 0 means hidden_size / num_attention_heads (Llama's head_dim may differ).</summary>
    public int HeadDim { get; init; }
    /// <summary>FFN activation (OPT/GPT-2 activation_function, Llama hidden_act): relu, gelu, gelu_new, silu, ...</summary>
    public string HiddenAct { get; init; } = "relu";
    /// <summary>Layer/RMS norm epsilon (GPT-2 layer_norm_epsilon, Llama rms_norm_eps; OPT uses LayerNorm's 1e-5).</summary>
    public double NormEps { get; init; } = 1e-5;
    /// <summary>Dropout on attention probabilities (OPT/Llama attention_dropout, GPT-2 attn_pdrop).</summary>
    public double AttentionDropout { get; init; }
    /// <summary>Dropout on each block's residual branch (OPT dropout, GPT-2 resid_pdrop).</summary>
    public double ResidDropout { get; init; }
    /// <summary>Dropout on the input embeddings (GPT-2 embd_pdrop).</summary>
    public double EmbeddingDropout { get; init; }
    /// <summary>Std of the normal init (OPT init_std, others initializer_range).</summary>
    public double InitializerRange { get; init; } = 0.02;
    /// <summary>config.json dtype / torch_dtype ("float32", "bfloat16", ...), when stated.</summary>
    public string? TorchDtype { get; init; }

    // ---- OPT ----
    public bool DoLayerNormBefore { get; init; } = true;
    /// <summary>Embedding width; differs from HiddenSize for OPT-350m (project_in / project_out). 0 = HiddenSize.</summary>
    public int WordEmbedProjDim { get; init; }
    /// <summary>OPT enable_bias: biases on attention and FFN projections.</summary>
    public bool EnableBias { get; init; } = true;
    public bool LayerNormElementwiseAffine { get; init; } = true;
    /// <summary>OPT _remove_final_layer_norm (pre-4.20 fine-tunes).</summary>
    public bool RemoveFinalLayerNorm { get; init; }

    // ---- GPT-2 ----
    public bool ScaleAttnWeights { get; init; } = true;
    public bool ScaleAttnByInverseLayerIdx { get; init; }
    public bool ReorderAndUpcastAttn { get; init; }

    // ---- Llama / Mistral ----
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    public bool AttentionBias { get; init; }
    public bool MlpBias { get; init; }

    /// <summary>
    /// The config.json this was read from, kept so that saving writes back the fields this type does not model.
    /// Never mutated; <see cref="ToJson"/> overlays the normalised fields on a copy.
    /// </summary>
    public JsonObject? Source { get; init; }

    public int ResolvedHeadDim => HeadDim > 0 ? HeadDim : HiddenSize / NumAttentionHeads;
    public int ResolvedNumKeyValueHeads => NumKeyValueHeads > 0 ? NumKeyValueHeads : NumAttentionHeads;
    public int ResolvedWordEmbedProjDim => WordEmbedProjDim > 0 ? WordEmbedProjDim : HiddenSize;
    public int ResolvedIntermediateSize => IntermediateSize > 0 ? IntermediateSize : Family switch
    {
        ModelFamily.Gpt2 => 4 * HiddenSize,
        ModelFamily.Opt => 4 * HiddenSize,
        _ => throw new InvalidOperationException("Llama configs need intermediate_size"),
    };
}
