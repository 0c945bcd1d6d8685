using System.Collections.Concurrent;
using WeakTeacher.CudaKernels.Native;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Cuda;

/// <summary>
/// Process-wide CUDA state: the driver and NVRTC bindings, one <see cref="CudaDevice"/> per ordinal (primary context
/// shared with libtorch). <see cref="IsAvailable"/> never throws; <see cref="EnsureAvailable"/> says why not.
/// </summary>
public static class CudaRuntime
{
    private static readonly Lazy<string> UnavailableReasonLazy = new(ProbeReason);
    private static readonly ConcurrentDictionary<int, CudaDevice> Devices = new();

    /// <summary>True when libcuda and NVRTC load, cuInit succeeds and there is at least one device.</summary>
    public static bool IsAvailable => UnavailableReasonLazy.Value.Length == 0;

    /// <summary>Why CUDA cannot be used ("" when it can).</summary>
    public static string UnavailableReason => UnavailableReasonLazy.Value;

    /// <summary>Throws <see cref="CudaUnavailableException"/> with the reason when CUDA cannot be used.</summary>
    public static void EnsureAvailable()
    {
        if (!IsAvailable) throw new CudaUnavailableException(UnavailableReason);
    }

    private static string ProbeReason()
    {
        if (!CudaDriver.TryGet(out var driver, out var reason)) return reason;
        try
        {
            if (driver!.DeviceCount() == 0) return "CUDA driver loaded but reports no device.";
        }
        catch (CudaException ex) { return ex.Message; }
        if (!Nvrtc.TryGet(out _, out var nvrtcReason)) return nvrtcReason;
        return "";
    }

    internal static CudaDriver Driver
    {
        get { EnsureAvailable(); return CudaDriver.Instance; }
    }

    /// <summary>The device of a CUDA tensor, its primary context made current on this thread.</summary>
    internal static CudaDevice DeviceOf(Tensor tensor)
    {
        if (tensor.device_type != TorchSharp.DeviceType.CUDA)
            throw new InvalidOperationException($"Expected a CUDA tensor, got one on {tensor.device}.");
        return Device(tensor.device_index < 0 ? 0 : tensor.device_index);
    }

    /// <summary>The device with this ordinal, its primary context made current on this thread.</summary>
    public static CudaDevice Device(int ordinal)
    {
        EnsureAvailable();
        var device = Devices.GetOrAdd(ordinal, o => new CudaDevice(CudaDriver.Instance, o));
        device.MakeCurrent();
        return device;
    }
}

/// <summary>One GPU: its retained primary context (the one libtorch's runtime uses), compute capability and the
/// kernels loaded into it (compiled by NVRTC on first use, cached on disk).</summary>
public sealed class CudaDevice
{
    private readonly CudaDriver _driver;
    private readonly int _device;
    private readonly IntPtr _context;
    private readonly ConcurrentDictionary<string, IntPtr> _modules = new();
    private readonly ConcurrentDictionary<(string File, string Name), IntPtr> _functions = new();
    private readonly object _compileLock = new();

    internal CudaDevice(CudaDriver driver, int ordinal)
    {
        _driver = driver;
        Ordinal = ordinal;
        _device = driver.DeviceGet(ordinal);
        _context = driver.DevicePrimaryCtxRetain(_device);
        driver.CtxSetCurrent(_context);
        Name = driver.DeviceGetName(_device);
        Major = driver.DeviceGetAttribute(CudaDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, _device);
        Minor = driver.DeviceGetAttribute(CudaDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, _device);
        MultiprocessorCount = driver.DeviceGetAttribute(CudaDriver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, _device);
    }

    public int Ordinal { get; }
    public string Name { get; }
    public int Major { get; }
    public int Minor { get; }
    public int MultiprocessorCount { get; }
    public string Architecture => $"sm_{Major}{Minor}";

    /// <summary>How many kernel files were compiled by NVRTC (rather than loaded from the disk cache) in this process.</summary>
    public int CompiledCount { get; private set; }

    internal CudaDriver Driver => _driver;

    internal void MakeCurrent() => _driver.CtxSetCurrent(_context);

    /// <summary>Waits for all work on the device (torch's and ours).</summary>
    public void Synchronize() { MakeCurrent(); _driver.CtxSynchronize(); }

    /// <summary>(free, total) device memory in bytes, from cuMemGetInfo.</summary>
    public (ulong Free, ulong Total) MemoryInfo() { MakeCurrent(); return _driver.MemGetInfo(); }

    internal IntPtr Function(string file, string name)
    {
        if (_functions.TryGetValue((file, name), out var f)) return f;
        var module = Module(file);
        f = _driver.ModuleGetFunction(module, name);
        _functions[(file, name)] = f;
        return f;
    }

    private IntPtr Module(string file)
    {
        if (_modules.TryGetValue(file, out var m)) return m;
        lock (_compileLock)
        {
            if (_modules.TryGetValue(file, out m)) return m;
            var source = KernelCache.Source(file);
            var options = KernelCache.Options(Major, Minor);
            var nvrtc = Nvrtc.Instance;
            var cubin = KernelCache.GetOrCompile(file, source, Architecture, options, nvrtc.Version(),
                () => nvrtc.CompileToCubin(source, file, options), out bool compiled);
            if (compiled) CompiledCount++;
            MakeCurrent();
            m = _driver.ModuleLoadData(cubin);
            _modules[file] = m;
            return m;
        }
    }

    /// <summary>Loads (compiling if needed) every embedded kernel file; returns how many were compiled now.</summary>
    public int Warmup()
    {
        int before = CompiledCount;
        foreach (var file in KernelCache.EmbeddedFiles()) Module(file);
        return CompiledCount - before;
    }
}
