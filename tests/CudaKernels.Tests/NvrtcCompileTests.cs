using System.Text;
using System.Text.RegularExpressions;
using WeakTeacher.CudaKernels.Cuda;
using WeakTeacher.CudaKernels.Native;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>
/// NVRTC needs no GPU: where the library is present (a GPU node, or a CPU machine with WT_NVRTC pointing at one) every
/// embedded kernel is compiled for Ampere and Hopper through the project's own binding, without warnings, and each
/// entry point the launches name is in the cubin. Skipped where NVRTC is absent.
/// </summary>
public sealed partial class NvrtcCompileTests
{
    [GeneratedRegex(@"extern ""C"" __global__ void (\w+)\(")]
    private static partial Regex EntryPoint();

    [Theory]
    [InlineData(8, 0)]
    [InlineData(9, 0)]
    public void EveryKernelCompilesWithoutWarnings(int major, int minor)
    {
        Assert.SkipUnless(Nvrtc.TryGet(out var nvrtc, out var reason), reason);
        foreach (var file in KernelCache.EmbeddedFiles())
        {
            var source = KernelCache.Source(file);
            var cubin = nvrtc!.CompileToCubin(source, file, KernelCache.Options(major, minor), out var log);
            Assert.True(string.IsNullOrWhiteSpace(log), $"{file} for sm_{major}{minor} (NVRTC {nvrtc.Version()}):\n{log}");
            Assert.Equal("\u007fELF", Encoding.ASCII.GetString(cubin, 0, 4));
            var text = Encoding.ASCII.GetString(cubin);
            var names = EntryPoint().Matches(source).Select(m => m.Groups[1].Value).ToList();
            Assert.NotEmpty(names);
            foreach (var name in names) Assert.Contains(name, text);
        }
    }

    [Fact]
    public void CompileErrorsCarryTheCompilerLog()
    {
        Assert.SkipUnless(Nvrtc.TryGet(out var nvrtc, out var reason), reason);
        var ex = Assert.Throws<CudaException>(() => nvrtc!.CompileToCubin("extern \"C\" __global__ void broken() { undefined_name = 1; }", "broken.cu", KernelCache.Options(8, 0)));
        Assert.Equal("NVRTC_ERROR_COMPILATION", ex.ErrorName);
        Assert.Contains("undefined_name", ex.Message);
    }
}
