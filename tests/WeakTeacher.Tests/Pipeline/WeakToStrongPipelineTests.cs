using System.Text.Json;
using WeakTeacher.Engine.Pipeline;
using Xunit;

namespace WeakTeacher.Tests.Pipeline;

/// <summary>The main job end to end on the tiny embedded task: every stage runs, the report has the promised shape,
/// and a second run over the same folder resumes (finished stages are not redone) with identical numbers.</summary>
public class WeakToStrongPipelineTests
{
    [Fact]
    public void TinyPipelineRunsEndToEndAndResumes()
    {
        string dir = Path.Combine(Path.GetTempPath(), "wt-pipeline-" + Guid.NewGuid().ToString("N"));
        try
        {
            var ct = TestContext.Current.CancellationToken;
            var assets = DefaultTask.Prepare(Path.Combine(dir, "task"), null, ct, DefaultTaskSize.Tiny);
            var config = DemoConfig.Create(assets, Path.Combine(dir, "run"), DefaultTaskSize.Tiny);
            var report = WeakToStrongPipeline.Run(config, null, ct);

            using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "run", "report.json")));
            var root = json.RootElement;
            foreach (var key in new[] { "teacher_vs_human", "teacher_vs_gold", "human_vs_gold" })
            {
                double rate = root.GetProperty("labels").GetProperty(key).GetDouble();
                Assert.InRange(rate, 0, 1);
            }
            foreach (var source in new[] { "human", "weak" })
                foreach (var side in new[] { "chosen", "rejected" })
                    Assert.Equal(JsonValueKind.Number, root.GetProperty("gold_gap").GetProperty(source).GetProperty(side).ValueKind);
            foreach (var student in new[] { "sft", "human_dpo", "weak_dpo" })
                Assert.Equal(JsonValueKind.Number, root.GetProperty("students").GetProperty(student).GetProperty("gold_reward").ValueKind);
            Assert.True(root.GetProperty("seconds").GetProperty("total").GetDouble() > 0);
            Assert.True(File.Exists(Path.Combine(dir, "run", "report.md")));
            Assert.NotEmpty(Directory.GetFiles(Path.Combine(dir, "run"), "*.png"));
            // the human baseline was trained on the hidden human labels; the weak student on the teacher's
            Assert.True(File.Exists(Path.Combine(dir, "run", "labels", "human-labelled.jsonl")));
            Assert.True(File.Exists(Path.Combine(dir, "run", "teacher", TeacherManifest.FileName)));
            // finished stages keep their final models, not their resumable checkpoints
            Assert.Empty(Directory.GetDirectories(Path.Combine(dir, "run"), "checkpoint-*", SearchOption.AllDirectories));
            Assert.True(File.Exists(Path.Combine(dir, "run", "teacher", "dpo", "model.safetensors")));

            var again = WeakToStrongPipeline.Run(config, null, ct);
            Assert.Equal(report.Labels, again.Labels);
            Assert.Equal(report.Students.Select(s => s.Mean), again.Students.Select(s => s.Mean));
            Assert.True(again.Stages.Sum(s => s.Seconds) < report.Stages.Sum(s => s.Seconds), "the rerun should reuse finished stages");

            // a margin filter: the label stage is redone (its result says why), and the human baseline trains on the
            // same kept pairs as the weak-label student; teacher_vs_human keeps its meaning (every pair)
            var filtered = WeakToStrongPipeline.Run(config with { Labelling = config.Labelling with { MarginQuantile = 0.5 } }, null, ct);
            string labelsDir = Path.Combine(dir, "run", "labels");
            using var labelStage = JsonDocument.Parse(File.ReadAllText(Path.Combine(labelsDir, PipelineStages.ResultFile)));
            Assert.Contains("margin_quantile", labelStage.RootElement.GetProperty("RedoneBecause").GetString());
            var keptFlags = File.ReadLines(Path.Combine(labelsDir, "labels.jsonl")).Where(l => l.Length > 0)
                .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("kept").GetBoolean()).ToList();
            int kept = keptFlags.Count(k => k);
            Assert.InRange(kept, 1, keptFlags.Count - 1);
            Assert.Equal(kept, File.ReadLines(Path.Combine(labelsDir, "human-labelled.jsonl")).Count(l => l.Length > 0));
            var metrics = labelStage.RootElement.GetProperty("Metrics");
            Assert.Equal(filtered.Labels!.TeacherVsHuman.Rate, metrics.GetProperty("teacher_vs_human").GetDouble(), 9);
            Assert.Equal(report.Labels!.TeacherVsHuman.Rate, filtered.Labels.TeacherVsHuman.Rate, 9);
            Assert.True(metrics.TryGetProperty("teacher_vs_human_kept", out _));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void ConfigFileResolvesPathsAndRejectsUnknownFields()
    {
        string dir = Path.Combine(Path.GetTempPath(), "wt-config-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string path = Path.Combine(dir, "pipeline.json");
            File.WriteAllText(path, """
            {
              "output_dir": "out",
              "teacher": { "base_model": "models/opt-125m", "dpo": { "beta": 0.2, "loss_type": "ipo" } },
              "student": { "base_model": "/abs/opt-1.3b" },
              "data": { "labelled": "d/l.jsonl", "unlabelled": "d/u.parquet", "eval_prompts": "d/p.jsonl" },
              "evaluation": { "gold_scorer": "synthetic", "max_new_tokens": 64 }
            }
            """);
            var config = PipelineConfig.Load(path);
            Assert.Equal(Path.Combine(dir, "out"), config.OutputDir);
            Assert.Equal(Path.Combine(dir, "models", "opt-125m"), config.Teacher.BaseModel);
            Assert.Equal("/abs/opt-1.3b", config.Student.BaseModel);
            Assert.Equal(0.2, config.Teacher.Dpo.Beta);
            Assert.Equal([WeakTeacher.CudaKernels.PreferenceLossType.Ipo], config.Teacher.Dpo.LossTypes);
            Assert.Equal("synthetic", config.Evaluation.GoldScorer);
            Assert.Equal(64, config.Evaluation.MaxNewTokens);

            File.WriteAllText(path, """{ "teacher": { "base_model": "x", "bogus": 1 }, "student": { "base_model": "y" }, "data": { "labelled": "a", "unlabelled": "b", "eval_prompts": "c" } }""");
            var error = Assert.Throws<InvalidDataException>(() => PipelineConfig.Load(path));
            Assert.Contains("bogus", error.Message);
            Assert.Contains(path, error.Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
