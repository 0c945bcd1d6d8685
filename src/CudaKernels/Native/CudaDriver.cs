using System.Runtime.InteropServices;

namespace WeakTeacher.CudaKernels.Native;

/// <summary>
/// Typed binding of the CUDA driver API (libcuda.so.1), loaded lazily through <see cref="NativeLibrary"/> so that a
/// machine without the driver gets a <see cref="CudaUnavailableException"/> instead of a crash. Every call goes through
/// <see cref="Check"/>, which turns a non-zero CUresult into a <see cref="CudaException"/> naming the call.
/// </summary>
internal sealed unsafe class CudaDriver
{
    internal const string DefaultLibrary = "libcuda.so.1";
    internal const int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    internal const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    internal const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
    internal const int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
    internal const uint CU_MEMHOSTALLOC_PORTABLE = 0x01;
    internal const uint CU_EVENT_DEFAULT = 0x0;
    internal const uint CU_EVENT_DISABLE_TIMING = 0x2;
    internal const int CUDA_SUCCESS = 0;
    internal const int CUDA_ERROR_NOT_READY = 600;

    /// <summary>The legacy default stream (stream 0): libtorch, without a stream API in TorchSharp, runs there too.</summary>
    internal static readonly IntPtr DefaultStream = IntPtr.Zero;

    private static readonly Lazy<(CudaDriver? Driver, string Reason)> Shared = new(() => TryCreate([DefaultLibrary, "libcuda.so"]));

    /// <summary>The process's driver binding, or an exception that says why there is none.</summary>
    internal static CudaDriver Instance => Shared.Value.Driver
        ?? throw new CudaUnavailableException(Shared.Value.Reason);

    internal static bool TryGet(out CudaDriver? driver, out string reason)
    {
        (driver, reason) = Shared.Value;
        return driver is not null;
    }

    /// <summary>Loads a driver binding from the given library names (tests pass a name that does not exist).</summary>
    internal static (CudaDriver? Driver, string Reason) TryCreate(IReadOnlyList<string> libraryNames)
    {
        if (!NativeLoader.TryLoadFirst(libraryNames, out var lib, out var name, out var failures))
            return (null, $"CUDA driver {libraryNames[0]} not found: {failures}. Is the NVIDIA driver installed (no GPU on this machine?)");
        try
        {
            var driver = new CudaDriver(lib, name);
            int rc = driver._cuInit(0);
            if (rc != CUDA_SUCCESS)
                return (null, $"CUDA driver {name} loaded but cuInit failed: {driver.ErrorName(rc)} ({driver.ErrorString(rc)}).");
            return (driver, "");
        }
        catch (CudaUnavailableException ex)
        {
            return (null, ex.Message);
        }
    }

    internal string LibraryName { get; }

    private readonly delegate* unmanaged<uint, int> _cuInit;
    private readonly delegate* unmanaged<int*, int> _cuDriverGetVersion;
    private readonly delegate* unmanaged<int*, int> _cuDeviceGetCount;
    private readonly delegate* unmanaged<int*, int, int> _cuDeviceGet;
    private readonly delegate* unmanaged<int*, int, int, int> _cuDeviceGetAttribute;
    private readonly delegate* unmanaged<byte*, int, int, int> _cuDeviceGetName;
    private readonly delegate* unmanaged<IntPtr*, int, int> _cuDevicePrimaryCtxRetain;
    private readonly delegate* unmanaged<int, int> _cuDevicePrimaryCtxRelease;
    private readonly delegate* unmanaged<IntPtr, int> _cuCtxSetCurrent;
    private readonly delegate* unmanaged<int> _cuCtxSynchronize;
    private readonly delegate* unmanaged<IntPtr*, void*, int> _cuModuleLoadData;
    private readonly delegate* unmanaged<IntPtr*, IntPtr, byte*, int> _cuModuleGetFunction;
    private readonly delegate* unmanaged<IntPtr, int> _cuModuleUnload;
    private readonly delegate* unmanaged<IntPtr, int, int, int> _cuFuncSetAttribute;
    private readonly delegate* unmanaged<IntPtr, uint, uint, uint, uint, uint, uint, uint, IntPtr, void**, void**, int> _cuLaunchKernel;
    private readonly delegate* unmanaged<void**, nuint, uint, int> _cuMemHostAlloc;
    private readonly delegate* unmanaged<void*, int> _cuMemFreeHost;
    private readonly delegate* unmanaged<ulong, void*, nuint, IntPtr, int> _cuMemcpyHtoDAsync;
    private readonly delegate* unmanaged<void*, ulong, nuint, IntPtr, int> _cuMemcpyDtoHAsync;
    private readonly delegate* unmanaged<ulong, ulong, nuint, IntPtr, int> _cuMemcpyDtoDAsync;
    private readonly delegate* unmanaged<nuint*, nuint*, int> _cuMemGetInfo;
    private readonly delegate* unmanaged<IntPtr, int> _cuStreamSynchronize;
    private readonly delegate* unmanaged<IntPtr*, uint, int> _cuEventCreate;
    private readonly delegate* unmanaged<IntPtr, IntPtr, int> _cuEventRecord;
    private readonly delegate* unmanaged<IntPtr, int> _cuEventSynchronize;
    private readonly delegate* unmanaged<IntPtr, int> _cuEventQuery;
    private readonly delegate* unmanaged<float*, IntPtr, IntPtr, int> _cuEventElapsedTime;
    private readonly delegate* unmanaged<IntPtr, int> _cuEventDestroy;
    private readonly delegate* unmanaged<int, byte**, int> _cuGetErrorName;
    private readonly delegate* unmanaged<int, byte**, int> _cuGetErrorString;

    private CudaDriver(IntPtr lib, string name)
    {
        LibraryName = name;
        IntPtr E(string symbol) => NativeLoader.Export(lib, name, symbol);
        // CUDA 12.8 added cuEventElapsedTime_v2 (same signature); prefer it, fall back to the original
        IntPtr EitherOf(string preferred, string fallback) =>
            NativeLibrary.TryGetExport(lib, preferred, out var p) ? p : E(fallback);
        _cuInit = (delegate* unmanaged<uint, int>)E("cuInit");
        _cuDriverGetVersion = (delegate* unmanaged<int*, int>)E("cuDriverGetVersion");
        _cuDeviceGetCount = (delegate* unmanaged<int*, int>)E("cuDeviceGetCount");
        _cuDeviceGet = (delegate* unmanaged<int*, int, int>)E("cuDeviceGet");
        _cuDeviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)E("cuDeviceGetAttribute");
        _cuDeviceGetName = (delegate* unmanaged<byte*, int, int, int>)E("cuDeviceGetName");
        _cuDevicePrimaryCtxRetain = (delegate* unmanaged<IntPtr*, int, int>)E("cuDevicePrimaryCtxRetain");
        _cuDevicePrimaryCtxRelease = (delegate* unmanaged<int, int>)E("cuDevicePrimaryCtxRelease_v2");
        _cuCtxSetCurrent = (delegate* unmanaged<IntPtr, int>)E("cuCtxSetCurrent");
        _cuCtxSynchronize = (delegate* unmanaged<int>)E("cuCtxSynchronize");
        _cuModuleLoadData = (delegate* unmanaged<IntPtr*, void*, int>)E("cuModuleLoadData");
        _cuModuleGetFunction = (delegate* unmanaged<IntPtr*, IntPtr, byte*, int>)E("cuModuleGetFunction");
        _cuModuleUnload = (delegate* unmanaged<IntPtr, int>)E("cuModuleUnload");
        _cuFuncSetAttribute = (delegate* unmanaged<IntPtr, int, int, int>)E("cuFuncSetAttribute");
        _cuLaunchKernel = (delegate* unmanaged<IntPtr, uint, uint, uint, uint, uint, uint, uint, IntPtr, void**, void**, int>)E("cuLaunchKernel");
        _cuMemHostAlloc = (delegate* unmanaged<void**, nuint, uint, int>)E("cuMemHostAlloc");
        _cuMemFreeHost = (delegate* unmanaged<void*, int>)E("cuMemFreeHost");
        _cuMemcpyHtoDAsync = (delegate* unmanaged<ulong, void*, nuint, IntPtr, int>)E("cuMemcpyHtoDAsync_v2");
        _cuMemcpyDtoHAsync = (delegate* unmanaged<void*, ulong, nuint, IntPtr, int>)E("cuMemcpyDtoHAsync_v2");
        _cuMemcpyDtoDAsync = (delegate* unmanaged<ulong, ulong, nuint, IntPtr, int>)E("cuMemcpyDtoDAsync_v2");
        _cuMemGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)E("cuMemGetInfo_v2");
        _cuStreamSynchronize = (delegate* unmanaged<IntPtr, int>)E("cuStreamSynchronize");
        _cuEventCreate = (delegate* unmanaged<IntPtr*, uint, int>)E("cuEventCreate");
        _cuEventRecord = (delegate* unmanaged<IntPtr, IntPtr, int>)E("cuEventRecord");
        _cuEventSynchronize = (delegate* unmanaged<IntPtr, int>)E("cuEventSynchronize");
        _cuEventQuery = (delegate* unmanaged<IntPtr, int>)E("cuEventQuery");
        _cuEventElapsedTime = (delegate* unmanaged<float*, IntPtr, IntPtr, int>)EitherOf("cuEventElapsedTime_v2", "cuEventElapsedTime");
        _cuEventDestroy = (delegate* unmanaged<IntPtr, int>)E("cuEventDestroy_v2");
        _cuGetErrorName = (delegate* unmanaged<int, byte**, int>)E("cuGetErrorName");
        _cuGetErrorString = (delegate* unmanaged<int, byte**, int>)E("cuGetErrorString");
    }

    internal string ErrorName(int code)
    {
        byte* s = null;
        return _cuGetErrorName(code, &s) == CUDA_SUCCESS && s != null ? Marshal.PtrToStringAnsi((IntPtr)s) ?? $"CUresult {code}" : $"CUresult {code}";
    }

    internal string ErrorString(int code)
    {
        byte* s = null;
        return _cuGetErrorString(code, &s) == CUDA_SUCCESS && s != null ? Marshal.PtrToStringAnsi((IntPtr)s) ?? "unknown error" : "unknown error";
    }

    /// <summary>Turns a CUresult into an exception naming the call.</summary>
    internal void Check(int result, string call)
    {
        if (result != CUDA_SUCCESS)
            throw new CudaException(call, result, ErrorName(result), ErrorString(result));
    }

    internal int DriverVersion() { int v; Check(_cuDriverGetVersion(&v), "cuDriverGetVersion"); return v; }
    internal int DeviceCount() { int n; Check(_cuDeviceGetCount(&n), "cuDeviceGetCount"); return n; }
    internal int DeviceGet(int ordinal) { int d; Check(_cuDeviceGet(&d, ordinal), $"cuDeviceGet({ordinal})"); return d; }

    internal int DeviceGetAttribute(int attribute, int device)
    {
        int v;
        Check(_cuDeviceGetAttribute(&v, attribute, device), $"cuDeviceGetAttribute({attribute})");
        return v;
    }

    internal string DeviceGetName(int device)
    {
        byte* buffer = stackalloc byte[256];
        Check(_cuDeviceGetName(buffer, 256, device), "cuDeviceGetName");
        return Marshal.PtrToStringAnsi((IntPtr)buffer) ?? "";
    }

    internal IntPtr DevicePrimaryCtxRetain(int device) { IntPtr c; Check(_cuDevicePrimaryCtxRetain(&c, device), "cuDevicePrimaryCtxRetain"); return c; }
    internal void DevicePrimaryCtxRelease(int device) => Check(_cuDevicePrimaryCtxRelease(device), "cuDevicePrimaryCtxRelease_v2");
    internal void CtxSetCurrent(IntPtr context) => Check(_cuCtxSetCurrent(context), "cuCtxSetCurrent");
    internal void CtxSynchronize() => Check(_cuCtxSynchronize(), "cuCtxSynchronize");
    internal int CtxSynchronizeResult() => _cuCtxSynchronize();

    internal IntPtr ModuleLoadData(ReadOnlySpan<byte> image)
    {
        IntPtr module;
        fixed (byte* p = image) Check(_cuModuleLoadData(&module, p), "cuModuleLoadData");
        return module;
    }

    internal IntPtr ModuleGetFunction(IntPtr module, string name)
    {
        IntPtr f;
        var bytes = System.Text.Encoding.ASCII.GetBytes(name + "\0");
        fixed (byte* p = bytes) Check(_cuModuleGetFunction(&f, module, p), $"cuModuleGetFunction({name})");
        return f;
    }

    internal void ModuleUnload(IntPtr module) => Check(_cuModuleUnload(module), "cuModuleUnload");
    internal void FuncSetAttribute(IntPtr f, int attribute, int value) => Check(_cuFuncSetAttribute(f, attribute, value), "cuFuncSetAttribute");

    internal void LaunchKernel(IntPtr f, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, IntPtr stream, void** args, string name)
    {
        int rc = _cuLaunchKernel(f, gridX, gridY, gridZ, blockX, blockY, blockZ, sharedBytes, stream, args, null);
        if (rc != CUDA_SUCCESS) Check(rc, $"cuLaunchKernel({name})");   // the message is built only on failure
    }

    internal void* MemHostAlloc(nuint bytes, uint flags) { void* p; Check(_cuMemHostAlloc(&p, bytes, flags), $"cuMemHostAlloc({bytes} bytes)"); return p; }
    internal void MemFreeHost(void* p) => Check(_cuMemFreeHost(p), "cuMemFreeHost");
    internal void MemcpyHtoDAsync(ulong dst, void* src, nuint bytes, IntPtr stream) => Check(_cuMemcpyHtoDAsync(dst, src, bytes, stream), "cuMemcpyHtoDAsync_v2");
    internal void MemcpyDtoHAsync(void* dst, ulong src, nuint bytes, IntPtr stream) => Check(_cuMemcpyDtoHAsync(dst, src, bytes, stream), "cuMemcpyDtoHAsync_v2");
    internal void MemcpyDtoDAsync(ulong dst, ulong src, nuint bytes, IntPtr stream) => Check(_cuMemcpyDtoDAsync(dst, src, bytes, stream), "cuMemcpyDtoDAsync_v2");

    internal (ulong Free, ulong Total) MemGetInfo()
    {
        nuint free, total;
        Check(_cuMemGetInfo(&free, &total), "cuMemGetInfo_v2");
        return (free, total);
    }

    internal void StreamSynchronize(IntPtr stream) => Check(_cuStreamSynchronize(stream), "cuStreamSynchronize");
    internal IntPtr EventCreate(uint flags) { IntPtr e; Check(_cuEventCreate(&e, flags), "cuEventCreate"); return e; }
    internal void EventRecord(IntPtr e, IntPtr stream) => Check(_cuEventRecord(e, stream), "cuEventRecord");
    internal void EventSynchronize(IntPtr e) => Check(_cuEventSynchronize(e), "cuEventSynchronize");

    /// <summary>True when the work before the event has finished; false while it is pending.</summary>
    internal bool EventQuery(IntPtr e)
    {
        int rc = _cuEventQuery(e);
        if (rc == CUDA_ERROR_NOT_READY) return false;
        Check(rc, "cuEventQuery");
        return true;
    }

    internal float EventElapsedMilliseconds(IntPtr start, IntPtr end) { float ms; Check(_cuEventElapsedTime(&ms, start, end), "cuEventElapsedTime"); return ms; }
    internal void EventDestroy(IntPtr e) => Check(_cuEventDestroy(e), "cuEventDestroy_v2");
}
