using WeakTeacher.CudaKernels.Cuda;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>NVRTC cache keys and the on-disk cache, without a GPU (the compiler is a stand-in function).</summary>
public sealed class KernelCacheTests
{
    private static readonly string[] Options = ["--gpu-architecture=sm_90", "--std=c++17"];

    [Fact]
    public void KeyIsDeterministicAndCoversEveryInput()
    {
        string key = KernelCache.Key("src", "sm_90", Options, "13.0");
        Assert.Equal(64, key.Length);
        Assert.Equal(key, KernelCache.Key("src", "sm_90", ["--gpu-architecture=sm_90", "--std=c++17"], "13.0"));
        Assert.NotEqual(key, KernelCache.Key("src ", "sm_90", Options, "13.0"));
        Assert.NotEqual(key, KernelCache.Key("src", "sm_80", Options, "13.0"));
        Assert.NotEqual(key, KernelCache.Key("src", "sm_90", ["--std=c++17", "--gpu-architecture=sm_90"], "13.0"));
        Assert.NotEqual(key, KernelCache.Key("src", "sm_90", Options, "12.8"));
        // length prefixes: moving a character across a boundary changes the key
        Assert.NotEqual(KernelCache.Key("ab", "c", [], "v"), KernelCache.Key("a", "bc", [], "v"));
        // the scheme written out independently (SHA-256 of length-prefixed UTF-8 fields, little-endian int32 lengths,
        // the option count before the options): a change of the scheme would silently orphan every cache
        Assert.Equal("d8ddf66c51d6754375fead388ba776013a837136904f2b83cd803c20bd174111", key);
    }

    [Fact]
    public void OptionsNameTheRealArchitecture()
    {
        Assert.Contains("--gpu-architecture=sm_90", KernelCache.Options(9, 0));
        Assert.Contains("--gpu-architecture=sm_86", KernelCache.Options(8, 6));
    }

    [Fact]
    public void SecondRequestLoadsFromDiskWithoutCompiling()
    {
        var dir = Path.Combine(Path.GetTempPath(), "wt-kernel-cache-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            int compiles = 0;
            byte[] Compile() { compiles++; return [1, 2, 3, (byte)compiles]; }
            var first = KernelCache.GetOrCompile("k.cu", "source", "sm_90", Options, "13.0", Compile, out bool compiled1, dir);
            var second = KernelCache.GetOrCompile("k.cu", "source", "sm_90", Options, "13.0", Compile, out bool compiled2, dir);
            Assert.True(compiled1);
            Assert.False(compiled2);
            Assert.Equal(1, compiles);
            Assert.Equal(first, second);
            Assert.Single(Directory.GetFiles(dir, "k-*.cubin"));
            Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
            // another architecture is another entry
            KernelCache.GetOrCompile("k.cu", "source", "sm_80", Options, "13.0", Compile, out bool compiled3, dir);
            Assert.True(compiled3);
            // an empty (torn) file is not trusted
            var path = KernelCache.PathFor(dir, "k.cu", KernelCache.Key("source", "sm_90", Options, "13.0"));
            File.WriteAllBytes(path, []);
            KernelCache.GetOrCompile("k.cu", "source", "sm_90", Options, "13.0", Compile, out bool compiled4, dir);
            Assert.True(compiled4);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void KernelSourcesAreEmbeddedWithTheEntryPointsTheLaunchesUse()
    {
        Assert.Equal(["preference.cu", "token_logprobs.cu"], KernelCache.EmbeddedFiles());
        var logprobs = KernelCache.Source("token_logprobs.cu");
        foreach (var name in new[] { "logprob_forward_f32", "logprob_forward_bf16", "logprob_backward_f32", "logprob_backward_bf16" })
            Assert.Contains($"extern \"C\" __global__ void {name}(", logprobs);
        var preference = KernelCache.Source("preference.cu");
        Assert.Contains("extern \"C\" __global__ void preference_loss(", preference);
        Assert.Contains("extern \"C\" __global__ void preference_label(", preference);
        foreach (var source in new[] { logprobs, preference })
        {
            Assert.StartsWith("// ", source);
            Assert.Contains("Bound:", source);
            Assert.DoesNotContain("#include", source);   // NVRTC gets no include path
        }
    }
}
