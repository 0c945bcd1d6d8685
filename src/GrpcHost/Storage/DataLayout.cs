using System.Security.Cryptography;

namespace WeakTeacher.GrpcHost.Storage;

/// <summary>
/// The data folder: wt.db, datasets/&lt;id&gt;/&lt;file&gt;, models/&lt;id&gt;/ (Hugging Face layout), jobs/&lt;id&gt;/work (the
/// engine's work folder, with its checkpoints), jobs/&lt;id&gt;/artifacts, and tmp/ (uploads in flight). Everything that
/// becomes visible is first written under tmp/ and then renamed into place, so no reader ever sees half a file.
/// </summary>
internal sealed class DataLayout
{
    public DataLayout(string root)
    {
        Root = Path.GetFullPath(root);
        foreach (var dir in new[] { Root, DatasetsDir, ModelsDir, JobsDir, TmpDir }) Directory.CreateDirectory(dir);
    }

    public string Root { get; }
    public string DatabasePath => Path.Combine(Root, "wt.db");
    public string DatasetsDir => Path.Combine(Root, "datasets");
    public string ModelsDir => Path.Combine(Root, "models");
    public string JobsDir => Path.Combine(Root, "jobs");
    public string TmpDir => Path.Combine(Root, "tmp");

    public string DatasetDir(string id) => Path.Combine(DatasetsDir, id);
    public string ModelDir(string id) => Path.Combine(ModelsDir, id);
    public string JobWorkDir(string id) => Path.Combine(JobsDir, id, "work");
    public string JobArtifactsDir(string id) => Path.Combine(JobsDir, id, "artifacts");

    /// <summary>A fresh folder under tmp/ (same file system as the store, so the final rename is atomic).</summary>
    public string NewTempDir()
    {
        var dir = Path.Combine(TmpDir, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>Temp folders left by uploads or registrations that a crash interrupted (untouched for <paramref name="olderThan"/>).</summary>
    public void CleanTemp(TimeSpan olderThan)
    {
        var before = DateTime.UtcNow - olderThan;
        foreach (var dir in Directory.EnumerateDirectories(TmpDir))
            if (Directory.GetLastWriteTimeUtc(dir) <= before) TryDelete(dir);
        foreach (var file in Directory.EnumerateFiles(TmpDir))
            if (File.GetLastWriteTimeUtc(file) <= before) File.Delete(file);
    }

    public static string NewId(string prefix) => $"{prefix}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}";

    public static void TryDelete(string dir)
    {
        try { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Copies a folder under tmp/, flushes every file, then renames it to <paramref name="target"/>; if the target exists it is kept.</summary>
    public void PublishDirectoryCopy(string source, string target)
    {
        if (Directory.Exists(target)) return;
        var temp = NewTempDir();
        var staging = Path.Combine(temp, "d");
        CopyDirectory(source, staging);
        PublishDirectory(staging, target);
        TryDelete(temp);
    }

    /// <summary>Renames a complete staged folder into place (atomic on one file system).</summary>
    public static void PublishDirectory(string staged, string target)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        try { Directory.Move(staged, target); }
        catch (IOException) when (Directory.Exists(target)) { /* published by an earlier attempt: keep it */ }
    }

    public static void CopyDirectory(string source, string target)
    {
        Directory.CreateDirectory(target);
        foreach (var file in Directory.EnumerateFiles(source, "*", SearchOption.AllDirectories))
        {
            var relative = Path.GetRelativePath(source, file);
            var destination = Path.Combine(target, relative);
            Directory.CreateDirectory(Path.GetDirectoryName(destination)!);
            CopyFileDurably(file, destination);
        }
    }

    public static void CopyFileDurably(string source, string destination)
    {
        using (var input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20))
        using (var output = new FileStream(destination, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
        {
            input.CopyTo(output);
            output.Flush(flushToDisk: true);
        }
    }

    public static long SizeOf(string dir) =>
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
}
