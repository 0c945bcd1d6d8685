using System.Text.Json;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Synthetic;
using WeakTeacher.Engine.Tokenization;

namespace WeakTeacher.Engine.Experiments;

/// <summary>
/// The default study set on the embedded task (`./build.sh experiments`): the demo's task and pipeline settings, plus
/// what the studies need beyond them — teacher bases of two more sizes (study 7), a Llama-architecture teacher with its
/// own byte-level BPE vocabulary (study 8), and fresh prompts for the on-policy rounds (study 9) — all pretrained
/// here from the task's text with the demo's recipe. Writes pipeline.json and experiments.json into the folder, so a
/// user can edit them and rerun with `wt experiments --config`.
/// </summary>
public static class DefaultExperiments
{
    public static string Prepare(string dir, DefaultTaskSize size, IProgress<JobProgress>? progress, CancellationToken ct, string device = "cpu")
    {
        bool tiny = size == DefaultTaskSize.Tiny;
        var assets = DefaultTask.Prepare(Path.Combine(dir, "task"), progress, ct, size);
        string basesDir = Path.Combine(dir, "task", "extra-bases");
        string marker = Path.Combine(basesDir, "prepared.json");
        string wanted = JsonSerializer.Serialize(new { size = size.ToString(), version = 1 });
        string small = Path.Combine(basesDir, "teacher-small"), large = Path.Combine(basesDir, "teacher-large"), llama = Path.Combine(basesDir, "teacher-llama");
        string freshPrompts = Path.Combine(basesDir, "fresh_prompts.jsonl");
        int rounds = 2, perRound = tiny ? 8 : 128;
        if (!(File.Exists(marker) && File.ReadAllText(marker) == wanted))
        {
            Directory.CreateDirectory(basesDir);
            var corpus = File.ReadLines(Path.Combine(Path.GetDirectoryName(assets.LabelledPath)!, SyntheticTask.PretrainFile)).Where(l => l.Length > 0)
                .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("text").GetString()!).ToList();
            var documents = DefaultTask.SplitDocuments(corpus);
            var tokenizer = HfTokenizer.Load(assets.TeacherBaseDir);
            var pretrain = new PretrainConfig { MaxSteps = tiny ? 40 : 450, BatchSize = tiny ? 16 : 32, Seed = 3 };
            DefaultTask.PretrainAndSave(DefaultTask.OptConfig(tokenizer, hidden: tiny ? 16 : 32, layers: 2, heads: 4), tokenizer, documents,
                pretrain, small, "pretrain/teacher-small", progress, ct);
            DefaultTask.PretrainAndSave(DefaultTask.OptConfig(tokenizer, hidden: tiny ? 48 : 96, layers: tiny ? 2 : 3, heads: 4), tokenizer, documents,
                pretrain with { Seed = 4 }, large, "pretrain/teacher-large", progress, ct);
            // another architecture and another vocabulary: labels cross between teacher and student as text only
            string llamaTokDir = Path.Combine(basesDir, "llama-tokenizer");
            var llamaTokenizer = ByteLevelBpeTrainer.Train(corpus, tiny ? 300 : 700, ByteLevelBpeTrainer.OptSpecialTokens, llamaTokDir);
            int hidden = tiny ? 32 : 64;
            var llamaConfig = new ModelConfig
            {
                Family = ModelFamily.Llama,
                ModelType = "llama",
                VocabSize = llamaTokenizer.VocabSize,
                HiddenSize = hidden,
                NumHiddenLayers = 2,
                NumAttentionHeads = 4,
                NumKeyValueHeads = 2,
                IntermediateSize = hidden * 3,
                MaxPositionEmbeddings = 256,
                BosTokenId = llamaTokenizer.BosTokenId,
                EosTokenIds = new[] { llamaTokenizer.EosTokenId },
                PadTokenId = llamaTokenizer.PadTokenId,
                TieWordEmbeddings = true,
                HiddenAct = "silu",
                NormEps = 1e-5,
                EnableBias = false,
            };
            DefaultTask.PretrainAndSave(llamaConfig, llamaTokenizer, documents, pretrain with { Seed = 5 }, llama, "pretrain/teacher-llama", progress, ct);
            // fresh prompts: another seed of the task's generator, none of them an evaluation prompt
            var evalPrompts = PromptFile.Read(assets.EvalPromptsPath).ToHashSet();
            var fresh = SyntheticTask.Generate(new SyntheticTaskOptions
            {
                Seed = 977, LabelledPairs = 0, UnlabelledPairs = 0, EvalPrompts = rounds * perRound * 2, PretrainCorpusSize = 0,
            }).EvalPrompts.Where(p => !evalPrompts.Contains(p)).Distinct().Take(rounds * perRound).ToList();
            File.WriteAllLines(freshPrompts, fresh.Select(p => JsonSerializer.Serialize(new { prompt = p })));
            File.WriteAllText(marker, wanted);
        }

        string runDir = Path.Combine(dir, "run");
        var pipeline = DemoConfig.Create(assets, runDir, size, device);
        string pipelinePath = Path.Combine(dir, "pipeline.json");
        AtomicFile.WriteAllText(pipelinePath, pipeline.ToJson());
        var experiments = new ExperimentConfig
        {
            OutputDir = Path.Combine(dir, "results"),
            Pipeline = pipelinePath,
            Seeds = [1, 2, 3],
            UnlabelledPairs = tiny ? 0 : 768,
            Betas = tiny ? [0.1, 0.5] : [0.05, 0.1, 0.2, 0.3, 0.5],
            HumanFractions = tiny ? [0.25] : [1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0 / 2],
            Teachers =
            [
                new() { Name = "small", BaseModel = small, Description = "OPT, hidden " + (tiny ? 16 : 32) + ", 2 layers" },
                new() { Name = "large", BaseModel = large, Description = "OPT, hidden " + (tiny ? 48 : 96) + ", " + (tiny ? 2 : 3) + " layers" },
            ],
            CrossFamilyTeacher = new() { Name = "llama", BaseModel = llama, Description = "Llama, its own byte-level BPE vocabulary" },
            Iterated = new() { Rounds = rounds, PromptsPerRound = perRound, Prompts = freshPrompts },
        };
        string path = Path.Combine(dir, "experiments.json");
        AtomicFile.WriteAllText(path, experiments.ToJson());
        return path;
    }
}
