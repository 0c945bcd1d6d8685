using System.Text.Json.Nodes;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Models;
using WeakTeacher.Tests.Models;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Checkpoints;

/// <summary>A model pretrained from scratch: config built in code, never read from a file, saved and reloaded.</summary>
public class FreshModelRoundTripTests
{
    public static TheoryData<ModelConfig> Configs => new(
        new ModelConfig
        {
            Family = ModelFamily.Opt, ModelType = "opt", VocabSize = 120, HiddenSize = 32, NumHiddenLayers = 2,
            NumAttentionHeads = 4, IntermediateSize = 64, MaxPositionEmbeddings = 40, WordEmbedProjDim = 16,
            DoLayerNormBefore = false, PadTokenId = 1, BosTokenId = 2, EosTokenIds = new[] { 2 }, TieWordEmbeddings = true,
        },
        new ModelConfig
        {
            Family = ModelFamily.Gpt2, ModelType = "gpt2", VocabSize = 120, HiddenSize = 32, NumHiddenLayers = 2,
            NumAttentionHeads = 4, MaxPositionEmbeddings = 40, HiddenAct = "gelu_new", EosTokenIds = new[] { 119 },
            BosTokenId = 119, TieWordEmbeddings = true,
        },
        new ModelConfig
        {
            Family = ModelFamily.Llama, ModelType = "llama", VocabSize = 120, HiddenSize = 32, NumHiddenLayers = 2,
            NumAttentionHeads = 4, NumKeyValueHeads = 2, IntermediateSize = 48, MaxPositionEmbeddings = 64, HiddenAct = "silu",
            NormEps = 1e-6, RopeTheta = 500000, RopeScaling = new RopeScaling("llama3", 8, 1, 4, 16), TieWordEmbeddings = true,
            EosTokenIds = new[] { 2, 3 }, BosTokenId = 1, PadTokenId = 0,
        });

    [Theory]
    [MemberData(nameof(Configs))]
    public void CreatedModelSavesAndLoadsUnchanged(ModelConfig config)
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        using var model = CausalLMFactory.Create(config, seed: 11);
        PretrainedModel.Save(model, temp.Path);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(temp.Path, "config.json")))!.AsObject();
        Assert.Equal(config.ModelType, json["model_type"]!.GetValue<string>());
        Assert.Equal("float32", json["torch_dtype"]!.GetValue<string>());
        using var reloaded = PretrainedModel.Load(temp.Path);
        CheckpointRoundTripTests.AssertSameParameters(model, reloaded);
        Assert.Equal(config with { TorchDtype = "float32" }, reloaded.Config with { Source = null }, ModelConfigTests.ConfigComparer.Instance);

        var ids = tensor(new long[,] { { 5, 6, 7, 8, 9 }, { 1, 1, 10, 11, 12 } });
        var mask = tensor(new long[,] { { 1, 1, 1, 1, 1 }, { 0, 0, 1, 1, 1 } });
        using var noGrad = no_grad();
        Assert.True(model.Logits(ids, mask).Same(reloaded.Logits(ids, mask)));
    }
}
