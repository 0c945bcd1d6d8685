using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Runtime;

/// <summary>A parsed device name: "cpu", "cuda" (= cuda:0) or "cuda:N".</summary>
public readonly record struct DeviceSpec(DeviceType Type, int Index)
{
    public static DeviceSpec Cpu => new(DeviceType.CPU, -1);

    public bool IsCuda => Type == DeviceType.CUDA;

    /// <summary>Parses <paramref name="text"/>; <paramref name="source"/> names where it came from for the error.</summary>
    public static DeviceSpec Parse(string text, string source = "device")
    {
        ArgumentNullException.ThrowIfNull(text, source);
        string t = text.Trim().ToLowerInvariant();
        if (t == "cpu") return Cpu;
        if (t == "cuda") return new(DeviceType.CUDA, 0);
        if (t.StartsWith("cuda:", StringComparison.Ordinal)
            && int.TryParse(t.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out int index))
            return new(DeviceType.CUDA, index);
        throw new ArgumentException($"{source}: '{text}' is not a device; use cpu, cuda or cuda:N.", source);
    }

    /// <summary>The TorchSharp device. Creating it touches no native code.</summary>
    public Device ToTorch() => IsCuda ? new Device(DeviceType.CUDA, Index) : new Device(DeviceType.CPU, -1);

    public override string ToString() => IsCuda ? $"cuda:{Index}" : "cpu";
}

/// <summary>How the process should run torch: which device, which libtorch for CUDA, how many threads.</summary>
public sealed record RuntimeOptions
{
    /// <summary>"cpu", "cuda" or "cuda:N"; null = environment variable WT_DEVICE, else cpu.</summary>
    public string? Device { get; init; }

    /// <summary>
    /// The torch/lib folder of a CUDA PyTorch installation; null = environment variable TORCH_LIB, then the
    /// LD_LIBRARY_PATH entries that hold libtorch_cuda.so, then what `python3 -c "import torch"` reports.
    /// </summary>
    public string? TorchLib { get; init; }

    /// <summary>torch.set_num_threads (intra-op threads); null leaves torch's default (one per core).</summary>
    public int? Threads { get; init; }

    /// <summary>The Python used to locate an installed PyTorch.</summary>
    public string Python { get; init; } = "python3";
}

/// <summary>
/// Selects the torch device for the process and, for CUDA, makes TorchSharp use the libtorch of a PyTorch
/// installation.
/// <para>
/// Why preloading works: TorchSharp loads <c>torch_cuda</c> and then <c>LibTorchSharp</c> by name
/// (NativeLibrary.TryLoad relative to TorchSharp.dll, then the system search, where LD_LIBRARY_PATH wins).
/// libLibTorchSharp.so needs libtorch.so, libc10.so and libtorch_cpu.so by soname; the dynamic linker
/// satisfies a soname from a library already loaded in the process before it searches any folder. So loading
/// PyTorch's libtorch_cuda.so (which pulls in its libc10/libtorch_cpu/libc10_cuda and the CUDA libraries
/// through its own RUNPATH) and libtorch.so by full path, before TorchSharp's first native call, binds
/// LibTorchSharp to PyTorch's CUDA libtorch even where a CPU libtorch sits next to the application.
/// </para>
/// <para>
/// The choice is once per process: the first tensor, seed or thread setting loads LibTorchSharp against
/// whatever libtorch is found then. Call <see cref="Initialize(RuntimeOptions?)"/> before any other torch use.
/// </para>
/// </summary>
public static class TorchDevice
{
    public const string DeviceVariable = "WT_DEVICE";
    public const string TorchLibVariable = "TORCH_LIB";

    private static readonly object Gate = new();
    private static string? _cudaTorchLib;

    /// <summary>The torch/lib folder CUDA libtorch was loaded from, once CUDA is initialised.</summary>
    public static string? CudaTorchLib => _cudaTorchLib;

    /// <summary>True once CUDA has been initialised by <see cref="Initialize(RuntimeOptions?)"/>.</summary>
    public static bool CudaReady => _cudaTorchLib is not null;

    /// <summary>Picks the device: the option, else WT_DEVICE, else cpu.</summary>
    public static DeviceSpec Resolve(string? device)
    {
        if (!string.IsNullOrWhiteSpace(device)) return DeviceSpec.Parse(device, "device");
        string? fromEnv = Environment.GetEnvironmentVariable(DeviceVariable);
        if (!string.IsNullOrWhiteSpace(fromEnv)) return DeviceSpec.Parse(fromEnv, $"environment variable {DeviceVariable}");
        return DeviceSpec.Cpu;
    }

    /// <summary>Shorthand for <see cref="Initialize(RuntimeOptions?)"/>.</summary>
    public static Device Initialize(string? device, string? torchLib = null, int? threads = null)
        => Initialize(new RuntimeOptions { Device = device, TorchLib = torchLib, Threads = threads });

    /// <summary>
    /// Resolves the device, loads CUDA libtorch when it is a CUDA device, then applies the thread setting.
    /// Throws <see cref="DeviceUnavailableException"/> listing every libtorch location tried when CUDA cannot
    /// be used.
    /// </summary>
    public static Device Initialize(RuntimeOptions? options = null)
    {
        options ??= new RuntimeOptions();
        NativeHeap.Configure();
        if (options.Threads is int n && n <= 0)
            throw new ArgumentOutOfRangeException(nameof(RuntimeOptions.Threads), n, "RuntimeOptions.Threads must be positive.");
        var spec = Resolve(options.Device);
        if (spec.IsCuda) EnsureCuda(spec, options.TorchLib, options.Python);
        if (options.Threads is int threads) SetThreads(threads);
        return spec.ToTorch();
    }

    /// <summary>Sets torch's intra-op thread count.</summary>
    public static void SetThreads(int threads)
    {
        if (threads <= 0) throw new ArgumentOutOfRangeException(nameof(threads), threads, "Thread count must be positive.");
        torch.set_num_threads(threads);
    }

    /// <summary>Blocks until queued GPU work is done (no-op on CPU), so wall-clock timings mean something.</summary>
    public static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA) torch.cuda.synchronize(device);
    }

    /// <summary>A one-line description: the device and, for CUDA, its name and the libtorch folder.</summary>
    public static string Describe(Device device)
    {
        if (device.type != DeviceType.CUDA) return $"cpu ({torch.get_num_threads()} threads)";
        return $"{device} ({GpuName(device.index < 0 ? 0 : device.index) ?? "GPU"}), libtorch from {_cudaTorchLib}";
    }

    /// <summary>Name of GPU <paramref name="index"/> from nvidia-smi, or null where it cannot be asked.</summary>
    public static string? GpuName(int index)
    {
        string? output = RunTool("nvidia-smi", new[] { "--query-gpu=name", "--format=csv,noheader", $"--id={index}" }, 20_000, out _);
        return string.IsNullOrWhiteSpace(output) ? null : output.Trim().Split('\n')[0].Trim();
    }

    /// <summary>Full paths of the mapped libraries of this process whose file name is <paramref name="fileName"/>.</summary>
    public static IReadOnlyList<string> LoadedLibraries(string fileName) =>
        WeakTeacher.CudaKernels.Native.MappedLibraries.All().Where(p => Path.GetFileName(p) == fileName).ToList();

    private static void EnsureCuda(DeviceSpec spec, string? torchLibSetting, string python)
    {
        lock (Gate)
        {
            if (_cudaTorchLib is null)
            {
                var attempts = new List<string>();
                var tried = new HashSet<string>(StringComparer.Ordinal);
                foreach (var (source, folder) in Candidates(torchLibSetting, python, attempts))
                {
                    string full = Path.GetFullPath(folder);
                    if (!tried.Add(full)) continue;
                    string? why = TryLoadFrom(full, out bool bound);
                    if (why is null) { _cudaTorchLib = full; break; }
                    attempts.Add($"{source}: {full}: {why}");
                    if (bound)
                    {
                        // LibTorchSharp is now loaded against some libtorch; no later folder can change that
                        attempts.Add("(no further locations tried: LibTorchSharp is loaded now and stays bound to that libtorch)");
                        break;
                    }
                }
                if (_cudaTorchLib is null)
                    throw new DeviceUnavailableException(spec.ToString(), attempts,
                        $"Point {TorchLibVariable} (or RuntimeOptions.TorchLib) at the torch/lib folder of a CUDA build of PyTorch, " +
                        "on a machine with an NVIDIA GPU and driver, and select the device before any other torch call.");
            }
            int count = (int)torch.cuda.device_count();
            if (spec.Index >= count)
                throw new DeviceUnavailableException(spec.ToString(), new[]
                {
                    $"libtorch at {_cudaTorchLib}: CUDA works but sees {count} device(s); index {spec.Index} is out of range " +
                    $"(CUDA_VISIBLE_DEVICES={Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES") ?? "unset"})",
                });
        }
    }

    /// <summary>Where a CUDA libtorch may be, in order; sources that give no folder say why in <paramref name="attempts"/>.</summary>
    private static IEnumerable<(string Source, string Folder)> Candidates(string? setting, string python, List<string> attempts)
    {
        if (!string.IsNullOrWhiteSpace(setting)) yield return ("setting TorchLib", setting);

        string? env = Environment.GetEnvironmentVariable(TorchLibVariable);
        if (!string.IsNullOrWhiteSpace(env)) yield return ($"environment variable {TorchLibVariable}", env);
        else attempts.Add($"environment variable {TorchLibVariable}: not set");

        string? ldPath = Environment.GetEnvironmentVariable("LD_LIBRARY_PATH");
        var ldFolders = (ldPath ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Where(d => File.Exists(Path.Combine(d, "libtorch_cuda.so"))).ToList();
        if (ldFolders.Count == 0)
            attempts.Add(ldPath is null ? "LD_LIBRARY_PATH: not set" : $"LD_LIBRARY_PATH ({ldPath}): no entry holds libtorch_cuda.so");
        foreach (var d in ldFolders) yield return ("LD_LIBRARY_PATH entry", d);

        const string script = "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))";
        string? output = RunTool(python, new[] { "-c", script }, 120_000, out string failure);
        string? folder = output?.Trim().Split('\n')[^1].Trim();
        if (string.IsNullOrEmpty(folder)) attempts.Add($"{python} -c \"import torch\": {failure}");
        else yield return ($"{python} -c \"import torch\"", folder);
    }

    /// <summary>Loads CUDA libtorch from <paramref name="folder"/> and initialises CUDA; null on success, else why not.</summary>
    private static string? TryLoadFrom(string folder, out bool bound)
    {
        bound = false;
        if (!Directory.Exists(folder)) return "folder does not exist";
        string cudaLib = Path.Combine(folder, "libtorch_cuda.so");
        if (!File.Exists(cudaLib)) return "no libtorch_cuda.so there (a CPU-only libtorch?)";
        foreach (var other in LoadedLibraries("libtorch_cpu.so"))
            if (Path.GetDirectoryName(other) != folder)
            {
                bound = LoadedLibraries("libLibTorchSharp.so").Count > 0;
                return $"another libtorch ({other}) is already loaded in this process, so LibTorchSharp would bind to it; " +
                       "select the device before creating any tensor";
            }
        // libtorch_cuda first: it is the one that fails when CUDA libraries are missing, and a failed dlopen
        // leaves nothing behind that could shadow a later candidate
        foreach (var name in new[] { "libtorch_cuda.so", "libtorch.so" })
        {
            string path = Path.Combine(folder, name);
            if (!File.Exists(path)) return $"{name} is missing";
            try { NativeLibrary.Load(path); }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                return $"loading {name} failed: {FirstLine(e.Message)}";
            }
        }
        bool available;
        bound = true;
        try { available = torch.TryInitializeDeviceType(DeviceType.CUDA); }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or DllNotFoundException or ExternalException)
        {
            return $"TorchSharp could not load LibTorchSharp against it: {FirstLine(e.Message)}";
        }
        if (!available)
            return "libtorch loaded, but torch.cuda.is_available() is false (no NVIDIA GPU or driver visible to this process; " +
                   $"CUDA_VISIBLE_DEVICES={Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES") ?? "unset"})";
        foreach (var loaded in LoadedLibraries("libtorch_cpu.so"))
            if (Path.GetDirectoryName(loaded) != folder)
                return $"CUDA initialised but a second libtorch ({loaded}) is mapped too; set LD_LIBRARY_PATH={folder}";
        return null;
    }

    /// <summary>Runs a tool; its stdout, or null with <paramref name="failure"/> saying why.</summary>
    private static string? RunTool(string file, string[] args, int timeoutMs, out string failure)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args) info.ArgumentList.Add(a);
        try
        {
            using var process = Process.Start(info)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(timeoutMs))
            {
                process.Kill(entireProcessTree: true);
                failure = $"timed out after {timeoutMs / 1000} s";
                return null;
            }
            process.WaitForExit();
            if (process.ExitCode != 0)
            {
                string err = stderr.Result.Trim();
                failure = $"exit code {process.ExitCode}: {(err.Length == 0 ? "(no output)" : err.Split('\n')[^1].Trim())}";
                return null;
            }
            failure = "";
            return stdout.Result;
        }
        catch (Win32Exception e)
        {
            failure = $"could not be run ({e.Message})";
            return null;
        }
    }

    private static string FirstLine(string s) => s.Split('\n')[0].Trim();
}
