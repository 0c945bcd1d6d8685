using TorchSharp;
using WeakTeacher.Engine.Generation;
using WeakTeacher.Engine.Models;
using WeakTeacher.Tests.Models;
using Xunit;
using static TorchSharp.torch;
using Generator = WeakTeacher.Engine.Generation.Generator;

namespace WeakTeacher.Tests.Generation;

/// <summary>
/// Generation on the tiny Hugging Face checkpoints of tests/fixtures/hf-parity (and hf-own) against what transformers'
/// generate() produced on them (expected.safetensors: gen_input_ids / gen_attention_mask [2, 6] left-padded,
/// gen_output [2, 12] from greedy generate with max_new_tokens = min_new_tokens = 6).
/// Runs on the device WT_DEVICE names (cpu by default), so the same tests check CUDA on a GPU machine.
/// </summary>
public class HfGenerationParityTests
{
    public static TheoryData<string> FixtureNames => new(Fixtures.ParityNames);

    private static long[] Flat(Tensor t) => t.cpu().to(ScalarType.Int64).data<long>().ToArray();

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void GreedyGenerationMatchesTransformersTokenForToken(string name)
    {
        using var model = Fixtures.Load(name);
        var expected = Fixtures.Expected(name);
        var ids = expected["gen_input_ids"];
        var mask = expected["gen_attention_mask"];
        var output = expected["gen_output"];
        int newTokens = (int)(output.shape[1] - ids.shape[1]);
        Assert.Equal(6, newTokens);
        // as the fixture script called generate(): pad_token_id = the config's, else 0
        var options = new GenerationOptions { MaxNewTokens = newTokens, MinNewTokens = newTokens, PadTokenId = model.Config.PadTokenId ?? 0 };
        using var result = Generator.Generate(model, ids.to(Fixtures.Device), mask.to(Fixtures.Device), options);
        Assert.Equal(output.shape, result.Sequences.shape);
        Assert.Equal(Flat(output), Flat(result.Sequences));
        foreach (var t in expected.Values) t.Dispose();
    }

    /// <summary>The output head through the system OpenBLAS (the default where it is installed) and through libtorch
    /// (WT_HOST_BLAS=torch) give transformers' tokens alike.</summary>
    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void GreedyGenerationIsTheSameWithEitherHeadBlas(string name)
    {
        using var model = Fixtures.Load(name);
        var expected = Fixtures.Expected(name);
        var ids = expected["gen_input_ids"].to(Fixtures.Device);
        var mask = expected["gen_attention_mask"].to(Fixtures.Device);
        var options = new GenerationOptions { MaxNewTokens = 6, MinNewTokens = 6, PadTokenId = model.Config.PadTokenId ?? 0 };
        bool enabled = WeakTeacher.CudaKernels.HostBlas.Enabled;
        try
        {
            foreach (bool openBlas in new[] { true, false })
            {
                WeakTeacher.CudaKernels.HostBlas.Enabled = openBlas;
                // an installed OpenBLAS must serve the CPU head: otherwise this compares libtorch with itself
                if (openBlas && Fixtures.Device.type == DeviceType.CPU && OperatingSystem.IsLinux()
                    && File.Exists("/usr/lib/x86_64-linux-gnu/libopenblas.so.0"))
                    Assert.True(WeakTeacher.CudaKernels.HostBlas.Available, WeakTeacher.CudaKernels.HostBlas.Description);
                using var result = Generator.Generate(model, ids, mask, options);
                Assert.Equal(Flat(expected["gen_output"]), Flat(result.Sequences));
            }
        }
        finally { WeakTeacher.CudaKernels.HostBlas.Enabled = enabled; }
        foreach (var t in expected.Values) t.Dispose();
        ids.Dispose();
        mask.Dispose();
    }

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void CachedGenerationEqualsRecomputingEveryStep(string name)
    {
        using var model = Fixtures.Load(name);
        var expected = Fixtures.Expected(name);
        var ids = expected["gen_input_ids"].to(Fixtures.Device);
        var mask = expected["gen_attention_mask"].to(Fixtures.Device);
        var options = new GenerationOptions { MaxNewTokens = 20 };
        using var cached = Generator.Generate(model, ids, mask, options);
        using var recomputed = Generator.Generate(model, ids, mask, options with { UseKvCache = false });
        using var keptInBatch = Generator.Generate(model, ids, mask, options with { DropFinished = false });
        Assert.Equal(Flat(recomputed.Sequences), Flat(cached.Sequences));
        Assert.Equal(Flat(recomputed.AttentionMask), Flat(cached.AttentionMask));
        Assert.Equal(Flat(cached.Sequences), Flat(keptInBatch.Sequences));
        foreach (var t in expected.Values) t.Dispose();
    }

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void LeftPaddingDoesNotChangeTheContinuation(string name)
    {
        using var model = Fixtures.Load(name);
        var expected = Fixtures.Expected(name);
        var ids = expected["gen_input_ids"];
        var mask = expected["gen_attention_mask"];
        var options = new GenerationOptions { MaxNewTokens = 8, MinNewTokens = 8 };
        using var batched = Generator.Generate(model, ids.to(Fixtures.Device), mask.to(Fixtures.Device), options);
        // row 0 of the fixture has two pads in front; alone and unpadded it must continue the same way
        long pads = 2;
        Assert.Equal(new long[] { 0, 0 }, Flat(mask[0].narrow(0, 0, pads)));
        var alone = ids[0].narrow(0, pads, ids.shape[1] - pads).unsqueeze(0);
        using var single = Generator.Generate(model, alone.to(Fixtures.Device), torch.ones_like(alone).to(Fixtures.Device), options);
        Assert.Equal(batched.NewTokens[0], single.NewTokens[0]);
        foreach (var t in expected.Values) t.Dispose();
    }
}
