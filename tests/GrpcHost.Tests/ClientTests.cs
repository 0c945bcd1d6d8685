using System.Diagnostics;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// The Python and Go example clients, built from stubs that protoc generates from protos/ (examples/generate-stubs.sh),
/// run against the shared host: upload, train while watching progress, label a stream, download a model.
/// A missing toolchain skips, saying what to install; under `./build.sh test` (WT_CLIENT_TESTS=required, after it
/// installed the Debian packages) it fails instead, so CI cannot pass without running them.
/// </summary>
[Collection("default-task")]
public sealed class ClientTests(DefaultTaskHost shared)
{
    private static readonly string Examples = Path.Combine(HostProcess.RepoRoot, "examples");

    private static void Missing(string what)
    {
        if (Environment.GetEnvironmentVariable("WT_CLIENT_TESTS") == "required")
            Assert.Fail($"{what} (./build.sh test installs it; WT_CLIENT_TESTS=required)");
        Assert.Skip(what);
    }

    [Fact]
    public async Task Python_client_uploads_trains_labels_and_downloads()
    {
        await shared.RequireStagesAsync();
        // The python3 first on PATH may be one that cannot see Debian's python3-grpcio: find one that imports it.
        string[] candidates = [Environment.GetEnvironmentVariable("WT_PYTHON") ?? "", "/usr/bin/python3", "python3", "python"];
        var python = candidates.Where(c => c != "")
            .FirstOrDefault(c => Run(c, ["-c", "import grpc, google.protobuf"], Examples, TimeSpan.FromSeconds(60)) is { Code: 0 });
        if (python is null) { Missing("no Python that imports grpc and google.protobuf (Debian: python3-grpcio python3-protobuf)"); return; }
        var generate = Run("bash", [Path.Combine(Examples, "generate-stubs.sh"), "python"], Examples, TimeSpan.FromMinutes(1));
        if (generate is null || generate.Value.Code == 3) { Missing($"protoc or grpc_python_plugin is missing: {generate?.Output}"); return; }
        Assert.True(generate.Value.Code == 0, $"generate-stubs.sh python failed:\n{generate.Value.Output}");

        var download = Directory.CreateTempSubdirectory("wt-py-model-").FullName;
        var result = Run(python, [Path.Combine(Examples, "python", "client.py"), $"127.0.0.1:{shared.Host.Port}", "", download],
            Examples, TimeSpan.FromMinutes(5), new Dictionary<string, string> { ["PYTHONDONTWRITEBYTECODE"] = "1" });
        Assert.NotNull(result);
        Assert.True(result.Value.Code == 0, $"client.py ({python}) failed:\n{result.Value.Output}\nhost log:\n{PipelineTests.Tail(shared.Host.Log)}");
        AssertClientRan(result.Value.Output, download, "p1", "p2");
    }

    [Fact]
    public async Task Go_client_uploads_trains_labels_and_downloads()
    {
        await shared.RequireStagesAsync();
        if (Run("go", ["version"], Examples, TimeSpan.FromSeconds(60)) is not { Code: 0 }) { Missing("go is not installed (Debian: golang-go)"); return; }
        var generate = Run("bash", [Path.Combine(Examples, "generate-stubs.sh"), "go"], Examples, TimeSpan.FromMinutes(1));
        if (generate is null || generate.Value.Code == 3) { Missing($"protoc or protoc-gen-go is missing: {generate?.Output}"); return; }
        Assert.True(generate.Value.Code == 0, $"generate-stubs.sh go failed:\n{generate.Value.Output}");

        var goDir = Path.Combine(Examples, "go");
        var gopath = Path.Combine(goDir, "gopath");
        // GOPATH mode: the generated stubs, then Debian's Go sources (golang-google-grpc-dev, golang-goprotobuf-dev).
        var env = new Dictionary<string, string>
        {
            ["GO111MODULE"] = "off", ["GOPATH"] = $"{gopath}:/usr/share/gocode", ["GOFLAGS"] = "",
            ["GOCACHE"] = Path.Combine(gopath, "cache"), ["GOPROXY"] = "off",
        };
        var build = Run("go", ["build", "-o", "wt-client", "client.go"], goDir, TimeSpan.FromMinutes(5), env);
        Assert.NotNull(build);
        if (build.Value.Code != 0 && build.Value.Output.Contains("cannot find package"))
        { Missing($"Debian's Go gRPC packages are missing (golang-google-grpc-dev golang-goprotobuf-dev):\n{build.Value.Output}"); return; }
        Assert.True(build.Value.Code == 0, $"go build failed:\n{build.Value.Output}");

        var download = Directory.CreateTempSubdirectory("wt-go-model-").FullName;
        var result = Run(Path.Combine(goDir, "wt-client"), [$"127.0.0.1:{shared.Host.Port}", "", download], goDir, TimeSpan.FromMinutes(5));
        Assert.NotNull(result);
        Assert.True(result.Value.Code == 0, $"the Go client failed:\n{result.Value.Output}\nhost log:\n{PipelineTests.Tail(shared.Host.Log)}");
        AssertClientRan(result.Value.Output, download, "g1", "g2");
    }

    /// <summary>Every call printed its line, and the downloaded model is a loadable Hugging Face folder.</summary>
    private static void AssertClientRan(string output, string download, params string[] pairIds)
    {
        Assert.Matches(@"UploadDataset: \S+ 2 rows", output);
        Assert.Matches(@"Train: job \S+", output);
        Assert.Matches(@"WatchJob: \S*dpo\S* \d+/\d+", output);
        Assert.Matches(@"GetJob: teacher model \S+, [1-9]\d* progress events", output);
        foreach (var id in pairIds) Assert.Matches($@"LabelStream: {id} PREFERENCE_[AB] reward_a=-?\d", output);
        Assert.Matches(@"DownloadModel: \S+ \d+ files", output);
        Assert.True(File.Exists(Path.Combine(download, "config.json")), $"no config.json in {download}:\n{output}");
        Assert.NotEmpty(Directory.GetFiles(download, "*.safetensors", SearchOption.AllDirectories));
        using var config = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(download, "config.json")));
        Assert.Equal("opt", config.RootElement.GetProperty("model_type").GetString());
    }

    internal static (int Code, string Output)? Run(string file, string[] args, string dir, TimeSpan timeout,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var info = new ProcessStartInfo(file) { WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) info.ArgumentList.Add(a);
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) info.Environment[name] = value;
        Process process;
        try { process = Process.Start(info)!; }
        catch (System.ComponentModel.Win32Exception) { return null; }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(timeout)) { process.Kill(entireProcessTree: true); return (-1, $"timed out after {timeout}\n{stdout.Result}{stderr.Result}"); }
            process.WaitForExit();
            return (process.ExitCode, stdout.Result + stderr.Result);
        }
    }
}
