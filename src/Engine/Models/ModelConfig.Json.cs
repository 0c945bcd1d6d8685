using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using WeakTeacher.Engine.Checkpoints;

namespace WeakTeacher.Engine.Models;

// Reading and writing config.json as transformers 4.x and 5.x write it.
public sealed partial record ModelConfig
{
    /// <summary>
    /// Reads a config.json (or the config.json inside a checkpoint folder). Accepts transformers 4.x fields
    /// (top-level rope_theta, rope_scaling, torch_dtype) and 5.x fields (rope_parameters, dtype); model_type
    /// opt, gpt2, llama, mistral.
    /// </summary>
    /// <exception cref="CheckpointException">the file is missing, is not JSON, or lacks / mistypes a field.</exception>
    /// <exception cref="NotSupportedException">a feature the engine does not implement (sliding window, yarn RoPE).</exception>
    public static ModelConfig Load(string path)
    {
        if (Directory.Exists(path)) path = System.IO.Path.Combine(path, "config.json");
        if (!File.Exists(path)) throw new CheckpointException(path, "config.json not found");
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(File.ReadAllText(path),
                documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new CheckpointException(path, $"malformed JSON: {e.Message}", e);
        }
        if (node is not JsonObject obj) throw new CheckpointException(path, "expected a JSON object at the top level");
        return FromJson(obj, path);
    }

    /// <summary>Parses a config.json object; <paramref name="path"/> is only used in error messages.</summary>
    public static ModelConfig FromJson(JsonObject json, string path = "config.json")
    {
        var r = new FieldReader(json, path);
        string modelType = r.String("model_type") ?? throw new CheckpointException(path, "missing required field 'model_type'");
        ModelConfig config = modelType switch
        {
            "opt" => ParseOpt(r),
            "gpt2" => ParseGpt2(r),
            "llama" or "mistral" => ParseLlama(r, modelType),
            _ => throw new CheckpointException(path,
                $"unknown model_type '{modelType}' (supported: opt, gpt2, llama, mistral)"),
        };
        config = config with
        {
            BosTokenId = r.Int("bos_token_id"),
            PadTokenId = r.Int("pad_token_id"),
            EosTokenIds = r.IntOrList("eos_token_id"),
            TorchDtype = r.String("dtype") ?? r.String("torch_dtype"),
            Source = (JsonObject)json.DeepClone(),
        };
        if (config.NumAttentionHeads <= 0 || config.HiddenSize <= 0 || config.VocabSize <= 0 || config.NumHiddenLayers <= 0)
            throw new CheckpointException(path, "vocab_size, hidden size, layer count and head count must be positive");
        if (config.HiddenSize % config.NumAttentionHeads != 0 && config.Family != ModelFamily.Llama)
            throw new CheckpointException(path,
                $"hidden size {config.HiddenSize} is not divisible by num_attention_heads {config.NumAttentionHeads}");
        if (config.NumAttentionHeads % config.ResolvedNumKeyValueHeads != 0)
            throw new CheckpointException(path,
                $"num_attention_heads {config.NumAttentionHeads} is not a multiple of num_key_value_heads {config.ResolvedNumKeyValueHeads}");
        Activations.Check(config.HiddenAct, path);
        return config;
    }

    private static ModelConfig ParseOpt(FieldReader r)
    {
        int hidden = r.RequiredInt("hidden_size");
        return new ModelConfig
        {
            Family = ModelFamily.Opt,
            ModelType = "opt",
            VocabSize = r.RequiredInt("vocab_size"),
            HiddenSize = hidden,
            NumHiddenLayers = r.RequiredInt("num_hidden_layers"),
            NumAttentionHeads = r.RequiredInt("num_attention_heads"),
            IntermediateSize = r.RequiredInt("ffn_dim"),
            MaxPositionEmbeddings = r.Int("max_position_embeddings") ?? 2048,
            TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? true,
            HiddenAct = r.String("activation_function") ?? "relu",
            NormEps = 1e-5,
            AttentionDropout = r.Double("attention_dropout") ?? 0.0,
            ResidDropout = r.Double("dropout") ?? 0.1,
            InitializerRange = r.Double("init_std") ?? 0.02,
            DoLayerNormBefore = r.Bool("do_layer_norm_before") ?? true,
            WordEmbedProjDim = r.Int("word_embed_proj_dim") ?? hidden,
            EnableBias = r.Bool("enable_bias") ?? true,
            LayerNormElementwiseAffine = r.Bool("layer_norm_elementwise_affine") ?? true,
            RemoveFinalLayerNorm = r.Bool("_remove_final_layer_norm") ?? false,
        };
    }

    private static ModelConfig ParseGpt2(FieldReader r) => new()
    {
        Family = ModelFamily.Gpt2,
        ModelType = "gpt2",
        VocabSize = r.RequiredInt("vocab_size"),
        HiddenSize = r.RequiredInt("n_embd", "hidden_size"),
        NumHiddenLayers = r.RequiredInt("n_layer", "num_hidden_layers"),
        NumAttentionHeads = r.RequiredInt("n_head", "num_attention_heads"),
        IntermediateSize = r.Int("n_inner") ?? 0,
        MaxPositionEmbeddings = r.Int("n_positions") ?? r.Int("max_position_embeddings") ?? 1024,
        TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? true,
        HiddenAct = r.String("activation_function") ?? "gelu_new",
        NormEps = r.Double("layer_norm_epsilon") ?? 1e-5,
        AttentionDropout = r.Double("attn_pdrop") ?? 0.1,
        ResidDropout = r.Double("resid_pdrop") ?? 0.1,
        EmbeddingDropout = r.Double("embd_pdrop") ?? 0.1,
        InitializerRange = r.Double("initializer_range") ?? 0.02,
        ScaleAttnWeights = r.Bool("scale_attn_weights") ?? true,
        ScaleAttnByInverseLayerIdx = r.Bool("scale_attn_by_inverse_layer_idx") ?? false,
        ReorderAndUpcastAttn = r.Bool("reorder_and_upcast_attn") ?? false,
    };

    private static ModelConfig ParseLlama(FieldReader r, string modelType)
    {
        int maxPositions = r.Int("max_position_embeddings") ?? (modelType == "mistral" ? 4096 * 32 : 2048);
        if (modelType == "mistral" && r.Int("sliding_window") is int window && window < maxPositions)
            throw new NotSupportedException(
                $"{r.Path}: sliding_window {window} < max_position_embeddings {maxPositions}; sliding-window attention is not implemented " +
                "(set sliding_window to null to use full causal attention)");

        // 5.x: rope_parameters {"rope_theta", "rope_type", "factor", ...}; 4.x: top-level rope_theta + rope_scaling {...}
        JsonObject? ropeParameters = r.Object("rope_parameters");
        JsonObject? ropeScaling = r.Object("rope_scaling");
        double theta = (ropeParameters is null ? null : new FieldReader(ropeParameters, r.Path + " rope_parameters").Double("rope_theta"))
                       ?? r.Double("rope_theta") ?? 10000.0;
        JsonObject? scalingJson = ropeParameters ?? ropeScaling;
        RopeScaling? scaling = scalingJson is null ? null : ParseRopeScaling(new FieldReader(scalingJson, r.Path + " rope scaling"));

        int hidden = r.RequiredInt("hidden_size"), heads = r.RequiredInt("num_attention_heads");
        if (heads <= 0) throw new CheckpointException(r.Path, $"num_attention_heads must be positive, got {heads}");
        return new ModelConfig
        {
            Family = ModelFamily.Llama,
            ModelType = modelType,
            VocabSize = r.RequiredInt("vocab_size"),
            HiddenSize = hidden,
            NumHiddenLayers = r.RequiredInt("num_hidden_layers"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = r.Int("num_key_value_heads") ?? heads,
            IntermediateSize = r.RequiredInt("intermediate_size"),
            MaxPositionEmbeddings = maxPositions,
            HeadDim = r.Int("head_dim") ?? hidden / heads,
            TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? false,
            HiddenAct = r.String("hidden_act") ?? "silu",
            NormEps = r.Double("rms_norm_eps") ?? 1e-6,
            AttentionDropout = r.Double("attention_dropout") ?? 0.0,
            InitializerRange = r.Double("initializer_range") ?? 0.02,
            RopeTheta = theta,
            RopeScaling = scaling,
            AttentionBias = r.Bool("attention_bias") ?? false,
            MlpBias = r.Bool("mlp_bias") ?? false,
        };
    }

    private static RopeScaling? ParseRopeScaling(FieldReader s)
    {
        string type = s.String("rope_type") ?? s.String("type") ?? "default";
        switch (type)
        {
            case "default":
                return null;
            case "linear":
            case "dynamic":
                return new RopeScaling(type, s.RequiredDouble("factor"),
                    OriginalMaxPositionEmbeddings: s.Int("original_max_position_embeddings"));
            case "llama3":
                return new RopeScaling(type, s.RequiredDouble("factor"), s.RequiredDouble("low_freq_factor"),
                    s.RequiredDouble("high_freq_factor"), s.RequiredInt("original_max_position_embeddings"));
            default:
                throw new NotSupportedException($"{s.Path}: rope type '{type}' is not implemented (supported: default, linear, dynamic, llama3)");
        }
    }

    /// <summary>
    /// config.json as transformers reads it: the original file's fields (when this was loaded) with the normalised
    /// fields written over them in the family's own names. New configs get the 4.x layout (top-level rope_theta,
    /// rope_scaling), which transformers 4.x and 5.x both read.
    /// </summary>
    public JsonObject ToJson()
    {
        var o = Source is null ? new JsonObject() : (JsonObject)Source.DeepClone();
        Put(o, "model_type", ModelType);
        if (Source is null || !o.ContainsKey("architectures"))
            Put(o, "architectures", new JsonArray(Family switch
            {
                ModelFamily.Opt => "OPTForCausalLM",
                ModelFamily.Gpt2 => "GPT2LMHeadModel",
                _ => ModelType == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM",
            }));
        Put(o, "vocab_size", VocabSize);
        switch (Family)
        {
            case ModelFamily.Opt:
                Put(o, "hidden_size", HiddenSize);
                Put(o, "num_hidden_layers", NumHiddenLayers);
                Put(o, "num_attention_heads", NumAttentionHeads);
                Put(o, "ffn_dim", ResolvedIntermediateSize);
                Put(o, "max_position_embeddings", MaxPositionEmbeddings);
                Put(o, "activation_function", HiddenAct);
                Put(o, "attention_dropout", AttentionDropout);
                Put(o, "dropout", ResidDropout);
                Put(o, "init_std", InitializerRange);
                Put(o, "do_layer_norm_before", DoLayerNormBefore);
                Put(o, "word_embed_proj_dim", ResolvedWordEmbedProjDim);
                Put(o, "enable_bias", EnableBias);
                Put(o, "layer_norm_elementwise_affine", LayerNormElementwiseAffine);
                Put(o, "_remove_final_layer_norm", RemoveFinalLayerNorm);
                break;
            case ModelFamily.Gpt2:
                Put(o, "n_embd", HiddenSize);
                Put(o, "n_layer", NumHiddenLayers);
                Put(o, "n_head", NumAttentionHeads);
                Put(o, "n_inner", IntermediateSize > 0 ? IntermediateSize : null);
                Put(o, "n_positions", MaxPositionEmbeddings);
                Put(o, "activation_function", HiddenAct);
                Put(o, "layer_norm_epsilon", NormEps);
                Put(o, "attn_pdrop", AttentionDropout);
                Put(o, "resid_pdrop", ResidDropout);
                Put(o, "embd_pdrop", EmbeddingDropout);
                Put(o, "initializer_range", InitializerRange);
                Put(o, "scale_attn_weights", ScaleAttnWeights);
                Put(o, "scale_attn_by_inverse_layer_idx", ScaleAttnByInverseLayerIdx);
                Put(o, "reorder_and_upcast_attn", ReorderAndUpcastAttn);
                break;
            default:
                Put(o, "hidden_size", HiddenSize);
                Put(o, "num_hidden_layers", NumHiddenLayers);
                Put(o, "num_attention_heads", NumAttentionHeads);
                Put(o, "num_key_value_heads", ResolvedNumKeyValueHeads);
                Put(o, "intermediate_size", IntermediateSize);
                Put(o, "max_position_embeddings", MaxPositionEmbeddings);
                Put(o, "head_dim", ResolvedHeadDim);
                Put(o, "hidden_act", HiddenAct);
                Put(o, "rms_norm_eps", NormEps);
                Put(o, "attention_dropout", AttentionDropout);
                Put(o, "initializer_range", InitializerRange);
                // llama writes these; mistral's config has neither, and a saved copy must not gain them
                if (Source is null || o.ContainsKey("attention_bias") || AttentionBias) Put(o, "attention_bias", AttentionBias);
                if (Source is null || o.ContainsKey("mlp_bias") || MlpBias) Put(o, "mlp_bias", MlpBias);
                WriteRope(o);
                break;
        }
        Put(o, "tie_word_embeddings", TieWordEmbeddings);
        Put(o, "bos_token_id", BosTokenId);
        Put(o, "pad_token_id", PadTokenId);
        Put(o, "eos_token_id", EosTokenIds.Count switch
        {
            0 => null,
            1 => EosTokenIds[0],
            _ => new JsonArray(EosTokenIds.Select(id => (JsonNode?)id).ToArray()),
        });
        if (TorchDtype is not null)
        {
            bool hasDtype = o.ContainsKey("dtype"), hasTorchDtype = o.ContainsKey("torch_dtype");
            if (hasDtype || !hasTorchDtype) o[hasDtype || hasTorchDtype ? "dtype" : "torch_dtype"] = TorchDtype;
            if (hasTorchDtype) Put(o, "torch_dtype", TorchDtype);
        }
        return o;
    }

    private void WriteRope(JsonObject o)
    {
        JsonObject? scaling = RopeScaling is null ? null : new JsonObject
        {
            ["rope_type"] = RopeScaling.Type,
            ["factor"] = Number(RopeScaling.Factor),
        };
        if (scaling is not null && RopeScaling!.LowFreqFactor is double low) scaling["low_freq_factor"] = Number(low);
        if (scaling is not null && RopeScaling!.HighFreqFactor is double high) scaling["high_freq_factor"] = Number(high);
        if (scaling is not null && RopeScaling!.OriginalMaxPositionEmbeddings is int orig) scaling["original_max_position_embeddings"] = orig;

        if (o.ContainsKey("rope_parameters"))
        {
            // 5.x layout: one dict with theta, type and the scaling fields
            if (!SameRope(o["rope_parameters"], scaling, RopeTheta))
            {
                var p = scaling ?? new JsonObject { ["rope_type"] = "default" };
                p["rope_theta"] = Number(RopeTheta);
                o["rope_parameters"] = p;
            }
            o.Remove("rope_theta");
            o.Remove("rope_scaling");
        }
        else
        {
            Put(o, "rope_theta", RopeTheta);
            if (!SameRope(o["rope_scaling"], scaling, theta: null)) o["rope_scaling"] = scaling;
        }
    }

    /// <summary>Whether the source's rope dict already says what <paramref name="scaling"/> says (4.x spelled the type "type").</summary>
    private static bool SameRope(JsonNode? existing, JsonObject? scaling, double? theta)
    {
        if (existing is not JsonObject e) return scaling is null && theta is null;
        string? type = (e["rope_type"] ?? e["type"])?.ToString();
        if (scaling is null) return theta is not null && (type is null or "default") && SameValue(e["rope_theta"], theta.Value);
        foreach (var (key, value) in scaling)
        {
            if (key == "rope_type") { if (type != value!.ToString()) return false; }
            else if (!SameValue(e[key], value)) return false;
        }
        return theta is null || SameValue(e["rope_theta"], theta.Value);
    }

    // Writing a field keeps the source's own node when it holds the same value, so a saved config.json keeps its
    // spelling (500000.0, 1e-05); a new or changed float is written as a float (0.0, not 0), as transformers does.
    private static void Put(JsonObject o, string key, double value) => Put(o, key, Number(value));
    private static void Put(JsonObject o, string key, int value) => Put(o, key, (JsonNode)value);
    private static void Put(JsonObject o, string key, int? value) => Put(o, key, (JsonNode?)value);

    private static void Put(JsonObject o, string key, JsonNode? value)
    {
        if (o.TryGetPropertyValue(key, out var existing) && SameValue(existing, value)) return;
        o[key] = value;
    }

    private static JsonNode Number(double value)
    {
        string text = value.ToString("R", CultureInfo.InvariantCulture);
        if (double.IsFinite(value) && text.IndexOfAny(['.', 'E', 'e']) < 0) text += ".0";
        return JsonNode.Parse(text)!;
    }

    private static bool SameValue(JsonNode? a, JsonNode? b)
    {
        if (a is null || b is null) return a is null && b is null;
        if (a is JsonValue va && b is JsonValue vb && va.GetValueKind() == JsonValueKind.Number && vb.GetValueKind() == JsonValueKind.Number)
            return AsDouble(va) == AsDouble(vb);
        return JsonNode.DeepEquals(a, b);
    }

    private static bool SameValue(JsonNode? a, double b) =>
        a is JsonValue v && v.GetValueKind() == JsonValueKind.Number && AsDouble(v) == b;

    // through the text: a node parsed from the file and one made from an int or double compare by value
    private static double AsDouble(JsonValue v) => double.Parse(v.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture);

    /// <summary>Writes <see cref="ToJson"/> to <paramref name="path"/> (a file, or a folder to hold config.json).</summary>
    public void Save(string path)
    {
        if (Directory.Exists(path)) path = System.IO.Path.Combine(path, "config.json");
        AtomicFile.WriteAllText(path, ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>Typed field access that names the file and field when a value has the wrong type.</summary>
    internal readonly struct FieldReader(JsonObject json, string path)
    {
        public string Path => path;

        private JsonValue? Value(string name)
        {
            if (!json.TryGetPropertyValue(name, out var node) || node is null) return null;
            if (node is JsonValue v) return v;
            throw new CheckpointException(path, $"field '{name}' must be a scalar, got {node.ToJsonString()}");
        }

        public JsonObject? Object(string name)
        {
            if (!json.TryGetPropertyValue(name, out var node) || node is null) return null;
            return node as JsonObject ?? throw new CheckpointException(path, $"field '{name}' must be an object, got {node.ToJsonString()}");
        }

        public string? String(string name)
        {
            var v = Value(name);
            if (v is null) return null;
            return v.TryGetValue(out string? s) ? s : throw new CheckpointException(path, $"field '{name}' must be a string, got {v.ToJsonString()}");
        }

        public int? Int(string name)
        {
            var v = Value(name);
            if (v is null) return null;
            if (v.TryGetValue(out JsonElement e) && e.ValueKind == JsonValueKind.Number)
            {
                if (e.TryGetInt32(out int i)) return i;
                if (e.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) <= int.MaxValue) return (int)d;
            }
            else if (v.TryGetValue(out int i2)) return i2;
            throw new CheckpointException(path, $"field '{name}' must be an integer, got {v.ToJsonString()}");
        }

        public double? Double(string name)
        {
            var v = Value(name);
            if (v is null) return null;
            if (v.TryGetValue(out JsonElement e) && e.ValueKind == JsonValueKind.Number) return e.GetDouble();
            if (v.TryGetValue(out double d)) return d;
            if (v.TryGetValue(out int i)) return i;
            throw new CheckpointException(path, $"field '{name}' must be a number, got {v.ToJsonString()}");
        }

        public bool? Bool(string name)
        {
            var v = Value(name);
            if (v is null) return null;
            if (v.TryGetValue(out JsonElement e) && (e.ValueKind == JsonValueKind.True || e.ValueKind == JsonValueKind.False)) return e.GetBoolean();
            if (v.TryGetValue(out bool b)) return b;
            throw new CheckpointException(path, $"field '{name}' must be true or false, got {v.ToJsonString()}");
        }

        public int RequiredInt(params string[] names)
        {
            foreach (var name in names)
                if (Int(name) is int i) return i;
            throw new CheckpointException(path, $"missing required field '{string.Join("' or '", names)}'");
        }

        public double RequiredDouble(string name)
            => Double(name) ?? throw new CheckpointException(path, $"missing required field '{name}'");

        /// <summary>eos_token_id: an int, a list of ints, or null.</summary>
        public IReadOnlyList<int> IntOrList(string name)
        {
            if (!json.TryGetPropertyValue(name, out var node) || node is null) return Array.Empty<int>();
            if (node is JsonArray array)
            {
                var ids = new List<int>();
                foreach (var item in array)
                {
                    if (item is JsonValue v && v.TryGetValue(out JsonElement e) && e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id)) ids.Add(id);
                    else if (item is JsonValue v2 && v2.TryGetValue(out int id2)) ids.Add(id2);
                    else throw new CheckpointException(path, $"field '{name}' must be an integer or a list of integers, got {node.ToJsonString()}");
                }
                return ids;
            }
            return Int(name) is int single ? new[] { single } : Array.Empty<int>();
        }
    }
}
