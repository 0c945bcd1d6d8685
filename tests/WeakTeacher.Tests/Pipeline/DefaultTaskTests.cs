using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Tokenization;
using Xunit;

namespace WeakTeacher.Tests.Pipeline;

public class DefaultTaskTests
{
    [Fact]
    public void TinyTaskPreparesLoadableCheckpointsOnce()
    {
        string dir = Path.Combine(Path.GetTempPath(), "wt-default-" + Guid.NewGuid().ToString("N"));
        try
        {
            var losses = new List<double>();
            var progress = new Progress<JobProgress>(p => { if (p.Metrics.TryGetValue("loss", out var l)) lock (losses) losses.Add(l); });
            var assets = DefaultTask.Prepare(dir, progress, TestContext.Current.CancellationToken, DefaultTaskSize.Tiny);
            foreach (var path in new[] { assets.LabelledPath, assets.UnlabelledPath, assets.EvalPromptsPath, assets.UnlabelledGoldPath })
                Assert.True(File.Exists(path), path);
            foreach (var modelDir in new[] { assets.TeacherBaseDir, assets.StudentBaseDir })
            {
                using var model = PretrainedModel.Load(modelDir);
                var tokenizer = HfTokenizer.Load(modelDir);
                Assert.Equal(tokenizer.VocabSize, model.Config.VocabSize);
            }
            // a second call finds the prepared folder and does no work
            var stamp = File.GetLastWriteTimeUtc(Path.Combine(assets.TeacherBaseDir, "model.safetensors"));
            DefaultTask.Prepare(dir, null, TestContext.Current.CancellationToken, DefaultTaskSize.Tiny);
            Assert.Equal(stamp, File.GetLastWriteTimeUtc(Path.Combine(assets.TeacherBaseDir, "model.safetensors")));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void PretrainingLowersTheLoss()
    {
        var task = WeakTeacher.Engine.Synthetic.SyntheticTask.Generate(new() { Seed = 3, LabelledPairs = 4, UnlabelledPairs = 4, EvalPrompts = 2, PretrainCorpusSize = 300 });
        string dir = Path.Combine(Path.GetTempPath(), "wt-pretrain-" + Guid.NewGuid().ToString("N"));
        try
        {
            var tokenizer = ByteLevelBpeTrainer.Train(task.PretrainCorpus, 350, ByteLevelBpeTrainer.OptSpecialTokens, dir);
            var config = new WeakTeacher.Engine.Models.ModelConfig
            {
                Family = WeakTeacher.Engine.Models.ModelFamily.Opt, ModelType = "opt", VocabSize = tokenizer.VocabSize,
                HiddenSize = 32, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 2, IntermediateSize = 64,
                MaxPositionEmbeddings = 128, WordEmbedProjDim = 32, BosTokenId = 2, EosTokenIds = new[] { 2 }, PadTokenId = 1,
                TieWordEmbeddings = true,
            };
            using var model = WeakTeacher.Engine.Models.CausalLMFactory.Create(config, seed: 5);
            var documents = task.PretrainCorpus.Select(d => new WeakTeacher.Engine.Data.SftExample(d[..(d.IndexOf("Answer: ") + 8)], d[(d.IndexOf("Answer: ") + 8)..])).ToList();
            var losses = Pretraining.Train(model, tokenizer, documents, new PretrainConfig { MaxSteps = 40, BatchSize = 16 }, "pretrain", null, TestContext.Current.CancellationToken);
            Assert.Equal(40, losses.Count);
            Assert.True(losses.TakeLast(5).Average() < losses.Take(5).Average() - 1.0,
                $"loss did not fall: first {losses.Take(5).Average():F3}, last {losses.TakeLast(5).Average():F3}");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
