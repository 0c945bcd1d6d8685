extern alias host;
using Grpc.Core;
using host::WeakTeacher.GrpcHost.Jobs;
using WeakTeacher.CudaKernels;
using Xunit;
using V1 = host::WeakTeacher.Grpc.V1;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>The DPO / reward options a client sends reach the engine's configs (TRL's names), and bad ones are refused by field.</summary>
public sealed class TrainingOptionsTranslationTests
{
    [Fact]
    public void DpoLossListWeightsDivergenceWpoLdAlphaAndDropoutTranslate()
    {
        var proto = new V1.DpoConfig
        {
            LossTypes = { V1.PreferenceLossType.Sigmoid, V1.PreferenceLossType.BcoPair, V1.PreferenceLossType.Sft },
            LossWeights = { 0.8, 0.2, 1.0 },
            FDivergenceType = V1.FDivergenceType.AlphaDivergence,
            FAlphaDivergenceCoef = 0.3,
            UseWeighting = true,
            LdAlpha = 0.5,
            DiscopopTau = 0.1,
            DisableDropout = false,
        };
        var config = RequestTranslation.Dpo("dpo", proto);
        Assert.Equal([PreferenceLossType.Sigmoid, PreferenceLossType.BcoPair, PreferenceLossType.Sft], config.LossTypes);
        Assert.Equal([0.8, 0.2, 1.0], config.LossWeights!);
        Assert.Equal(FDivergenceType.AlphaDivergence, config.FDivergenceType);
        Assert.Equal(0.3, config.FAlphaDivergenceCoef);
        Assert.True(config.UseWeighting);
        Assert.Equal(0.5, config.LdAlpha);
        Assert.False(config.DisableDropout);
        Assert.True(RequestTranslation.Dpo("dpo", new V1.DpoConfig()).DisableDropout);
        Assert.False(RequestTranslation.Reward("reward", new V1.RewardConfig { DisableDropout = false }).DisableDropout);
        Assert.True(RequestTranslation.Reward("reward", new V1.RewardConfig()).DisableDropout);
    }

    [Fact]
    public void ImpossibleLossSettingsAreRefusedNamingTheField()
    {
        var exo = Assert.Throws<RpcException>(() => RequestTranslation.Dpo("dpo", new V1.DpoConfig { LossType = V1.PreferenceLossType.ExoPair }));
        Assert.Equal(StatusCode.InvalidArgument, exo.StatusCode);
        Assert.Contains("dpo.loss_type", exo.Status.Detail);
        var weights = Assert.Throws<RpcException>(() => RequestTranslation.Dpo("dpo", new V1.DpoConfig { LossWeights = { 1, 2 } }));
        Assert.Contains("dpo.loss_weights", weights.Status.Detail);
        var wpo = Assert.Throws<RpcException>(() => RequestTranslation.Dpo("dpo", new V1.DpoConfig { LossType = V1.PreferenceLossType.Aot, UseWeighting = true }));
        Assert.Contains("aot", wpo.Status.Detail);
        var ld = Assert.Throws<RpcException>(() => RequestTranslation.Dpo("dpo", new V1.DpoConfig { LdAlpha = 1.5 }));
        Assert.Contains("dpo.ld_alpha", ld.Status.Detail);
    }

    [Fact]
    public void PrecisionTranslatesAndAnUnknownOneIsRefusedNamingTheField()
    {
        var bf16 = RequestTranslation.Dpo("dpo", new V1.DpoConfig { Args = new V1.TrainingArguments { Precision = "bf16" } });
        Assert.Equal(WeakTeacher.Engine.Training.TrainingPrecision.Bf16, bf16.Precision);
        Assert.Equal(WeakTeacher.Engine.Training.TrainingPrecision.Fp32, RequestTranslation.Sft("sft", new V1.SftConfig { Args = new V1.TrainingArguments() }).Precision);
        var bad = Assert.Throws<RpcException>(() => RequestTranslation.Sft("sft", new V1.SftConfig { Args = new V1.TrainingArguments { Precision = "fp16" } }));
        Assert.Equal(StatusCode.InvalidArgument, bad.StatusCode);
        Assert.Contains("sft.args.precision", bad.Status.Detail);
        Assert.Contains("fp32, bf16", bad.Status.Detail);
    }

    [Fact]
    public void PaddingFreeTranslatesForEveryTrainerAndDefaultsOff()
    {
        Assert.True(RequestTranslation.Dpo("dpo", new V1.DpoConfig { Args = new V1.TrainingArguments { PaddingFree = true } }).PaddingFree);
        Assert.True(RequestTranslation.Sft("sft", new V1.SftConfig { Args = new V1.TrainingArguments { PaddingFree = true } }).PaddingFree);
        Assert.False(RequestTranslation.Sft("sft", new V1.SftConfig { Args = new V1.TrainingArguments() }).PaddingFree);
        Assert.False(RequestTranslation.Dpo("dpo", new V1.DpoConfig()).PaddingFree);
    }
}
