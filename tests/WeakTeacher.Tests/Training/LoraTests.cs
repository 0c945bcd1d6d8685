using System.Text.Json;
using TorchSharp;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

[Collection(TrainingCollection.Name)]
public class LoraTests
{
    private static readonly LoraConfig Config = new() { Rank = 4, Alpha = 8, Dropout = 0.0, TargetModules = new[] { "q_proj", "v_proj" } };

    /// <summary>A model with adapters whose B is non-zero, so they change the outputs.</summary>
    private static WeakTeacher.Engine.Models.CausalLM AdaptedModel()
    {
        var model = TrainingTestKit.Opt(71);
        LoraAdapters.Attach(model, Config, seed: 3);
        var generator = new Generator(5);
        using (no_grad())
            foreach (var (_, p) in LoraAdapters.AdapterParameters(model))
                p.copy_(randn(p.shape, generator: generator) * 0.3);
        return model;
    }

    [Fact]
    public void TheSameSeedGivesTheSameInitialAdapters()
    {
        using var first = TrainingTestKit.Opt(71);
        using var second = TrainingTestKit.Opt(71);
        using var third = TrainingTestKit.Opt(71);
        LoraAdapters.Attach(first, Config, seed: 9);
        manual_seed(12345); // the global generator must not matter
        LoraAdapters.Attach(second, Config, seed: 9);
        LoraAdapters.Attach(third, Config, seed: 10);
        var a = LoraAdapters.AdapterParameters(first).ToDictionary(p => p.Item1, p => p.Item2);
        var b = LoraAdapters.AdapterParameters(second).ToDictionary(p => p.Item1, p => p.Item2);
        var c = LoraAdapters.AdapterParameters(third).ToDictionary(p => p.Item1, p => p.Item2);
        Assert.NotEmpty(a);
        Assert.All(a, kv => Assert.True(kv.Value.allclose(b[kv.Key], rtol: 0, atol: 0), kv.Key));
        Assert.Contains(a, kv => kv.Key.EndsWith("lora_A.weight") && !kv.Value.allclose(c[kv.Key], rtol: 0, atol: 0));
    }

    [Fact]
    public void SavesInPeftLayoutAndLoadsToTheSameOutputs()
    {
        using var dir = new TempDir();
        using var model = AdaptedModel();
        model.eval();
        var expected = TrainingTestKit.Logits(model, "Q: abc A: de");
        using (var baseModel = TrainingTestKit.Opt(71))
            Assert.False(expected.allclose(TrainingTestKit.Logits(baseModel, "Q: abc A: de"), atol: 1e-4)); // the adapter matters
        LoraAdapters.Save(model, Config, dir.Path, "tiny-opt");

        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.Path, "adapter_config.json")));
        var root = config.RootElement;
        Assert.Equal("LORA", root.GetProperty("peft_type").GetString());
        Assert.Equal("CAUSAL_LM", root.GetProperty("task_type").GetString());
        Assert.Equal(4, root.GetProperty("r").GetInt32());
        Assert.Equal(8.0, root.GetProperty("lora_alpha").GetDouble());
        Assert.Equal("tiny-opt", root.GetProperty("base_model_name_or_path").GetString());
        Assert.Equal(new[] { "q_proj", "v_proj" }, root.GetProperty("target_modules").EnumerateArray().Select(e => e.GetString()));
        using (var file = SafeTensorsFile.Open(Path.Combine(dir.Path, "adapter_model.safetensors")))
        {
            Assert.Equal(2 * 2 * 2, file.Tensors.Count);
            Assert.Contains("base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight", file.Tensors.Keys);
            Assert.Contains("base_model.model.model.decoder.layers.1.self_attn.v_proj.lora_B.weight", file.Tensors.Keys);
            Assert.Equal(new long[] { 4, 16 }, file.Tensors["base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight"].Shape);
            Assert.Equal(new long[] { 16, 4 }, file.Tensors["base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_B.weight"].Shape);
        }

        using var fresh = TrainingTestKit.Opt(71);
        var loadedConfig = LoraAdapters.Load(fresh, dir.Path);
        fresh.eval();
        Assert.Equal(Config.Rank, loadedConfig.Rank);
        Assert.True(expected.allclose(TrainingTestKit.Logits(fresh, "Q: abc A: de"), rtol: 0, atol: 1e-6));
    }

    [Fact]
    public void MergeGivesTheSameOutputsAndSavesAsAPlainCheckpoint()
    {
        using var dir = new TempDir();
        using var model = AdaptedModel();
        model.eval();
        var unmerged = TrainingTestKit.Logits(model, "Q: hello A: x");
        Assert.Equal(4, LoraAdapters.Merge(model));
        Assert.False(LoraAdapters.HasAdapters(model));
        Assert.DoesNotContain(model.named_parameters(), p => p.name.Contains("lora_"));
        var merged = TrainingTestKit.Logits(model, "Q: hello A: x");
        Assert.True(unmerged.allclose(merged, rtol: 0, atol: 1e-5));

        PretrainedModel.Save(model, dir.Path);
        using var loaded = PretrainedModel.Load(dir.Path);
        Assert.True(merged.allclose(TrainingTestKit.Logits(loaded, "Q: hello A: x"), rtol: 0, atol: 1e-6));
    }

    [Fact]
    public void UnknownTargetModulesAreAClearError()
    {
        using var model = TrainingTestKit.Opt(72);
        var ex = Assert.Throws<ArgumentException>(() => LoraAdapters.Attach(model, new LoraConfig { TargetModules = new[] { "c_attn" } }, seed: 3));
        Assert.Contains("q_proj", ex.Message);
    }
}
