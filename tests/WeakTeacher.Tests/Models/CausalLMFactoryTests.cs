using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Models;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Models;

public class CausalLMFactoryTests
{
    public static TheoryData<string> FixtureNames => new(Fixtures.Names);

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void ParameterNamesAndShapesAreHuggingFaces(string name)
    {
        using var scope = NewDisposeScope();
        var config = ModelConfig.Load(Fixtures.Dir(name));
        using var model = CausalLMFactory.Create(config, seed: 3);
        using var file = SafeTensorsFile.Open(Path.Combine(Fixtures.Dir(name), "model.safetensors"));
        var ours = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        Assert.Equal(file.Tensors.Keys.Order(), ours.Keys.Order());
        foreach (var (n, info) in file.Tensors) Assert.Equal(info.Shape, ours[n]);
    }

    [Fact]
    public void InitialisesAsHuggingFaceAndIsSeeded()
    {
        using var scope = NewDisposeScope();
        var config = ModelConfig.Load(Fixtures.Dir("gpt2")) with { Source = null };
        using var a = CausalLMFactory.Create(config, seed: 7);
        using var b = CausalLMFactory.Create(config, seed: 7);
        using var c = CausalLMFactory.Create(config, seed: 8);
        var pa = a.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var pb = b.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.All(pa, kv => Assert.True(kv.Value.Same(pb[kv.Key]), kv.Key));
        Assert.False(pa["transformer.wte.weight"].Same(c.named_parameters().First(p => p.name == "transformer.wte.weight").parameter));

        Assert.InRange(pa["transformer.wte.weight"].std().item<float>(), 0.019, 0.021);
        Assert.InRange(pa["transformer.h.0.mlp.c_fc.weight"].std().item<float>(), 0.019, 0.021);
        // GPT-2 residual projections: 0.02 / sqrt(2 n_layer) = 0.01 here
        Assert.InRange(pa["transformer.h.0.mlp.c_proj.weight"].std().item<float>(), 0.009, 0.011);
        Assert.Equal(0f, pa["transformer.h.0.attn.c_attn.bias"].abs().sum().item<float>());
        Assert.True(pa["transformer.ln_f.weight"].Same(ones(64)));

        var llama = ModelConfig.Load(Fixtures.Dir("llama"));
        using var l = CausalLMFactory.Create(llama, dtype: ScalarType.BFloat16, seed: 1);
        Assert.Equal(ScalarType.BFloat16, l.DType);
        var pl = l.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.Equal(0f, pl["model.embed_tokens.weight"][0].abs().sum().to(ScalarType.Float32).item<float>()); // pad_token_id 0
        Assert.True(pl["model.norm.weight"].Same(ones(64, dtype: ScalarType.BFloat16)));
        Assert.False(l.training);
    }

    [Fact]
    public void DropoutActsOnlyInTrainMode()
    {
        using var scope = NewDisposeScope();
        var config = ModelConfig.Load(Fixtures.Dir("opt")) with { ResidDropout = 0.5, AttentionDropout = 0.5 };
        using var model = CausalLMFactory.Create(config, seed: 1);
        var ids = tensor(new long[,] { { 5, 6, 7, 8 } });
        var mask = ones_like(ids);
        using var noGrad = no_grad();
        Assert.True(model.Logits(ids, mask).Same(model.Logits(ids, mask)));
        model.train();
        Assert.False(model.Logits(ids, mask).Same(model.Logits(ids, mask)));
    }

    [Fact]
    public void PaddingRowsStayFinite()
    {
        using var scope = NewDisposeScope();
        using var model = PretrainedModel.Load(Fixtures.Dir("llama"));
        var ids = tensor(new long[,] { { 0, 0, 0, 9, 10 }, { 11, 12, 13, 14, 15 } });
        var mask = tensor(new long[,] { { 0, 0, 0, 1, 1 }, { 1, 1, 1, 1, 1 } });
        using var noGrad = no_grad();
        Assert.False(model.Logits(ids, mask).isnan().any().item<bool>());
    }
}
