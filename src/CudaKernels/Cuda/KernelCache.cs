using System.Reflection;
using System.Security.Cryptography;
using System.Text;

namespace WeakTeacher.CudaKernels.Cuda;

/// <summary>
/// The embedded .cu sources and the on-disk cubin cache. A cubin is stored under the SHA-256 of (source, architecture,
/// NVRTC options, NVRTC version), so a restart loads it instead of compiling, and any change to one of those compiles
/// afresh. The folder is WT_KERNEL_CACHE or ~/.cache/weakteacher/kernels.
/// </summary>
internal static class KernelCache
{
    internal static string Directory
    {
        get
        {
            var env = Environment.GetEnvironmentVariable("WT_KERNEL_CACHE");
            if (!string.IsNullOrWhiteSpace(env)) return env;
            var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
            if (string.IsNullOrEmpty(home)) home = Path.GetTempPath();
            return Path.Combine(home, ".cache", "weakteacher", "kernels");
        }
    }

    /// <summary>The source of an embedded kernel file (e.g. "token_logprobs.cu").</summary>
    internal static string Source(string file)
    {
        var name = "WeakTeacher.CudaKernels.Kernels." + file;
        using var stream = typeof(KernelCache).Assembly.GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"Kernel source {name} is not embedded in {typeof(KernelCache).Assembly.GetName().Name}.");
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    }

    internal static IReadOnlyList<string> EmbeddedFiles() =>
        typeof(KernelCache).Assembly.GetManifestResourceNames()
            .Where(n => n.StartsWith("WeakTeacher.CudaKernels.Kernels.", StringComparison.Ordinal) && n.EndsWith(".cu", StringComparison.Ordinal))
            .Select(n => n["WeakTeacher.CudaKernels.Kernels.".Length..])
            .OrderBy(n => n, StringComparer.Ordinal).ToList();

    /// <summary>NVRTC options for a compute capability: the real architecture (a cubin, no JIT at load).</summary>
    internal static IReadOnlyList<string> Options(int major, int minor) =>
        [$"--gpu-architecture=sm_{major}{minor}", "--std=c++17", "-default-device", "--use_fast_math"];

    /// <summary>Hex SHA-256 over the source, the architecture, the options (in order) and the compiler version, each
    /// length-prefixed so that no two different inputs concatenate to the same bytes.</summary>
    internal static string Key(string source, string architecture, IReadOnlyList<string> options, string compilerVersion)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Add(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            hash.AppendData(BitConverter.GetBytes(bytes.Length));
            hash.AppendData(bytes);
        }
        Add(source);
        Add(architecture);
        hash.AppendData(BitConverter.GetBytes(options.Count));
        foreach (var o in options) Add(o);
        Add(compilerVersion);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    internal static string PathFor(string directory, string file, string key) =>
        Path.Combine(directory, $"{Path.GetFileNameWithoutExtension(file)}-{key}.cubin");

    /// <summary>The cached cubin, or the compiler's output written to the cache (atomically: temp file + rename, so a
    /// crash or a concurrent process never leaves a torn file). <paramref name="compiled"/> tells which happened.</summary>
    internal static byte[] GetOrCompile(string file, string source, string architecture, IReadOnlyList<string> options,
        string compilerVersion, Func<byte[]> compile, out bool compiled, string? directory = null)
    {
        directory ??= Directory;
        var path = PathFor(directory, file, Key(source, architecture, options, compilerVersion));
        if (File.Exists(path))
        {
            var bytes = File.ReadAllBytes(path);
            if (bytes.Length > 0) { compiled = false; return bytes; }
        }
        var cubin = compile();
        compiled = true;
        try
        {
            System.IO.Directory.CreateDirectory(directory);
            var temp = path + "." + Environment.ProcessId + "." + Guid.NewGuid().ToString("N") + ".tmp";
            File.WriteAllBytes(temp, cubin);
            File.Move(temp, path, overwrite: true);
        }
        catch (IOException) { /* a read-only or full cache only costs a recompile next time */ }
        catch (UnauthorizedAccessException) { }
        return cubin;
    }
}
