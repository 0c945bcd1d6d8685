using System.Text.Json.Nodes;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Models;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Models;

/// <summary>config.json as transformers 4.x and 5.x write it.</summary>
public class ModelConfigTests
{
    private static ModelConfig Parse(string json) => ModelConfig.FromJson(JsonNode.Parse(json)!.AsObject(), "test/config.json");

    // Llama-3.1-8B's config.json (transformers 4.43), shrunk: top-level rope_theta, llama3 rope_scaling, eos list
    private const string Llama31 = """
    {
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
      "hidden_size": 256, "initializer_range": 0.02, "intermediate_size": 512, "max_position_embeddings": 131072,
      "mlp_bias": false, "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2,
      "num_key_value_heads": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 1000
    }
    """;

    [Fact]
    public void ReadsTransformers4LlamaConfigWithLlama3RopeScaling()
    {
        var c = Parse(Llama31);
        Assert.Equal(ModelFamily.Llama, c.Family);
        Assert.Equal(500000.0, c.RopeTheta);
        Assert.Equal(new RopeScaling("llama3", 8.0, 1.0, 4.0, 8192), c.RopeScaling);
        Assert.Equal(new[] { 128001, 128008, 128009 }, c.EosTokenIds);
        Assert.Equal(128000, c.BosTokenId);
        Assert.Equal(2, c.ResolvedNumKeyValueHeads);
        Assert.Equal(64, c.ResolvedHeadDim);
        Assert.Equal("bfloat16", c.TorchDtype);
        Assert.False(c.TieWordEmbeddings);
    }

    [Fact]
    public void Llama3InverseFrequenciesFollowTransformersFormula()
    {
        var c = Parse(Llama31);
        var got = tensor(Rope.InverseFrequencies(c));
        // transformers modeling_rope_utils._compute_llama3_parameters, line by line (float64)
        int dim = 64;
        var invFreq = 1.0 / pow(tensor(500000.0), arange(0, dim, 2, int64).to(float64) / dim);
        double factor = 8, low = 1, high = 4, oldContext = 8192;
        double lowFreqWavelen = oldContext / low, highFreqWavelen = oldContext / high;
        var wavelen = 2 * Math.PI / invFreq;
        var invFreqLlama = where(wavelen > lowFreqWavelen, invFreq / factor, invFreq);
        var smoothFactor = (oldContext / wavelen - low) / (high - low);
        var smoothed = (1 - smoothFactor) * invFreqLlama / factor + smoothFactor * invFreqLlama;
        var isMedium = (wavelen < highFreqWavelen).logical_not().logical_and((wavelen > lowFreqWavelen).logical_not());
        var want = where(isMedium, smoothed, invFreqLlama);
        Assert.True(isMedium.any().item<bool>(), "the test config should exercise the smoothed band");
        Assert.True((wavelen > lowFreqWavelen).any().item<bool>(), "the test config should exercise the scaled band");
        Assert.True((got - want).abs().max().item<double>() < 1e-15 * 1e3);
        // and scaling changed something relative to plain RoPE
        var plain = tensor(Rope.InverseFrequencies(c with { RopeScaling = null }));
        Assert.True((plain - got).abs().max().item<double>() > 1e-6);
    }

    [Fact]
    public void ReadsTransformers5RopeParameters()
    {
        var c = ModelConfig.Load(Path.Combine(Fixtures.Dir("llama"), "config.json"));
        Assert.Equal(10000.0, c.RopeTheta);
        Assert.Null(c.RopeScaling);
        Assert.Equal(16, c.ResolvedHeadDim);
        var json = JsonNode.Parse(Llama31)!.AsObject();
        json.Remove("rope_theta");
        json.Remove("rope_scaling");
        json["rope_parameters"] = JsonNode.Parse("""{"rope_theta": 250000.0, "rope_type": "linear", "factor": 2.0}""");
        var linear = ModelConfig.FromJson(json);
        Assert.Equal(250000.0, linear.RopeTheta);
        Assert.Equal("linear", linear.RopeScaling!.Type);
        var plain = Rope.InverseFrequencies(linear with { RopeScaling = null });
        Assert.Equal(plain.Select(f => f / 2).ToArray(), Rope.InverseFrequencies(linear));
    }

    [Fact]
    public void DynamicRopeScalesThetaOnlyBeyondTrainedLength()
    {
        var json = JsonNode.Parse(Llama31)!.AsObject();
        json["max_position_embeddings"] = 2048;
        json["rope_scaling"] = JsonNode.Parse("""{"type": "dynamic", "factor": 2.0}""");
        var c = ModelConfig.FromJson(json);
        var plain = Rope.InverseFrequencies(c with { RopeScaling = null });
        Assert.Equal(plain, Rope.InverseFrequencies(c, 1000));
        var longer = Rope.InverseFrequencies(c, 4096);
        double theta = 500000.0 * Math.Pow(2.0 * 4096 / 2048 - 1, 64 / 62.0);
        Assert.Equal(1.0 / Math.Pow(theta, 2.0 / 64), longer[1], 12);
    }

    [Fact]
    public void MistralMapsToLlamaFamily()
    {
        const string mistral = """
        {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 64, "intermediate_size": 128,
         "num_attention_heads": 4, "num_key_value_heads": 1, "num_hidden_layers": 2, "vocab_size": 300,
         "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": null, "head_dim": null,
         "rms_norm_eps": 1e-05, "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2}
        """;
        var c = Parse(mistral);
        Assert.Equal(ModelFamily.Llama, c.Family);
        Assert.Equal("mistral", c.ModelType);
        Assert.Equal(1000000.0, c.RopeTheta);
        Assert.Equal(16, c.ResolvedHeadDim);
        using var model = CausalLMFactory.Create(c, seed: 1);
        Assert.IsType<LlamaModel>(model);
        Assert.Contains(model.named_parameters(), p => p.name == "model.layers.1.self_attn.k_proj.weight" && p.parameter.shape.SequenceEqual(new long[] { 16, 64 }));
        Assert.Equal("MistralForCausalLM", c.ToJson()["architectures"]![0]!.GetValue<string>());

        var windowAtMax = JsonNode.Parse(mistral)!.AsObject();
        windowAtMax["sliding_window"] = 32768;
        Assert.Equal(ModelFamily.Llama, ModelConfig.FromJson(windowAtMax).Family);
        var windowed = JsonNode.Parse(mistral)!.AsObject();
        windowed["sliding_window"] = 4096;
        var e = Assert.Throws<NotSupportedException>(() => ModelConfig.FromJson(windowed, "mistral/config.json"));
        Assert.Contains("mistral/config.json", e.Message);
        Assert.Contains("sliding_window", e.Message);
    }

    [Fact]
    public void ReadsGpt2FieldNames()
    {
        var c = ModelConfig.Load(Fixtures.Dir("gpt2"));
        Assert.Equal(ModelFamily.Gpt2, c.Family);
        Assert.Equal(64, c.HiddenSize);
        Assert.Equal(2, c.NumHiddenLayers);
        Assert.Equal(4, c.NumAttentionHeads);
        Assert.Equal(64, c.MaxPositionEmbeddings);
        Assert.Equal(256, c.ResolvedIntermediateSize); // n_inner null -> 4 n_embd
        Assert.Equal("gelu_new", c.HiddenAct);
        Assert.Equal(new[] { 511 }, c.EosTokenIds);
        Assert.Null(c.PadTokenId);
        Assert.True(c.TieWordEmbeddings);
    }

    [Fact]
    public void ReadsOpt350mShape()
    {
        var c = ModelConfig.Load(Fixtures.Dir("opt-350m-style"));
        Assert.Equal(ModelFamily.Opt, c.Family);
        Assert.False(c.DoLayerNormBefore);
        Assert.Equal(32, c.ResolvedWordEmbedProjDim);
        Assert.Equal(128, c.ResolvedIntermediateSize);
        Assert.Equal("relu", c.HiddenAct);
        Assert.Equal(1, c.PadTokenId);
    }

    [Theory]
    [MemberData(nameof(HfParityTests.FixtureNames), MemberType = typeof(HfParityTests))]
    public void ToJsonKeepsEveryOriginalFieldAndValue(string name)
    {
        var path = Path.Combine(Fixtures.Dir(name), "config.json");
        var original = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        var written = ModelConfig.Load(path).ToJson();
        foreach (var (key, value) in original)
            Assert.True(JsonNode.DeepEquals(value, written[key]) || Numeric(value) == Numeric(written[key]) && Numeric(value) is not null,
                $"{name}: {key} was {value?.ToJsonString()} and is written as {written[key]?.ToJsonString()}");
        Assert.Equal(ModelConfig.Load(path) with { Source = null }, ModelConfig.FromJson(written) with { Source = null }, ConfigComparer.Instance);
    }

    [Fact]
    public void Transformers4ConfigIsWrittenBackIn4xLayout()
    {
        var written = Parse(Llama31).ToJson();
        Assert.Equal(500000.0, written["rope_theta"]!.GetValue<double>());
        Assert.Equal("llama3", written["rope_scaling"]!["rope_type"]!.GetValue<string>());
        Assert.False(written.ContainsKey("rope_parameters"));
        Assert.Equal("bfloat16", written["torch_dtype"]!.GetValue<string>());
        Assert.Equal(3, written["eos_token_id"]!.AsArray().Count);
        Assert.Equal("4.43.0.dev0", written["transformers_version"]!.GetValue<string>());
        Assert.Equal(Parse(Llama31) with { Source = null }, ModelConfig.FromJson(written) with { Source = null }, ConfigComparer.Instance);
    }

    [Fact]
    public void SavedConfigKeepsTheSourcesNumberSpellingKeysAndFourXRopeType()
    {
        // as transformers writes it: floats stay floats, nothing is added, the 4.x "type" key stays "type"
        var json = Llama31.Replace("\"rope_type\": \"llama3\"", "\"type\": \"llama3\"")
            .Replace("\"model_type\": \"llama\"", "\"model_type\": \"mistral\"")
            .Replace("\"attention_bias\": false, ", "").Replace("\"mlp_bias\": false,", "");
        var written = Parse(json).ToJson().ToJsonString();
        Assert.Contains("\"attention_dropout\":0.0", written);
        Assert.Contains("\"rope_theta\":500000.0", written);
        Assert.Contains("\"factor\":8.0", written);
        Assert.Contains("\"rms_norm_eps\":1e-05", written);
        Assert.Contains("\"type\":\"llama3\"", written);
        Assert.DoesNotContain("rope_type", written);
        Assert.DoesNotContain("attention_bias", written);
        Assert.DoesNotContain("mlp_bias", written);

        // a changed float is written as a float too
        var changed = (Parse(json) with { AttentionDropout = 1.0 }).ToJson().ToJsonString();
        Assert.Contains("\"attention_dropout\":1.0", changed);
    }

    private static double? Numeric(JsonNode? n) => n is JsonValue v && v.TryGetValue(out double d) ? d : null;

    /// <summary>Equivalent configs: record equality with the eos list by value and defaulted sizes resolved.</summary>
    internal sealed class ConfigComparer : IEqualityComparer<ModelConfig>
    {
        public static readonly ConfigComparer Instance = new();
        public bool Equals(ModelConfig? a, ModelConfig? b)
            => a is not null && b is not null && a.EosTokenIds.SequenceEqual(b.EosTokenIds) && Normal(a) == Normal(b);
        private static ModelConfig Normal(ModelConfig c) => c with
        {
            EosTokenIds = Array.Empty<int>(),
            Source = null,
            HeadDim = c.ResolvedHeadDim,
            NumKeyValueHeads = c.ResolvedNumKeyValueHeads,
            WordEmbedProjDim = c.ResolvedWordEmbedProjDim,
        };
        public int GetHashCode(ModelConfig c) => c.HiddenSize;
    }
}
