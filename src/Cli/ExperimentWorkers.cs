using System.Diagnostics;
using WeakTeacher.Engine.Experiments;

namespace WeakTeacher.Cli;

/// <summary>
/// `wt experiments --jobs N`: the seeds split over N processes of this same command, each running its seeds' models
/// with a share of the CPU threads and writing only its seeds' folders (<see cref="ExperimentRunner.RunWorker"/>);
/// the caller then runs every seed in-process, finds each stage finished, and writes the report. Seeds are
/// independent, and the models of these studies are too small for libtorch's intra-op threads to keep two cores busy,
/// so separate one-thread processes use a small machine's cores better than one process (and the seeds' global RNG
/// state stays apart, which threads of one process would share).
/// </summary>
internal static class ExperimentWorkers
{
    /// <summary>Processes by default: on the CPU one per seed, up to twice the cores (each then gets one thread); on a GPU one.</summary>
    public static int DefaultJobs(string device, int seeds) =>
        device.StartsWith("cpu", StringComparison.OrdinalIgnoreCase) ? Math.Clamp(seeds, 1, 2 * Environment.ProcessorCount) : 1;

    /// <summary>Runs the workers to the end; throws naming the first that failed and its log.</summary>
    public static void Run(string configPath, ExperimentConfig config, IReadOnlyList<string> studies, int jobs, CancellationToken ct)
    {
        var seeds = config.Seeds;
        jobs = Math.Min(jobs, seeds.Count);
        int threads = Math.Max(1, Environment.ProcessorCount / jobs);
        string logs = Path.Combine(config.OutputDir, "logs");
        Directory.CreateDirectory(logs);
        var workers = new List<(Process Process, WorkerLog Writer, string Log, string Seeds, Stopwatch Clock)>();
        try
        {
            for (int w = 0; w < jobs; w++)
            {
                var mine = seeds.Where((_, i) => i % jobs == w).ToList();
                string seedList = string.Join(' ', mine);
                string log = Path.Combine(logs, $"worker-{w + 1}.log");
                var start = SelfStart();
                foreach (var a in new[] { "experiments", "--config", configPath, "--worker", "--threads", threads.ToString() }) start.ArgumentList.Add(a);
                start.ArgumentList.Add("--seeds");
                foreach (var s in mine) start.ArgumentList.Add(s.ToString(System.Globalization.CultureInfo.InvariantCulture));
                foreach (var s in studies) { start.ArgumentList.Add("--study"); start.ArgumentList.Add(s); }
                start.RedirectStandardOutput = start.RedirectStandardError = true;
                var process = new Process { StartInfo = start };
                var writer = new WorkerLog(log);
                process.OutputDataReceived += (_, e) => writer.Write(e.Data);
                process.ErrorDataReceived += (_, e) => writer.Write(e.Data);
                process.Start();
                process.BeginOutputReadLine();
                process.BeginErrorReadLine();
                workers.Add((process, writer, log, seedList, Stopwatch.StartNew()));
                Console.WriteLine($"worker {w + 1}/{jobs}: seeds {seedList}, {threads} thread(s), log {log}");
            }
            using var cancel = ct.Register(() => { foreach (var w in workers) Kill(w.Process); });
            foreach (var (process, writer, log, seedList, clock) in workers)
            {
                process.WaitForExit(); // also waits for the redirected output to be read to its end
                writer.Dispose();
                ct.ThrowIfCancellationRequested();
                if (process.ExitCode != 0)
                {
                    foreach (var other in workers) Kill(other.Process);
                    var tail = File.Exists(log) ? File.ReadLines(log).TakeLast(15) : [];
                    throw new InvalidOperationException($"the worker for seeds {seedList} failed (exit code {process.ExitCode}); its log {log} ends:\n"
                        + string.Join('\n', tail));
                }
                Console.WriteLine($"worker for seeds {seedList}: done in {clock.Elapsed.TotalSeconds:F0} s");
            }
        }
        finally
        {
            foreach (var w in workers)
            {
                w.Writer.Dispose();
                w.Process.Dispose();
            }
        }
    }

    /// <summary>This command again: the apphost, or `dotnet wt.dll` when run through the dotnet host.</summary>
    private static ProcessStartInfo SelfStart()
    {
        string process = Environment.ProcessPath ?? throw new InvalidOperationException("cannot find this process's executable");
        var start = new ProcessStartInfo(process) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(process).Equals("dotnet", StringComparison.OrdinalIgnoreCase))
            start.ArgumentList.Add(typeof(ExperimentWorkers).Assembly.Location);
        return start;
    }

    /// <summary>A worker's stdout and stderr lines in its log file; lines that arrive after it closed (a killed worker's
    /// last output) are dropped instead of failing on a closed file.</summary>
    private sealed class WorkerLog(string path) : IDisposable
    {
        private readonly StreamWriter _writer = new(path, append: false) { AutoFlush = true };
        private bool _closed;

        public void Write(string? line)
        {
            if (line is null) return;
            lock (_writer) if (!_closed) _writer.WriteLine(line);
        }

        public void Dispose()
        {
            lock (_writer)
            {
                if (_closed) return;
                _closed = true;
                _writer.Dispose();
            }
        }
    }

    private static void Kill(Process process)
    {
        try { if (!process.HasExited) process.Kill(entireProcessTree: true); }
        catch (InvalidOperationException) { } // exited meanwhile
    }
}
