using System.Text.Json;
using WeakTeacher.Engine.Experiments;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Tests.Pipeline;
using Xunit;

namespace WeakTeacher.Tests.Experiments;

/// <summary>The experiments' machinery on the tiny embedded task (not the science): every study (1-9) over two seeds
/// in one run — report.json and report.md carry every row, verdict and plot, each study builds the data and models it
/// says it does, shared stages are made once, and a rerun reuses every finished stage.</summary>
public class ExperimentRunnerTests
{
    [Fact]
    public async Task TinyStudiesRunOverSeedsInWorkerProcessesAndResume()
    {
        string dir = Path.Combine(Path.GetTempPath(), "wt-experiments-" + Guid.NewGuid().ToString("N"));
        try
        {
            var ct = TestContext.Current.CancellationToken;
            string configPath = DefaultExperiments.Prepare(dir, DefaultTaskSize.Tiny, null, ct);
            var config = ExperimentConfig.Load(configPath) with { Seeds = [1, 2] };
            string results = config.OutputDir, seed1 = Path.Combine(results, "seed-1");
            // the seeds in two worker processes of the CLI, then the report from their results
            var workers = System.Diagnostics.Stopwatch.StartNew();
            var cli = await LabelShardsTests.Wt(["experiments", "--config", configPath, "--seeds", "1", "2", "--jobs", "2"], ct);
            workers.Stop();
            Assert.True(cli.Code == 0, cli.Output);
            Assert.Contains("worker 1/2: seeds 1, ", cli.Output);
            Assert.Contains("worker 2/2: seeds 2, ", cli.Output);
            foreach (var w in new[] { 1, 2 })
                Assert.Contains("seed " + w + " ", File.ReadAllText(Path.Combine(results, "logs", $"worker-{w}.log")));
            Assert.True(File.Exists(Path.Combine(results, "report.md")));
            Assert.Empty(Directory.EnumerateFiles(results, "*.new-*", SearchOption.AllDirectories));

            // in this process every stage the workers finished is found and reused: nothing trains, labels or evaluates
            var stages = new List<string>();
            var report = ExperimentRunner.Run(config, new RecordingProgress(stages), ct);
            Assert.True(stages.Count == 0, "the report pass redid stages the workers finished: " + string.Join(", ", stages.Distinct().Take(10)));
            Assert.Equal(Studies.All, report.Studies.Select(s => s.Name));

            using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(results, "report.json")));
            var studiesJson = json.RootElement.GetProperty("studies");
            var weak = studiesJson.GetProperty(Studies.WeakVsHuman);
            var row = weak.GetProperty("rows").GetProperty("weak_dpo");
            Assert.Equal(2, row.GetProperty("per_seed").GetArrayLength());
            Assert.Equal(4.84, row.GetProperty("paper").GetDouble());
            Assert.True(row.GetProperty("value").GetProperty("ci95_low").GetDouble() <= row.GetProperty("value").GetProperty("mean").GetDouble());
            Assert.Equal(3, weak.GetProperty("verdicts").GetArrayLength());

            string md = File.ReadAllText(Path.Combine(results, "report.md"));
            foreach (var study in report.Studies)
            {
                var studyJson = studiesJson.GetProperty(study.Name);
                Assert.NotEmpty(study.Plots);
                Assert.Equal(study.Plots.Count, studyJson.GetProperty("plots").GetArrayLength());
                foreach (var plot in study.Plots)
                {
                    byte[] png = File.ReadAllBytes(Path.Combine(results, plot.File));
                    Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], png[..4]);
                    Assert.Contains($"]({plot.File})", md);
                    Assert.Contains(plot.Caption, md);
                    Assert.Contains("95% confidence", study.Plots[0].Caption);
                }
                foreach (var r in study.Rows.Concat(study.Extra))
                {
                    Assert.Contains($"| `{r.Name}` |", md);
                    Assert.Equal(2, r.PerSeed.Count);
                    Assert.True(studyJson.GetProperty(study.Rows.Contains(r) ? "rows" : "extra").TryGetProperty(r.Name, out _), $"{study.Name}/{r.Name} in report.json");
                }
                Assert.NotEmpty(study.Verdicts);
                foreach (var v in study.Verdicts) Assert.Contains(v.Line, md);
            }
            Assert.Contains("Seeds: 1, 2", md);
            Assert.Contains("experiments-config.json", md);

            // 1: the students' losses, SFT and DPO apart
            var first = report.Studies[0];
            Assert.Equal(["dpo", "sft"], first.Losses.Select(l => l.Stage).Distinct().Order());
            Assert.Contains(first.Plots, p => p.File.EndsWith("-losses.png", StringComparison.Ordinal));
            // 2: agreement rates beside the gold-reward gaps
            var quality = Study(report, Studies.LabelQuality);
            Assert.InRange(quality.Row("teacher_vs_human").Value.Mean, 0, 1);
            Assert.True(double.IsFinite(quality.Row("weak/gap").Value.Mean));
            // 3: the agreeing and disagreeing subsets split the pairs
            Assert.Equal(report.UnlabelledPairs, Lines(Path.Combine(seed1, "data", "agree.jsonl")) + Lines(Path.Combine(seed1, "data", "disagree.jsonl")));
            Assert.Equal(report.UnlabelledPairs, Lines(Path.Combine(seed1, "data", "random.jsonl")));
            // 4: a quarter of the pairs keep their human label (the file is named without a slash)
            Assert.Contains(Study(report, Studies.LabelledFraction).Rows, r => r.Name == "human_1/4");
            Assert.Equal(report.UnlabelledPairs, Lines(Path.Combine(seed1, "data", "human_1-4.jsonl")));
            // 5: one DPO per beta on the shared SFT student
            Assert.Equal(config.Betas.Count * 2, Study(report, Studies.Beta).Rows.Count);
            foreach (var beta in config.Betas)
                Assert.True(Directory.Exists(Path.Combine(seed1, "student", "weak", $"dpo-beta{beta.ToString("R", System.Globalization.CultureInfo.InvariantCulture)}")));
            // 6: the SFT students of study 1 serve every DPO variant on the same data: one sft folder per variant
            Assert.Single(Directory.GetDirectories(Path.Combine(seed1, "student", "weak"), "sft"));
            Assert.True(Directory.Exists(Path.Combine(seed1, "student", "weak", "dpo-nosft-beta" + Beta(config))));
            // 7: two more teacher sizes, the reward-model teacher and the gold ceiling, each with its label agreement
            var size = Study(report, Studies.TeacherSize);
            foreach (var name in new[] { "teacher_small", "teacher_large", "teacher_reward_model", "teacher_gold" })
            {
                Assert.Contains(size.Rows, r => r.Name == name);
                Assert.InRange(size.Row($"{name}/teacher_vs_human").Value.Mean, 0, 1);
            }
            // 8: a Llama teacher with its own vocabulary labels an OPT student's data
            using (var teacherConfig = JsonDocument.Parse(File.ReadAllText(Path.Combine(config.CrossFamilyTeacher!.BaseModel, "config.json"))))
            using (var studentConfig = JsonDocument.Parse(File.ReadAllText(Path.Combine(PipelineConfig.Load(config.Pipeline).Student.BaseModel, "config.json"))))
            {
                Assert.Equal("llama", teacherConfig.RootElement.GetProperty("model_type").GetString());
                Assert.NotEqual("llama", studentConfig.RootElement.GetProperty("model_type").GetString());
                Assert.NotEqual(studentConfig.RootElement.GetProperty("vocab_size").GetInt32(), teacherConfig.RootElement.GetProperty("vocab_size").GetInt32());
            }
            Assert.Equal(report.UnlabelledPairs, Lines(Path.Combine(seed1, "labels", "llama", "labels.jsonl")));
            // 9: round 1's on-policy pairs are shared by both chains; later rounds have their own
            var iterated = Study(report, Studies.Iterated);
            Assert.Equal(["round0", "weak_round1", "gold_round1", "weak_round2", "gold_round2"], iterated.Rows.Select(r => r.Name));
            Assert.True(File.Exists(Path.Combine(seed1, "iterated", "round-1-pairs", "pairs.jsonl")));
            foreach (var chain in new[] { "weak", "gold" })
                Assert.True(File.Exists(Path.Combine(seed1, "iterated", chain, "round-2", "pairs.jsonl")));

            var again = ExperimentRunner.Run(config with { Studies = [Studies.WeakVsHuman, Studies.Iterated] }, null, ct);
            Assert.Equal(report.Studies[0].Rows.Select(r => r.PerSeed), again.Studies[0].Rows.Select(r => r.PerSeed));
            Assert.Equal(iterated.Rows.Select(r => r.PerSeed), again.Studies[1].Rows.Select(r => r.PerSeed));
            Assert.True(again.TotalSeconds < report.TotalSeconds / 2, "the rerun should reuse every finished stage");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    /// <summary>Records each reported stage at once (Progress&lt;T&gt; would post to the thread pool).</summary>
    private sealed class RecordingProgress(List<string> stages) : IProgress<JobProgress>
    {
        public void Report(JobProgress value) { lock (stages) stages.Add(value.Stage); }
    }

    private static StudyResult Study(ExperimentReport report, string name) => report.Studies.Single(s => s.Name == name);

    private static int Lines(string path) => File.ReadLines(path).Count(l => l.Length > 0);

    private static string Beta(ExperimentConfig config) =>
        PipelineConfig.Load(config.Pipeline).Student.Dpo.Beta.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
}
