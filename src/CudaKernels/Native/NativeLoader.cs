using System.Runtime.InteropServices;

namespace WeakTeacher.CudaKernels.Native;

/// <summary>Loads a native library from a list of candidates and resolves exports, collecting why each try failed.</summary>
internal static class NativeLoader
{
    internal static bool TryLoadFirst(IEnumerable<string> candidates, out IntPtr handle, out string loadedName, out string failures)
    {
        var reasons = new List<string>();
        foreach (var name in candidates)
        {
            try
            {
                handle = NativeLibrary.Load(name);
                loadedName = name;
                failures = "";
                return true;
            }
            catch (Exception ex) when (ex is DllNotFoundException or BadImageFormatException)
            {
                reasons.Add(LoaderReason(ex.Message, name));
            }
        }
        handle = IntPtr.Zero;
        loadedName = "";
        failures = string.Join("; ", reasons);
        return false;
    }

    internal static IntPtr Export(IntPtr library, string libraryName, string symbol)
    {
        if (!NativeLibrary.TryGetExport(library, symbol, out var address))
            throw new CudaUnavailableException($"{libraryName} lacks the export {symbol} (driver or toolkit too old?).");
        return address;
    }

    /// <summary>.NET's message starts with a generic line and then lists dlerror() for each path tried; the last of
    /// those (the loader's own search) is the informative part.</summary>
    internal static string LoaderReason(string message, string name)
    {
        var lines = message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var detail = lines.Skip(1).LastOrDefault();
        if (detail is null) return $"{name}: {(lines.Length > 0 ? lines[0] : message)}";
        return detail.StartsWith(name, StringComparison.Ordinal) ? detail : $"{name}: {detail}";
    }
}
