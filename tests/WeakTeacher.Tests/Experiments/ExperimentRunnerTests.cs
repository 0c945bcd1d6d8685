using System.Text.Json;
using WeakTeacher.Engine.Experiments;
using WeakTeacher.Engine.Pipeline;
using Xunit;

namespace WeakTeacher.Tests.Experiments;

/// <summary>The experiments' machinery on the tiny embedded task (not the science): two seeds, studies 1, 2 and 6 —
/// report.json and report.md carry every row, verdict and plot, and a rerun reuses every finished stage.</summary>
public class ExperimentRunnerTests
{
    [Fact]
    public void TinyStudiesRunOverSeedsAndResume()
    {
        string dir = Path.Combine(Path.GetTempPath(), "wt-experiments-" + Guid.NewGuid().ToString("N"));
        try
        {
            var ct = TestContext.Current.CancellationToken;
            var config = ExperimentConfig.Load(DefaultExperiments.Prepare(dir, DefaultTaskSize.Tiny, null, ct)) with
            {
                Seeds = [1, 2],
                Studies = [Studies.WeakVsHuman, "2", Studies.NoSft],
            };
            var report = ExperimentRunner.Run(config, null, ct);
            Assert.Equal([Studies.WeakVsHuman, Studies.LabelQuality, Studies.NoSft], report.Studies.Select(s => s.Name));
            using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(config.OutputDir, "report.json")));
            var weak = json.RootElement.GetProperty("studies").GetProperty(Studies.WeakVsHuman);
            var row = weak.GetProperty("rows").GetProperty("weak_dpo");
            Assert.Equal(2, row.GetProperty("per_seed").GetArrayLength());
            Assert.Equal(4.84, row.GetProperty("paper").GetDouble());
            Assert.True(row.GetProperty("value").GetProperty("ci95_low").GetDouble() <= row.GetProperty("value").GetProperty("mean").GetDouble());
            Assert.Equal(3, weak.GetProperty("verdicts").GetArrayLength());
            string md = File.ReadAllText(Path.Combine(config.OutputDir, "report.md"));
            foreach (var study in report.Studies)
            {
                Assert.NotNull(study.Plot);
                Assert.True(File.Exists(Path.Combine(config.OutputDir, study.Plot)));
                Assert.Contains($"]({study.Plot})", md);
                foreach (var r in study.Rows) Assert.Contains($"`{r.Name}`", md);
            }
            Assert.Contains("supported at 95%", md);
            // the SFT students of study 1 serve study 6's DPO rows: one sft folder per data variant and seed
            Assert.Single(Directory.GetDirectories(Path.Combine(config.OutputDir, "seed-1", "student", "weak"), "sft"));

            var again = ExperimentRunner.Run(config, null, ct);
            Assert.Equal(report.Studies[0].Rows.Select(r => r.PerSeed), again.Studies[0].Rows.Select(r => r.PerSeed));
            Assert.True(again.TotalSeconds < report.TotalSeconds, "the rerun should reuse every finished stage");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
