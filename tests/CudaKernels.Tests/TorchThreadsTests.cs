using WeakTeacher.CudaKernels.Native;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>The CPU kernels' parts on libtorch's own OpenMP threads (<see cref="TorchThreads"/>).</summary>
public sealed unsafe class TorchThreadsTests
{
    [Fact]
    public void TheThreadsAreLibtorchsWhereItsLibgompIsMapped()
    {
        using var loaded = ones(1);   // libtorch loaded
        var mapped = MappedLibraries.All();
        var torchDir = mapped.Where(p => Path.GetFileName(p) == "libtorch_cpu.so").Select(Path.GetDirectoryName).FirstOrDefault();
        bool gomp = mapped.Any(p => Path.GetDirectoryName(p) == torchDir && Path.GetFileName(p).StartsWith("libgomp", StringComparison.Ordinal));
        Assert.SkipUnless(gomp, "this libtorch maps no libgomp of its own");
        Assert.True(TorchThreads.OnTorchThreads);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(7)]
    public void EveryPartRunsOnce(int parts)
    {
        var counts = new int[parts];
        fixed (int* p = counts) TorchThreads.For(parts, &Count, p);
        Assert.All(counts, c => Assert.Equal(1, c));
    }

    private static void Count(void* data, int part, int parts) => Interlocked.Increment(ref ((int*)data)[part]);
}
