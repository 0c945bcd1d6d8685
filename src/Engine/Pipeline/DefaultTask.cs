using System.Text.Json;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Synthetic;
using WeakTeacher.Engine.Tokenization;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>Where the embedded task's files are, once prepared.</summary>
public sealed record DefaultTaskAssets(string TeacherBaseDir, string StudentBaseDir, string LabelledPath, string UnlabelledPath,
    string EvalPromptsPath, string UnlabelledGoldPath);

/// <summary>How big the embedded task and its base models are.</summary>
public enum DefaultTaskSize
{
    /// <summary>The main job's size (`./build.sh demo`): minutes on a 2-core CPU.</summary>
    Demo,
    /// <summary>Seconds: for tests and service smoke checks.</summary>
    Tiny,
}

/// <summary>
/// The embedded default task: the synthetic preference data (Synthetic/), a byte-level BPE tokenizer trained on
/// it, and two base models pretrained from scratch on its text (a weak teacher and a larger student), saved as
/// ordinary Hugging Face checkpoints with their tokenizer. Nothing is downloaded. Prepared once per folder.
/// </summary>
public static class DefaultTask
{
    private const string DoneMarker = "prepared.json";

    public static DefaultTaskAssets AssetsIn(string dir) => new(
        Path.Combine(dir, "teacher-base"), Path.Combine(dir, "student-base"),
        Path.Combine(dir, "data", SyntheticTask.LabelledFile), Path.Combine(dir, "data", SyntheticTask.UnlabelledFile),
        Path.Combine(dir, "data", SyntheticTask.EvalPromptsFile), Path.Combine(dir, "data", SyntheticTask.UnlabelledGoldFile));

    public static Task<DefaultTaskAssets> PrepareAsync(string dir, IProgress<JobProgress>? progress, CancellationToken ct,
        DefaultTaskSize size = DefaultTaskSize.Demo, int seed = 1)
        => Task.Run(() => Prepare(dir, progress, ct, size, seed), ct);

    public static DefaultTaskAssets Prepare(string dir, IProgress<JobProgress>? progress, CancellationToken ct,
        DefaultTaskSize size = DefaultTaskSize.Demo, int seed = 1)
    {
        var assets = AssetsIn(dir);
        string marker = Path.Combine(dir, DoneMarker);
        string wanted = JsonSerializer.Serialize(new { size = size.ToString(), seed, version = 2 });
        if (File.Exists(marker) && File.ReadAllText(marker) == wanted) return assets;

        Directory.CreateDirectory(dir);
        bool tiny = size == DefaultTaskSize.Tiny;
        var task = SyntheticTask.Generate(new SyntheticTaskOptions
        {
            Seed = seed,
            LabelledPairs = tiny ? 64 : 512,
            UnlabelledPairs = tiny ? 128 : 2048,
            EvalPrompts = tiny ? 16 : 128,
            PretrainCorpusSize = tiny ? 800 : 6000,
        });
        task.Save(Path.Combine(dir, "data"));

        string tokenizerDir = Path.Combine(dir, "tokenizer");
        var tokenizer = ByteLevelBpeTrainer.Train(task.PretrainCorpus, tiny ? 400 : 1024, ByteLevelBpeTrainer.OptSpecialTokens, tokenizerDir);

        // The paper's teacher and student are both OPT models; the student is the larger one.
        var teacherConfig = OptConfig(tokenizer, hidden: tiny ? 32 : 64, layers: 2, heads: 4);
        var studentConfig = OptConfig(tokenizer, hidden: tiny ? 48 : 128, layers: tiny ? 2 : 4, heads: 4);
        var documents = SplitDocuments(task.PretrainCorpus);
        var pretrain = new PretrainConfig { MaxSteps = tiny ? 40 : 450, BatchSize = tiny ? 16 : 32, Seed = seed };
        PretrainAndSave(teacherConfig, tokenizer, documents, pretrain, assets.TeacherBaseDir, "pretrain/teacher", progress, ct);
        PretrainAndSave(studentConfig, tokenizer, documents, pretrain with { Seed = seed + 1 }, assets.StudentBaseDir,
            "pretrain/student", progress, ct);
        File.WriteAllText(marker, wanted);
        return assets;
    }

    internal static ModelConfig OptConfig(HfTokenizer tokenizer, int hidden, int layers, int heads) => new()
    {
        Family = ModelFamily.Opt,
        ModelType = "opt",
        VocabSize = tokenizer.VocabSize,
        HiddenSize = hidden,
        NumHiddenLayers = layers,
        NumAttentionHeads = heads,
        NumKeyValueHeads = heads,
        IntermediateSize = hidden * 4,
        MaxPositionEmbeddings = 256,
        WordEmbedProjDim = hidden,
        BosTokenId = tokenizer.BosTokenId,
        EosTokenIds = new[] { tokenizer.EosTokenId },
        PadTokenId = tokenizer.PadTokenId,
        TieWordEmbeddings = true,
        HiddenAct = "relu",
        DoLayerNormBefore = true,
    };

    /// <summary>The corpus' "Question: ...\n\nAnswer: ..." documents as (templated prompt, response) pairs.</summary>
    internal static List<SftExample> SplitDocuments(IReadOnlyList<string> corpus)
    {
        const string answer = "\n\nAnswer: ";
        return corpus.Select(d =>
        {
            int at = d.IndexOf(answer, StringComparison.Ordinal);
            if (at < 0) throw new InvalidDataException($"pretraining document without the paper's template: {d}");
            return new SftExample(d[..(at + answer.Length)], d[(at + answer.Length)..]);
        }).ToList();
    }

    internal static void PretrainAndSave(ModelConfig config, HfTokenizer tokenizer, IReadOnlyList<SftExample> corpus, PretrainConfig options,
        string outputDir, string stage, IProgress<JobProgress>? progress, CancellationToken ct)
    {
        using var model = CausalLMFactory.Create(config, seed: options.Seed);
        Pretraining.Train(model, tokenizer, corpus, options, stage, progress, ct);
        PretrainedModel.Save(model, outputDir);
        tokenizer.Save(outputDir);
    }
}
