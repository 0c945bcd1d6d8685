using System.Diagnostics;
using System.Reflection;
using WeakTeacher.Engine.Pipeline;
using Xunit;

namespace WeakTeacher.Tests.Pipeline;

/// <summary>
/// Sharded labelling (issue 16 point 1): `wt label --shard-index I --shard-count N` in several real processes at once
/// (the index also from JOB_COMPLETION_INDEX / SLURM_ARRAY_TASK_ID), then `wt label merge`: the merged files are
/// byte-identical to a single-process run; a missing shard, a changed input or mixed shard counts are refused (exit 2).
/// </summary>
public class LabelShardsTests
{
    [Fact]
    public void SlicesAreContiguousWholeBatchesCoveringEveryRowOnce()
    {
        foreach (int total in new[] { 0, 1, 7, 64, 130 })
            foreach (int batch in new[] { 1, 5, 16 })
                foreach (int count in new[] { 1, 2, 3, 8, 40 })
                {
                    int next = 0;
                    for (int i = 0; i < count; i++)
                    {
                        var (start, rows) = LabelShards.Slice(total, batch, i, count);
                        Assert.Equal(next, start);
                        Assert.True(rows >= 0);
                        if (start + rows < total) Assert.Equal(0, rows % batch); // only the last non-empty shard has a partial batch
                        Assert.Equal(0, start % batch);
                        next = start + rows;
                    }
                    Assert.Equal(total, next);
                }
        Assert.Throws<ArgumentOutOfRangeException>(() => LabelShards.Slice(10, 2, 3, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => LabelShards.Slice(10, 2, 0, 0));
    }

    [Fact]
    public async Task ShardsLabelledInSeparateProcessesMergeToTheSingleProcessBytes()
    {
        var ct = TestContext.Current.CancellationToken;
        string dir = Path.Combine(Path.GetTempPath(), "wt-shards-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (teacher, input) = TinyTeacher(dir, ct);
            string[] common = ["label", "--teacher", teacher, "--input", input, "--batch-size", "5", "--margin-quantile", "0.3", "--threads", "1"];
            string single = Path.Combine(dir, "single"), sharded = Path.Combine(dir, "sharded");
            var one = await Wt([.. common, "--out", single], ct);
            Assert.True(one.Code == 0, one.Output);

            // three shards side by side: one from the flags, one as a Kubernetes Indexed Job pod, one as a Slurm array task
            var runs = await Task.WhenAll(
                Wt([.. common, "--out", sharded, "--shard-index", "0", "--shard-count", "3"], ct),
                Wt([.. common, "--out", sharded, "--shard-count", "3"], ct, ("JOB_COMPLETION_INDEX", "1")),
                Wt([.. common, "--out", sharded], ct, ("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "3")));
            foreach (var r in runs) Assert.True(r.Code == 0, r.Output);
            for (int i = 0; i < 3; i++) Assert.Contains(LabelShards.ShardName(i, 3), string.Join("\n", runs.Select(r => r.Output)));

            // a missing shard: one clear line, exit 2, nothing written
            string manifest = Path.Combine(sharded, LabelShards.FolderName, LabelShards.ShardName(1, 3) + ".json");
            string saved = File.ReadAllText(manifest);
            File.Delete(manifest);
            var missing = await Wt(["label", "merge", "--out", sharded], ct);
            Assert.Equal(2, missing.Code);
            Assert.Contains("shard-00001-of-00003", missing.Error);
            Assert.DoesNotContain("   at ", missing.Error);
            Assert.False(File.Exists(Path.Combine(sharded, "labelled.jsonl")));
            File.WriteAllText(manifest, saved);

            // a shard's labels file that does not match its manifest counts as unfinished
            string data = Path.Combine(sharded, LabelShards.FolderName, LabelShards.ShardName(2, 3) + ".labels.jsonl");
            byte[] good = File.ReadAllBytes(data);
            File.WriteAllBytes(data, good[..^10]);
            Assert.Equal(2, (await Wt(["label", "merge", "--out", sharded], ct)).Code);
            File.WriteAllBytes(data, good);

            var merged = await Wt(["label", "merge", "--out", sharded], ct);
            Assert.True(merged.Code == 0, merged.Output);
            foreach (var file in new[] { "labelled.jsonl", "labels.jsonl" })
                Assert.Equal(File.ReadAllBytes(Path.Combine(single, file)), File.ReadAllBytes(Path.Combine(sharded, file)));
            Assert.True(File.ReadAllLines(Path.Combine(sharded, "labelled.jsonl")).Length < File.ReadAllLines(input).Length); // the filter ran over all shards

            // a scheduler's retry of a finished shard does not redo it
            var retry = await Wt([.. common, "--out", sharded, "--shard-index", "2", "--shard-count", "3"], ct);
            Assert.True(retry.Code == 0, retry.Output);
            Assert.DoesNotContain("label/shard", retry.Output);

            // the input changed after labelling: refused
            File.AppendAllText(input, File.ReadLines(input).First() + "\n");
            File.Delete(Path.Combine(sharded, PipelineStages.ResultFile));
            var changed = await Wt(["label", "merge", "--out", sharded], ct);
            Assert.Equal(2, changed.Code);
            Assert.Contains("changed", changed.Error);

            // bad shard arguments
            var bad = await Wt([.. common, "--out", sharded, "--shard-index", "3", "--shard-count", "3"], ct);
            Assert.Equal(2, bad.Code);
            Assert.Contains("--shard-index", bad.Error);
            var noCount = await Wt([.. common, "--out", sharded], ct, ("JOB_COMPLETION_INDEX", "0"));
            Assert.Equal(2, noCount.Code);
            Assert.Contains("--shard-count", noCount.Error);
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    [Fact]
    public void MergeRefusesShardsOfDifferentCounts()
    {
        var ct = TestContext.Current.CancellationToken;
        string dir = Path.Combine(Path.GetTempPath(), "wt-shards-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (teacher, input) = TinyTeacher(dir, ct);
            var request = new LabelRequest { TeacherDir = teacher, UnlabelledDataPath = input, BatchSize = 8 };
            string work = Path.Combine(dir, "work");
            LabelShards.RunShard(request, work, 0, 2, null, ct);
            LabelShards.RunShard(request, work, 1, 3, null, ct);
            var e = Assert.Throws<InvalidDataException>(() => LabelShards.Merge(work));
            Assert.Contains("different shard counts", e.Message);
            LabelShards.RunShard(request, work, 1, 2, null, ct);
            File.Delete(Path.Combine(work, LabelShards.FolderName, LabelShards.ShardName(1, 3) + ".json"));
            var result = LabelShards.Merge(work);
            Assert.Equal(File.ReadLines(input).Count(), (int)result.Metrics["pairs"]);
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>The tiny embedded task with a DPO teacher made of its two base models (policy = teacher base, reference =
    /// student base): real checkpoints, distinct log-probs, so margins differ pair to pair.</summary>
    internal static (string Teacher, string Input) TinyTeacher(string dir, CancellationToken ct)
    {
        var assets = DefaultTask.Prepare(Path.Combine(dir, "task"), null, ct, DefaultTaskSize.Tiny);
        string teacher = Path.Combine(dir, "teacher");
        Directory.CreateDirectory(teacher);
        TeacherManifest.Write(teacher, new TeacherManifest(TeacherMethod.Dpo, assets.TeacherBaseDir, assets.StudentBaseDir, null, 0.1));
        return (teacher, assets.UnlabelledPath);
    }

    internal sealed record WtRun(int Code, string Output, string Error);

    internal static string WtDll =>
        typeof(LabelShardsTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "WtDll").Value!;

    /// <summary>Runs `dotnet wt.dll args` as a separate process (own runtime, own libtorch) with extra environment variables.</summary>
    internal static async Task<WtRun> Wt(string[] args, CancellationToken ct, params (string Name, string Value)[] env)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(WtDll);
        foreach (var a in args) info.ArgumentList.Add(a);
        foreach (var name in new[] { "JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT" })
            info.Environment.Remove(name);
        foreach (var (name, value) in env) info.Environment[name] = value;
        info.Environment["DOTNET_NOLOGO"] = "1";
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct);
        return new WtRun(process.ExitCode, await stdout + await stderr, await stderr);
    }
}
