using TorchSharp;
using WeakTeacher.Engine.Runtime;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Runtime;

public class DeviceSpecTests
{
    [Theory]
    [InlineData("cpu", "cpu")]
    [InlineData(" CPU ", "cpu")]
    [InlineData("cuda", "cuda:0")]
    [InlineData("cuda:3", "cuda:3")]
    [InlineData("CUDA:1", "cuda:1")]
    public void ParsesDeviceNames(string text, string expected)
        => Assert.Equal(expected, DeviceSpec.Parse(text).ToString());

    [Theory]
    [InlineData("gpu")]
    [InlineData("cuda:")]
    [InlineData("cuda:-1")]
    [InlineData("cuda:x")]
    [InlineData("")]
    public void RejectsOtherNamesSayingWhere(string text)
    {
        var e = Assert.Throws<ArgumentException>(() => DeviceSpec.Parse(text, "--device"));
        Assert.Equal("--device", e.ParamName);
        Assert.Contains("cpu, cuda or cuda:N", e.Message);
    }

    [Fact]
    public void TheOptionWinsAndCpuIsTheDefault()
    {
        Assert.Equal(new DeviceSpec(DeviceType.CUDA, 2), TorchDevice.Resolve("cuda:2"));
        if (Environment.GetEnvironmentVariable(TorchDevice.DeviceVariable) is null)
            Assert.Equal(DeviceSpec.Cpu, TorchDevice.Resolve(null));
    }
}

public class TorchDeviceTests
{
    private static bool MachineHasGpu => File.Exists("/dev/nvidia0") || File.Exists("/dev/nvidiactl");

    [Fact]
    public void CpuInitialisesAndAppliesThreads()
    {
        var device = TorchDevice.Initialize(new RuntimeOptions { Device = "cpu", Threads = 2 });
        Assert.Equal(DeviceType.CPU, device.type);
        Assert.Equal(2, torch.get_num_threads());
        Assert.Throws<ArgumentOutOfRangeException>(() => TorchDevice.Initialize(new RuntimeOptions { Device = "cpu", Threads = 0 }));
    }

    [Fact]
    public void CudaWithoutAGpuSaysWhatWasTried()
    {
        Assert.SkipWhen(MachineHasGpu, "this machine has a GPU; the failure path is tested where there is none");
        using var warm = ones(2); // the CPU libtorch is loaded now, as it is in any real process by this point

        string missing = Path.Combine(Path.GetTempPath(), "wt-no-such-torch", "lib");
        var e = Assert.Throws<DeviceUnavailableException>(() =>
            TorchDevice.Initialize(new RuntimeOptions { Device = "cuda:0", TorchLib = missing }));

        Assert.Equal("cuda:0", e.RequestedDevice);
        Assert.Contains(e.Attempts, a => a.Contains(missing) && a.Contains("does not exist"));
        Assert.Contains(e.Attempts, a => a.Contains("TORCH_LIB"));
        Assert.Contains(e.Attempts, a => a.Contains("LD_LIBRARY_PATH"));
        Assert.Contains(e.Attempts, a => a.Contains("python3") && a.Contains("import torch"));
        foreach (var attempt in e.Attempts) Assert.Contains(attempt, e.Message);
        Assert.False(TorchDevice.CudaReady);
        Assert.Equal(7f, (ones(2) * 3.5f).sum().item<float>()); // torch still works on the CPU
    }

    [Fact]
    public void AFolderWithLibtorchCudaIsNotLoadedOverTheRunningLibtorch()
    {
        Assert.SkipWhen(MachineHasGpu, "this machine has a GPU; the failure path is tested where there is none");
        using var warm = ones(2);
        string folder = Directory.CreateTempSubdirectory("wt-fake-torch-").FullName;
        try
        {
            // a folder that looks like torch/lib: it must be refused, not dlopen'ed into a process whose
            // LibTorchSharp is already bound to another libtorch
            File.WriteAllBytes(Path.Combine(folder, "libtorch_cuda.so"), Array.Empty<byte>());
            File.WriteAllBytes(Path.Combine(folder, "libtorch.so"), Array.Empty<byte>());
            var e = Assert.Throws<DeviceUnavailableException>(() =>
                TorchDevice.Initialize(new RuntimeOptions { Device = "cuda", TorchLib = folder, Python = "/nonexistent/python3" }));
            Assert.Contains(e.Attempts, a => a.Contains(folder) && a.Contains("already loaded"));
            // with LibTorchSharp bound already, no later location can help, and none is loaded
            Assert.Contains(e.Attempts, a => a.Contains("no further locations tried"));
            Assert.DoesNotContain(e.Attempts, a => a.Contains("/nonexistent/python3"));
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    [Fact]
    public void LoadedLibrariesFindsTheRunningLibtorch()
    {
        using var warm = ones(2);
        var paths = TorchDevice.LoadedLibraries("libtorch_cpu.so");
        Assert.NotEmpty(paths);
        Assert.All(paths, p => Assert.True(File.Exists(p), p));
    }
}

[Collection(nameof(SeedsTests))]
[CollectionDefinition(nameof(SeedsTests), DisableParallelization = true)]
public class SeedsTests
{
    [Fact]
    public void SameSeedSameNumbers()
    {
        Seeds.Set(42);
        var a = randn(5).data<float>().ToArray();
        int ra = Seeds.NewRandom("shuffle").Next();
        Seeds.Set(42);
        var b = randn(5).data<float>().ToArray();
        int rb = Seeds.NewRandom("shuffle").Next();
        Assert.Equal(a, b);
        Assert.Equal(ra, rb);
        Assert.Equal(42, Seeds.Current);
        Assert.NotEqual(Seeds.Derive(42, "shuffle"), Seeds.Derive(42, "split"));
        Assert.NotEqual(Seeds.Derive(42, "shuffle"), Seeds.Derive(43, "shuffle"));
    }

    [Fact]
    public void GeneratorsAreIndependentOfTheGlobalSeed()
    {
        using var g1 = Seeds.NewGenerator(7);
        var a = rand(4, generator: g1).data<float>().ToArray();
        Seeds.Set(1);
        using var g2 = Seeds.NewGenerator(7);
        var b = rand(4, generator: g2).data<float>().ToArray();
        Assert.Equal(a, b);
    }
}
