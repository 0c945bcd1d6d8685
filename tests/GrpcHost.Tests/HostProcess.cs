using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Text;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// The real host as a child process (dotnet WeakTeacher.GrpcHost.dll --urls http://127.0.0.1:PORT --DataDir DIR ...),
/// with a gRPC channel to it. Its output goes to host.log beside the data folder (printed when a test fails to start it).
/// </summary>
internal sealed class HostProcess : IAsyncDisposable
{
    private readonly Process process;
    private readonly StringBuilder log = new();
    private readonly List<string> stdout = [];

    private HostProcess(Process process, string dataDir, int port)
    {
        this.process = process;
        DataDir = dataDir;
        Port = port;
        Address = $"http://127.0.0.1:{port}";
        Channel = GrpcChannel.ForAddress(Address, new GrpcChannelOptions
        {
            // No client-side limits: the server's limits are what the tests check.
            MaxReceiveMessageSize = null,
            MaxSendMessageSize = null,
        });
    }

    public string DataDir { get; }
    public int Port { get; }
    public string Address { get; }
    public GrpcChannel Channel { get; }
    public int ProcessId => process.Id;
    public string Log { get { lock (log) return log.ToString(); } }
    /// <summary>The lines the host wrote to standard output so far (its log; standard error is in <see cref="Log"/> only).</summary>
    public IReadOnlyList<string> StandardOutputLines { get { lock (log) return [.. stdout]; } }

    public static string RepoRoot => Metadata("RepoRoot");

    public static string HostDll
    {
        get
        {
            var dll = Metadata("GrpcHostDll");
            if (File.Exists(dll)) return dll;
            // Fallback: beside the tests (the project reference copies it) with the host's own runtimeconfig.
            var beside = Path.Combine(AppContext.BaseDirectory, "WeakTeacher.GrpcHost.dll");
            if (File.Exists(beside)) return beside;
            throw new FileNotFoundException($"the host dll was not found at {dll} or {beside}; build tests/GrpcHost.Tests first");
        }
    }

    private static string Metadata(string key) =>
        typeof(HostProcess).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().FirstOrDefault(a => a.Key == key)?.Value
        ?? throw new InvalidOperationException($"assembly metadata {key} is missing");

    public static string NewDataDir()
    {
        var dir = Path.Combine(Path.GetTempPath(), "wt-host-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    public static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    /// <summary>
    /// The environment for a host whose CPU numbers are compared bit for bit with another process's: with a
    /// multi-threaded pool, how libtorch/MKL split a reduction may follow the machine's load.
    /// </summary>
    public static IReadOnlyDictionary<string, string> SingleThreaded { get; } = new Dictionary<string, string>
    {
        ["OMP_NUM_THREADS"] = "1", ["MKL_NUM_THREADS"] = "1", ["MKL_DYNAMIC"] = "FALSE",
    };

    public static async Task<HostProcess> StartAsync(string? dataDir = null, IEnumerable<string>? extraArgs = null,
        TimeSpan? timeout = null, int? port = null, IReadOnlyDictionary<string, string>? environment = null, string? workingDirectory = null)
    {
        dataDir ??= NewDataDir();
        int p = port ?? FreePort();
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Path.GetDirectoryName(HostDll)!,
        };
        info.ArgumentList.Add(HostDll);
        foreach (var a in new[] { "--urls", $"http://127.0.0.1:{p}", "--DataDir", dataDir }) info.ArgumentList.Add(a);
        foreach (var a in extraArgs ?? []) info.ArgumentList.Add(a);
        info.Environment["DOTNET_NOLOGO"] = "1";
        info.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) info.Environment[name] = value;
        var process = Process.Start(info) ?? throw new InvalidOperationException("dotnet did not start");
        var host = new HostProcess(process, dataDir, p);
        process.OutputDataReceived += (_, e) => host.Append(e.Data, fromStandardOutput: true);
        process.ErrorDataReceived += (_, e) => host.Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            await host.WaitServingAsync(timeout ?? TimeSpan.FromSeconds(60));
        }
        catch
        {
            await host.DisposeAsync();
            throw;
        }
        return host;
    }

    private void Append(string? line, bool fromStandardOutput = false)
    {
        if (line is null) return;
        lock (log)
        {
            log.AppendLine(line);
            if (fromStandardOutput) stdout.Add(line);
        }
    }

    public async Task WaitServingAsync(TimeSpan timeout)
    {
        var health = new Health.HealthClient(Channel);
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            if (process.HasExited)
                throw new InvalidOperationException($"the host exited with code {process.ExitCode}:\n{Log}");
            try
            {
                var reply = await health.CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow.AddSeconds(2));
                if (reply.Status == HealthCheckResponse.Types.ServingStatus.Serving) return;
            }
            catch (RpcException) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"the host did not become healthy in {timeout}:\n{Log}");
            await Task.Delay(200);
        }
    }

    /// <summary>Waits until the host's output (either stream) holds <paramref name="text"/>; fails after <paramref name="within"/>
    /// with <paramref name="failure"/> and the logs <paramref name="describe"/> gives.</summary>
    public async Task WaitForLogAsync(string text, TimeSpan within, string failure, Func<string> describe, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + within;
        while (!Log.Contains(text, StringComparison.Ordinal))
        {
            Xunit.Assert.True(DateTime.UtcNow < deadline, $"{failure}\n{describe()}");
            await Task.Delay(100, ct);
        }
    }

    public async Task<HealthCheckResponse.Types.ServingStatus> HealthAsync() =>
        (await new Health.HealthClient(Channel).CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow.AddSeconds(10))).Status;

    /// <summary>SIGKILL: no shutdown code runs, as in a crash.</summary>
    public void Kill()
    {
        if (!process.HasExited) process.Kill(entireProcessTree: false);
        process.WaitForExit(10_000);
    }

    /// <summary>SIGSTOP / SIGCONT: the process freezes (as in a long GC pause or a frozen VM) and later runs on.</summary>
    public void Freeze(bool frozen)
    {
        using var kill = Process.Start("kill", [frozen ? "-STOP" : "-CONT", process.Id.ToString()])!;
        kill.WaitForExit();
        if (kill.ExitCode != 0) throw new InvalidOperationException($"kill {(frozen ? "-STOP" : "-CONT")} {process.Id} failed ({kill.ExitCode})");
    }

    public async Task<int> StopAsync()
    {
        if (!process.HasExited)
        {
            // SIGTERM: a graceful stop.
            using var term = Process.Start("kill", ["-TERM", process.Id.ToString()]);
            await term!.WaitForExitAsync();
            if (!process.WaitForExit(30_000)) process.Kill();
        }
        return process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        Channel.Dispose();
        if (!process.HasExited)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
        }
        process.Dispose();
    }
}
