namespace WeakTeacher.Engine;

/// <summary>
/// Writes a file so that readers (a restarted host, a client downloading an artifact) see either the old file or the
/// whole new one, never a torn write: data goes to a temporary file in the same folder, is flushed to disk, then renamed.
/// A process killed between the two leaves the temporary file behind; the next write of the same path removes it, so a
/// resumed stage that rewrites its outputs leaves no such file in a folder that is later published (one writer per path).
/// </summary>
public static class AtomicFile
{
    public static void WriteAllBytes(string path, byte[] bytes) => Write(path, stream => stream.Write(bytes));

    public static void WriteAllText(string path, string text) => WriteAllBytes(path, System.Text.Encoding.UTF8.GetBytes(text));

    /// <summary>Runs <paramref name="write"/> on a temporary stream and renames the result into place.</summary>
    public static T Write<T>(string path, Func<Stream, T> write)
    {
        Runtime.WriteFence.Check(path); // before removing leftovers: they may be another writer's temporary files
        string temp = TempPath(path);
        try
        {
            T result;
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                result = write(stream);
                stream.Flush(flushToDisk: true);
            }
            Runtime.WriteFence.Check(path);
            File.Move(temp, path, overwrite: true);
            return result;
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>Runs <paramref name="write"/> on a temporary stream and renames the result into place.</summary>
    public static void Write(string path, Action<Stream> write) => Write(path, stream => { write(stream); return 0; });

    private const string TempMarker = ".tmp-";

    private static string TempPath(string path)
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        foreach (var leftover in Directory.EnumerateFiles(dir, Path.GetFileName(full) + TempMarker + "*")) File.Delete(leftover);
        return full + TempMarker + Guid.NewGuid().ToString("N");
    }
}
