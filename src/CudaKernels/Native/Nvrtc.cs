using System.Runtime.InteropServices;
using System.Text;

namespace WeakTeacher.CudaKernels.Native;

/// <summary>
/// Typed binding of NVRTC (libnvrtc.so.*), loaded lazily. Looks in WT_NVRTC (a full path), then $CUDA_LIB (set by
/// shared/device/on-device.sh), then the loader's search path and /usr/local/cuda/lib64.
/// </summary>
internal sealed unsafe class Nvrtc
{
    private const int NVRTC_SUCCESS = 0;

    private static readonly Lazy<(Nvrtc? Compiler, string Reason)> Shared = new(() => TryCreate(Candidates()));

    internal static Nvrtc Instance => Shared.Value.Compiler ?? throw new CudaUnavailableException(Shared.Value.Reason);

    internal static bool TryGet(out Nvrtc? compiler, out string reason)
    {
        (compiler, reason) = Shared.Value;
        return compiler is not null;
    }

    internal static IEnumerable<string> Candidates()
    {
        var explicitPath = Environment.GetEnvironmentVariable("WT_NVRTC");
        if (!string.IsNullOrWhiteSpace(explicitPath)) yield return explicitPath;
        foreach (var dir in new[] { Environment.GetEnvironmentVariable("CUDA_LIB"), "/usr/local/cuda/lib64" })
        {
            if (string.IsNullOrWhiteSpace(dir) || !Directory.Exists(dir)) continue;
            foreach (var f in NewestFirst(dir, "libnvrtc.so*"))   // the pattern skips libnvrtc-builtins
                yield return f;
        }
        foreach (var name in new[] { "libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2" })
            yield return name;
    }

    internal static (Nvrtc? Compiler, string Reason) TryCreate(IEnumerable<string> candidates)
    {
        var list = candidates.ToList();
        if (!NativeLoader.TryLoadFirst(list, out var lib, out var name, out var failures))
            return (null, $"NVRTC (libnvrtc.so) not found: {failures}. Set CUDA_LIB to the CUDA toolkit's lib64 folder or WT_NVRTC to the library.");
        PreloadBuiltins(name);
        try { return (new Nvrtc(lib, name), ""); }
        catch (CudaUnavailableException ex) { return (null, ex.Message); }
    }

    /// <summary>NVRTC dlopens libnvrtc-builtins by soname at compile time. Where NVRTC was loaded by full path from a folder
    /// outside the loader's search path (WT_NVRTC), loading the builtins from that folder first lets that lookup find
    /// them already in the process.</summary>
    private static void PreloadBuiltins(string loadedName)
    {
        var dir = Path.GetDirectoryName(loadedName);
        if (string.IsNullOrEmpty(dir) || !Directory.Exists(dir)) return;
        foreach (var f in NewestFirst(dir, "libnvrtc-builtins.so*"))
            if (NativeLibrary.TryLoad(f, out _)) return;
    }

    /// <summary>Versioned library files, newest first (libnvrtc.so.13.0.88 before libnvrtc.so.13 before libnvrtc.so.12).</summary>
    private static IEnumerable<string> NewestFirst(string dir, string pattern) =>
        Directory.GetFiles(dir, pattern).OrderByDescending(f => f.Length).ThenByDescending(f => f, StringComparer.Ordinal);

    internal string LibraryName { get; }

    private readonly delegate* unmanaged<int, byte*> _nvrtcGetErrorString;
    private readonly delegate* unmanaged<int*, int*, int> _nvrtcVersion;
    private readonly delegate* unmanaged<IntPtr*, byte*, byte*, int, byte**, byte**, int> _nvrtcCreateProgram;
    private readonly delegate* unmanaged<IntPtr, int, byte**, int> _nvrtcCompileProgram;
    private readonly delegate* unmanaged<IntPtr, nuint*, int> _nvrtcGetCUBINSize;
    private readonly delegate* unmanaged<IntPtr, byte*, int> _nvrtcGetCUBIN;
    private readonly delegate* unmanaged<IntPtr, nuint*, int> _nvrtcGetProgramLogSize;
    private readonly delegate* unmanaged<IntPtr, byte*, int> _nvrtcGetProgramLog;
    private readonly delegate* unmanaged<IntPtr*, int> _nvrtcDestroyProgram;

    private Nvrtc(IntPtr lib, string name)
    {
        LibraryName = name;
        IntPtr E(string symbol) => NativeLoader.Export(lib, name, symbol);
        _nvrtcGetErrorString = (delegate* unmanaged<int, byte*>)E("nvrtcGetErrorString");
        _nvrtcVersion = (delegate* unmanaged<int*, int*, int>)E("nvrtcVersion");
        _nvrtcCreateProgram = (delegate* unmanaged<IntPtr*, byte*, byte*, int, byte**, byte**, int>)E("nvrtcCreateProgram");
        _nvrtcCompileProgram = (delegate* unmanaged<IntPtr, int, byte**, int>)E("nvrtcCompileProgram");
        _nvrtcGetCUBINSize = (delegate* unmanaged<IntPtr, nuint*, int>)E("nvrtcGetCUBINSize");
        _nvrtcGetCUBIN = (delegate* unmanaged<IntPtr, byte*, int>)E("nvrtcGetCUBIN");
        _nvrtcGetProgramLogSize = (delegate* unmanaged<IntPtr, nuint*, int>)E("nvrtcGetProgramLogSize");
        _nvrtcGetProgramLog = (delegate* unmanaged<IntPtr, byte*, int>)E("nvrtcGetProgramLog");
        _nvrtcDestroyProgram = (delegate* unmanaged<IntPtr*, int>)E("nvrtcDestroyProgram");
    }

    private void Check(int result, string call, string? detail = null)
    {
        if (result == NVRTC_SUCCESS) return;
        var s = _nvrtcGetErrorString(result);
        var name = s != null ? Marshal.PtrToStringAnsi((IntPtr)s) ?? $"nvrtcResult {result}" : $"nvrtcResult {result}";
        throw new CudaException(call, result, name, "NVRTC error", detail);
    }

    /// <summary>"major.minor" of this NVRTC; part of the kernel cache key.</summary>
    internal string Version()
    {
        int major, minor;
        Check(_nvrtcVersion(&major, &minor), "nvrtcVersion");
        return $"{major}.{minor}";
    }

    /// <summary>Compiles CUDA C++ source to a cubin for the architecture named in the options (--gpu-architecture=sm_XX).</summary>
    internal byte[] CompileToCubin(string source, string programName, IReadOnlyList<string> options) =>
        CompileToCubin(source, programName, options, out _);

    /// <summary>As above; <paramref name="log"/> receives the compiler's messages (warnings) of a successful compile.</summary>
    internal byte[] CompileToCubin(string source, string programName, IReadOnlyList<string> options, out string log)
    {
        IntPtr program;
        var src = Encoding.UTF8.GetBytes(source + "\0");
        var nameBytes = Encoding.UTF8.GetBytes(programName + "\0");
        fixed (byte* ps = src, pn = nameBytes)
            Check(_nvrtcCreateProgram(&program, ps, pn, 0, null, null), $"nvrtcCreateProgram({programName})");
        var handles = options.Select(o => Marshal.StringToHGlobalAnsi(o)).ToArray();
        try
        {
            var optionPointers = stackalloc byte*[handles.Length];
            for (int i = 0; i < handles.Length; i++) optionPointers[i] = (byte*)handles[i];
            int rc = _nvrtcCompileProgram(program, handles.Length, optionPointers);
            if (rc != NVRTC_SUCCESS)
                Check(rc, $"nvrtcCompileProgram({programName}, {string.Join(' ', options)})", ProgramLog(program));
            log = ProgramLog(program);
            nuint size;
            Check(_nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize");
            var cubin = new byte[(int)size];
            fixed (byte* pc = cubin) Check(_nvrtcGetCUBIN(program, pc), "nvrtcGetCUBIN");
            return cubin;
        }
        finally
        {
            foreach (var h in handles) Marshal.FreeHGlobal(h);
            _nvrtcDestroyProgram(&program);
        }
    }

    private string ProgramLog(IntPtr program)
    {
        nuint size;
        if (_nvrtcGetProgramLogSize(program, &size) != NVRTC_SUCCESS || size <= 1) return "";
        var log = new byte[(int)size];
        fixed (byte* p = log) _nvrtcGetProgramLog(program, p);
        return Encoding.UTF8.GetString(log, 0, (int)size - 1);
    }
}
