using System.Diagnostics;
using WeakTeacher.CudaKernels.Cuda;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>
/// The CUDA kernels' logic checked without a GPU: the embedded .cu sources are compiled as C++ with g++ through
/// Emulation/cuda_shim.h (one thread per CUDA thread, real barriers and warp shuffles) and run by
/// Emulation/kernel_harness.cpp against float64 formulas. Skipped where g++ (C++20) is absent.
/// </summary>
public sealed class EmulatedKernelTests
{
    [Fact]
    public void KernelsAgreeWithFloat64WhenRunOnTheCpu()
    {
        var compiler = FindOnPath("g++");
        Assert.SkipWhen(compiler is null, "g++ is not installed");
        var dir = Path.Combine(Path.GetTempPath(), "wt-kernel-emulation-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            foreach (var file in new[] { "cuda_shim.h", "kernel_harness.cpp" })
                File.Copy(Path.Combine(AppContext.BaseDirectory, "Emulation", file), Path.Combine(dir, file));
            foreach (var file in KernelCache.EmbeddedFiles())
                File.WriteAllText(Path.Combine(dir, file), KernelCache.Source(file));

            var (compileCode, compileOutput) = Run(compiler!, dir, "-std=c++20", "-O0", "-pthread", "-w", "-o", "harness", "kernel_harness.cpp");
            Assert.True(compileCode == 0, "g++ failed on the kernels:\n" + compileOutput);
            var (code, output) = Run(Path.Combine(dir, "harness"), dir);
            Assert.True(code == 0, "kernel emulation found disagreements:\n" + output);
            Assert.Matches(@"\d+ passed, 0 failed", output);
        }
        finally { Directory.Delete(dir, true); }
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    private static (int Code, string Output) Run(string file, string workingDirectory, params string[] args)
    {
        var info = new ProcessStartInfo(file) { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(120_000)) { process.Kill(true); return (-1, "timed out after 120 s"); }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }
}
