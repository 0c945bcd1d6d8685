namespace WeakTeacher.CudaKernels.Native;

/// <summary>The files mapped into this process (/proc/self/maps): which libtorch, libgomp and BLAS it really loaded.</summary>
public static class MappedLibraries
{
    /// <summary>Full paths of every mapped file, each once, in the order first mapped; empty where there is no /proc.</summary>
    public static IReadOnlyList<string> All()
    {
        var found = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            foreach (var line in File.ReadLines("/proc/self/maps"))
            {
                int slash = line.IndexOf('/');
                if (slash < 0) continue;
                string path = line[slash..].Trim();
                if (seen.Add(path)) found.Add(path);
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return found;
    }
}
