using System.Text.Json.Nodes;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Models;
using WeakTeacher.Tests.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Checkpoints;

/// <summary>Save then load, in the Hugging Face layout.</summary>
public class CheckpointRoundTripTests
{
    public static TheoryData<string> FixtureNames => new(Fixtures.Names);

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void SaveThenLoadIsBitExactAndWritesTransformersLayout(string name)
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        using var model = PretrainedModel.Load(Fixtures.Dir(name));
        PretrainedModel.Save(model, temp.Path);
        using var reloaded = PretrainedModel.Load(temp.Path);

        AssertSameParameters(model, reloaded);
        Assert.Equal(model.Config with { Source = null }, reloaded.Config with { Source = null }, ModelConfigTests.ConfigComparer.Instance);
        Assert.Equal(model.GenerationDefaults! with { Source = null }, reloaded.GenerationDefaults! with { Source = null }, GenerationComparer);

        // the same tensor names, dtypes and shapes as the file transformers wrote (tied heads not duplicated)
        using var original = SafeTensorsFile.Open(Path.Combine(Fixtures.Dir(name), "model.safetensors"));
        using var saved = SafeTensorsFile.Open(Path.Combine(temp.Path, "model.safetensors"));
        Assert.Equal(original.Tensors.Keys.Order(), saved.Tensors.Keys.Order());
        foreach (var (key, info) in original.Tensors)
        {
            Assert.Equal(info.Shape, saved.Tensors[key].Shape);
            Assert.Equal(info.DType, saved.Tensors[key].DType);
        }
        Assert.Equal("pt", saved.Metadata["format"]);
        // and config.json / generation_config.json keep every field transformers wrote
        var originalConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Dir(name), "config.json")))!.AsObject();
        var savedConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(temp.Path, "config.json")))!.AsObject();
        Assert.Equal(originalConfig.Select(kv => kv.Key).Order(), savedConfig.Select(kv => kv.Key).Order());
        Assert.Equal("float32", savedConfig["dtype"]!.GetValue<string>());
        Assert.False(Directory.EnumerateDirectories(temp.Path).Any(), "the temporary save folder was left behind");
    }

    [Theory]
    [InlineData(ScalarType.Float16, "F16", "float16")]
    [InlineData(ScalarType.BFloat16, "BF16", "bfloat16")]
    public void SavesAndLoadsHalfPrecision(ScalarType dtype, string stored, string configName)
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        using var model = PretrainedModel.Load(Fixtures.Dir("llama"));
        PretrainedModel.Save(model, temp.Path, dtype);
        using (var file = SafeTensorsFile.Open(Path.Combine(temp.Path, "model.safetensors")))
            Assert.All(file.Tensors.Values, t => Assert.Equal(stored, t.DType));
        Assert.Equal(configName, ModelConfig.Load(temp.Path).TorchDtype);

        // loads in the stored type by default, each tensor exactly the cast of the fp32 one
        using var half = PretrainedModel.Load(temp.Path);
        Assert.Equal(dtype, half.DType);
        var reference = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (n, p) in half.named_parameters())
            Assert.True(p.Same(reference[n].to(dtype)), $"{n} is not the {dtype} cast of the fp32 weight");

        // cast on load: back to fp32 (exactly the widened half values)
        using var widened = PretrainedModel.Load(temp.Path, new ModelLoadOptions { DType = ScalarType.Float32 });
        Assert.Equal(ScalarType.Float32, widened.DType);
        foreach (var (n, p) in widened.named_parameters())
            Assert.True(p.Same(reference[n].to(dtype).to(ScalarType.Float32)), n);

        // a half-precision forward stays close to the fp32 one
        var expected = Fixtures.Expected("llama");
        using var noGrad = no_grad();
        var logits = half.Logits(expected["input_ids"], expected["attention_mask"]).to(ScalarType.Float32);
        var real = expected["attention_mask"].to(ScalarType.Float32).unsqueeze(-1);
        Assert.True(((logits - expected["logits"]).abs() * real).max().item<float>() < 0.05);
    }

    [Fact]
    public void CastsOnLoadFromFp32Checkpoint()
    {
        using var scope = NewDisposeScope();
        using var model = PretrainedModel.Load(Fixtures.Dir("opt"), new ModelLoadOptions { DType = ScalarType.BFloat16, Device = CPU });
        Assert.Equal(ScalarType.BFloat16, model.DType);
        Assert.Equal(DeviceType.CPU, model.Device.type);
        using var fp32 = PretrainedModel.Load(Fixtures.Dir("opt"));
        var reference = fp32.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (n, p) in model.named_parameters()) Assert.True(p.Same(reference[n].to(ScalarType.BFloat16)), n);
    }

    [Fact]
    public void ShardedSaveWritesIndexAndLoadsBack()
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        using var model = PretrainedModel.Load(Fixtures.Dir("gpt2"));
        PretrainedModel.Save(model, temp.Path, maxShardBytes: 150_000);
        Assert.False(File.Exists(Path.Combine(temp.Path, "model.safetensors")));
        var shards = Directory.GetFiles(temp.Path, "model-*-of-*.safetensors").Select(Path.GetFileName).Order().ToList();
        Assert.True(shards.Count >= 3, $"expected several shards, got {shards.Count}");
        Assert.Equal($"model-00001-of-{shards.Count:D5}.safetensors", shards[0]);
        foreach (var shard in shards) Assert.True(new FileInfo(Path.Combine(temp.Path, shard!)).Length < 150_000 + 4096);

        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(temp.Path, "model.safetensors.index.json")))!.AsObject();
        var weightMap = PretrainedModel.ReadIndex(Path.Combine(temp.Path, "model.safetensors.index.json"));
        Assert.Equal(model.named_parameters().Select(p => p.name).Order(), weightMap.Keys.Order());
        Assert.Equal(model.parameters().Sum(p => p.numel() * 4), index["metadata"]!["total_size"]!.GetValue<long>());

        using var reloaded = PretrainedModel.Load(temp.Path);
        AssertSameParameters(model, reloaded);

        // saving again unsharded replaces the shards and the index
        PretrainedModel.Save(reloaded, temp.Path);
        Assert.Empty(Directory.GetFiles(temp.Path, "model-*-of-*.safetensors"));
        Assert.False(File.Exists(Path.Combine(temp.Path, "model.safetensors.index.json")));
        using var again = PretrainedModel.Load(temp.Path);
        AssertSameParameters(model, again);
    }

    [Fact]
    public void LoadsGpt2CheckpointWithoutPrefixAndWithAttentionBuffers()
    {
        // openai-community/gpt2 stores h.0.attn.c_attn.weight (no "transformer.") and the attn.bias causal-mask buffers
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("gpt2");
        var tensors = SafeTensors.Load(Path.Combine(Fixtures.Dir("gpt2"), "model.safetensors"));
        var old = tensors.ToDictionary(kv => kv.Key["transformer.".Length..], kv => kv.Value);
        old["h.0.attn.bias"] = ones(1, 1, 64, 64).tril();
        old["h.1.attn.bias"] = ones(1, 1, 64, 64).tril();
        old["h.0.attn.masked_bias"] = tensor(-1e4f);
        old["lm_head.weight"] = tensors["transformer.wte.weight"];
        SafeTensors.Save(old, Path.Combine(temp.Path, "model.safetensors"), new Dictionary<string, string> { ["format"] = "pt" });
        using var model = PretrainedModel.Load(temp.Path);
        using var reference = PretrainedModel.Load(Fixtures.Dir("gpt2"));
        AssertSameParameters(reference, model);
    }

    [Fact]
    public void TiedModelIgnoresStoredLmHead()
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("opt");
        var tensors = SafeTensors.Load(Path.Combine(Fixtures.Dir("opt"), "model.safetensors"));
        tensors["lm_head.weight"] = tensors["model.decoder.embed_tokens.weight"] * 0; // would break the head if used
        SafeTensors.Save(tensors, Path.Combine(temp.Path, "model.safetensors"));
        using var model = PretrainedModel.Load(temp.Path);
        Assert.True(model.OutputWeight.Same(tensors["model.decoder.embed_tokens.weight"]));
    }

    [Fact]
    public void ReadsGenerationConfig()
    {
        using var model = PretrainedModel.Load(Fixtures.Dir("llama"));
        var g = model.GenerationDefaults!;
        Assert.Equal(new[] { 2 }, g.EosTokenIds);
        Assert.Equal(0, g.PadTokenId);
        Assert.Equal(1, g.BosTokenId);
        Assert.Null(g.MaxNewTokens);

        using var temp = new Fixtures.TempDir();
        File.WriteAllText(Path.Combine(temp.Path, "generation_config.json"),
            """{"eos_token_id": [7, 9], "max_new_tokens": 32, "temperature": 0.7, "top_p": 0.9, "do_sample": true, "top_k": 0}""");
        var read = GenerationDefaults.Load(Path.Combine(temp.Path, "generation_config.json"), model.Config);
        Assert.Equal(new[] { 7, 9 }, read.EosTokenIds);
        Assert.Equal(0, read.PadTokenId); // from config.json
        Assert.Equal(32, read.MaxNewTokens);
        Assert.Equal(0.7, read.Temperature);
        Assert.Equal(0.9, read.TopP);
        Assert.Equal(0, read.TopK);
        Assert.True(read.DoSample);
    }

    [Fact]
    public void NonStrictLoadKeepsInitialValuesOfMissingTensors()
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("llama");
        var tensors = SafeTensors.Load(Path.Combine(Fixtures.Dir("llama"), "model.safetensors"));
        tensors.Remove("model.norm.weight");
        tensors["score.weight"] = zeros(2, 64);
        SafeTensors.Save(tensors, Path.Combine(temp.Path, "model.safetensors"));
        using var model = PretrainedModel.Load(temp.Path, new ModelLoadOptions { Strict = false });
        var norm = model.named_parameters().Single(p => p.name == "model.norm.weight").parameter;
        Assert.True(norm.Same(ones(64)));
        Assert.True(model.named_parameters().Single(p => p.name == "lm_head.weight").parameter.Same(tensors["lm_head.weight"]));
    }

    internal static void AssertSameParameters(CausalLM expected, CausalLM actual)
    {
        var want = expected.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var got = actual.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.Equal(want.Keys.Order(), got.Keys.Order());
        foreach (var (name, p) in want)
        {
            Assert.Equal(p.dtype, got[name].dtype);
            Assert.True(p.bytes.SequenceEqual(got[name].bytes), $"{name} differs");
        }
    }

    private static readonly IEqualityComparer<GenerationDefaults> GenerationComparer = EqualityComparer<GenerationDefaults>.Create(
        (a, b) => a is not null && b is not null && a.EosTokenIds.SequenceEqual(b.EosTokenIds)
                  && a with { EosTokenIds = Array.Empty<int>() } == b with { EosTokenIds = Array.Empty<int>() },
        g => g.MaxNewTokens ?? 0);
}
