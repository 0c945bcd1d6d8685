using System.Diagnostics;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// A throw-away PostgreSQL server: initdb in a temporary folder, postgres on loopback at a free port, trust
/// authentication for user wt, fsync off. As root it runs as WT_PG_USER (default nobody), since initdb and postgres
/// refuse root. Stopped (immediate) and deleted on dispose.
/// </summary>
internal sealed class PostgreSqlServer : IAsyncDisposable
{
    private readonly string root;
    private readonly string bin;
    private readonly string[] asUser;

    private PostgreSqlServer(string root, string bin, string[] asUser, int port)
    {
        this.root = root;
        this.bin = bin;
        this.asUser = asUser;
        Port = port;
    }

    public int Port { get; }
    public string ConnectionString => $"Host=127.0.0.1;Port={Port};Username=wt;Database=postgres";
    private string DataDir => Path.Combine(root, "data");

    /// <summary>The folder of Debian's PostgreSQL server programs (the newest version installed), or null.</summary>
    public static string? FindBinaries()
    {
        const string debian = "/usr/lib/postgresql";
        if (!Directory.Exists(debian)) return null;
        return Directory.EnumerateDirectories(debian)
            .Where(d => int.TryParse(Path.GetFileName(d), out _) && File.Exists(Path.Combine(d, "bin", "initdb")) && File.Exists(Path.Combine(d, "bin", "pg_ctl")))
            .OrderByDescending(d => int.Parse(Path.GetFileName(d)))
            .Select(d => Path.Combine(d, "bin"))
            .FirstOrDefault();
    }

    /// <summary>The server programs' folder, or the test skipped with what to install.</summary>
    public static string RequireBinaries()
    {
        var bin = FindBinaries();
        if (bin is null) Xunit.Assert.Skip("PostgreSQL's server programs are not installed (/usr/lib/postgresql/N/bin; ./build.sh test installs Debian's postgresql)");
        return bin;
    }

    /// <summary>A replica host's arguments on this store: importing from <paramref name="importDir"/>, a 10 s lease
    /// (3-4 s stalls happen on a loaded 2-core machine) and a 200 ms queue poll.</summary>
    public string[] ReplicaArgs(string importDir, int replica) =>
        ["--ImportDir", importDir, "--JobStore:PostgreSql", ConnectionString, "--JobStore:HostId", $"replica-{replica}",
         "--JobStore:LeaseSeconds", "10", "--JobStore:PollMilliseconds", "200"];

    public static async Task<PostgreSqlServer> StartAsync(string bin)
    {
        var root = Path.Combine(Path.GetTempPath(), "wt-pg-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(root);
        string[] asUser = [];
        if (Environment.IsPrivilegedProcess && !OperatingSystem.IsWindows())
        {
            // initdb makes data/ itself, owned by the server's user; the folder above only needs to be writable by it.
            File.SetUnixFileMode(root, (UnixFileMode)0x1FF); // rwxrwxrwx
            asUser = ["runuser", "-u", Environment.GetEnvironmentVariable("WT_PG_USER") is { Length: > 0 } u ? u : "nobody", "--"];
        }
        var server = new PostgreSqlServer(root, bin, asUser, HostProcess.FreePort());
        try
        {
            await server.RunAsync("initdb", ["-D", server.DataDir, "-U", "wt", "--auth=trust", "-E", "UTF8", "--no-sync"]);
            await server.RunAsync("pg_ctl", ["-D", server.DataDir, "-l", Path.Combine(root, "server.log"), "-w", "-t", "60", "-o",
                $"-c listen_addresses=127.0.0.1 -p {server.Port} -k {root} -c fsync=off -c synchronous_commit=off", "start"]);
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
        return server;
    }

    private async Task RunAsync(string program, string[] arguments)
    {
        var info = new ProcessStartInfo(asUser.Length > 0 ? asUser[0] : Path.Combine(bin, program))
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = root,
        };
        foreach (var a in asUser.Skip(1)) info.ArgumentList.Add(a);
        if (asUser.Length > 0) info.ArgumentList.Add(Path.Combine(bin, program));
        foreach (var a in arguments) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(2));
        if (process.ExitCode != 0)
        {
            var log = Path.Combine(root, "server.log");
            throw new InvalidOperationException($"{program} failed ({process.ExitCode}): {await stderr}{await stdout}" +
                (File.Exists(log) ? "\nserver log:\n" + File.ReadAllText(log) : ""));
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Directory.Exists(DataDir))
        {
            try { await RunAsync("pg_ctl", ["-D", DataDir, "-m", "immediate", "-w", "stop"]); }
            catch (InvalidOperationException) { } // not running
        }
        try { Directory.Delete(root, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
