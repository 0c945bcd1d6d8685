using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text.RegularExpressions;
using Xunit;

namespace WeakTeacher.Tests.Benchmarks;

/// <summary>
/// The benchmark of record's tiny version (`ModelBench --suite record --quick`): a small OPT written once as a Hugging
/// Face checkpoint, both sides (the engine and benchmarks/torch_baseline.py on Debian's PyTorch) run every workload in
/// their own processes, and the report must show both sides' numbers, the BLAS each mapped, and that they computed the
/// same reference log-probs, gradient norms, rewards and greedy tokens. It checks the harness, not the speeds.
/// </summary>
public sealed class RecordBenchTests
{
    private static string ModelBenchDll =>
        typeof(RecordBenchTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "ModelBenchDll").Value!;

    private static readonly string[] Workloads =
        ["dpo_fixed", "dpo_ref_fixed", "label_fixed", "generate_fixed", "dpo_real", "dpo_ref_real", "label_real", "generate_real"];

    [Fact]
    public async Task Quick_record_runs_both_sides_on_the_same_weights_and_they_agree()
    {
        string dir = Directory.CreateTempSubdirectory("wt-record-test-").FullName;
        try
        {
            string report = Path.Combine(dir, "bench.md");
            var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in new[] { ModelBenchDll, "--suite", "record", "--quick", "--threads", "1", "--out", report }) info.ArgumentList.Add(a);
            info.Environment["DOTNET_NOLOGO"] = "1";
            using var process = Process.Start(info)!;
            var stdout = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            await process.WaitForExitAsync(TestContext.Current.CancellationToken);
            string output = await stdout + await stderr;
            if (process.ExitCode == 3 && output.Contains("no Python that imports torch", StringComparison.Ordinal))
            {
                const string what = "no Python that imports torch and numpy (Debian: python3-torch python3-numpy)";
                if (Environment.GetEnvironmentVariable("WT_CLIENT_TESTS") == "required") Assert.Fail($"{what} (./build.sh test installs it; WT_CLIENT_TESTS=required)");
                Assert.Skip(what);
            }
            Assert.True(process.ExitCode == 0, $"ModelBench --suite record --quick exited with {process.ExitCode}:\n{output}");
            string text = File.ReadAllText(report);

            // every workload has both sides' throughput and peak RSS
            foreach (var name in Workloads)
            {
                var row = Regex.Match(text, $@"^\| {name} \| [^|]+ \| ([0-9.]+) [^|]+ \| ([0-9.]+) [^|]+ \| ([0-9.]+)x \| ([0-9]+) \| ([0-9]+) \|", RegexOptions.Multiline);
                Assert.True(row.Success, $"no row for {name} in:\n{text}");
                for (int g = 1; g <= 5; g++) Assert.True(double.Parse(row.Groups[g].Value, CultureInfo.InvariantCulture) > 0, $"{name}: column {g} is not positive");
            }
            // the PyTorch side ran on an optimised BLAS, and it is named
            Assert.Matches(@"- PyTorch: .*BLAS mapped: .*(openblas|mkl)", text);
            Assert.Contains("- Engine: ", text);
            // the same numbers on both sides: forward log-probs, the first step's backward (its gradient norm), greedy tokens
            var relative = Regex.Matches(text, @"relative ([0-9.E+-]+)\)").Select(m => double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).ToList();
            Assert.True(relative.Count >= 10, $"expected the cross-checks of 6 log-prob workloads and 4 gradient norms:\n{text}");
            Assert.All(relative, r => Assert.True(r < 1e-3, $"the sides disagree (relative {r}):\n{text}"));
            var tokens = Regex.Matches(text, @"greedy tokens identical at ([0-9]+) of ([0-9]+) positions");
            Assert.Equal(2, tokens.Count);
            Assert.All(tokens, m => Assert.Equal(m.Groups[2].Value, m.Groups[1].Value));
            // the goals table is there, one row per goal of the issue
            Assert.Equal(7, Regex.Matches(text, @"^\| (realistic|fixed) lengths: ", RegexOptions.Multiline).Count);
            Assert.False(Directory.Exists(Path.Combine(Path.GetTempPath(), $"wt-record-{process.Id}")), "the run left its checkpoints and specs behind");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
