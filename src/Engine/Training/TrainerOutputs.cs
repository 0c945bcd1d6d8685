using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Tokenization;

namespace WeakTeacher.Engine.Training;

/// <summary>Shared pieces of the trainers: tokenisation options, dataset hashing, LoRA set-up and the final save.</summary>
internal static class TrainerOutputs
{
    public const string AdapterFolder = "adapter";

    public static string SettingsText(TrainingConfig config) => SettingsText(config.Tokenization);

    public static string SettingsText(TokenizationOptions o) =>
        $"max_length={o.MaxLength};max_prompt_length={o.MaxPromptLength};truncation={o.TruncationMode}";

    /// <summary>
    /// The one tokenisation of preference pairs for training (DPO and reward models): <see cref="PreferenceTokenizer"/>
    /// under the config's limits, and the dataset hash over the texts, the token ids and the limits.
    /// </summary>
    public static TokenizedPair[] TokenizePairs(ITokenizer tokenizer, TrainingConfig config, IReadOnlyList<PreferenceExample> examples,
        out string dataHash)
    {
        var rules = new PreferenceTokenizer(tokenizer, config.Tokenization);
        var pairs = examples.Select(rules.Tokenize).ToArray();
        dataHash = DatasetHash(rules.Options, examples.Select((e, i) => (new[] { e.Prompt, e.Chosen, e.Rejected },
            new[] { pairs[i].PromptIds, pairs[i].ChosenIds, pairs[i].RejectedIds })));
        return pairs;
    }

    /// <summary>The same for (prompt, response) sequences (SFT).</summary>
    public static TokenizedSequence[] TokenizeSequences(ITokenizer tokenizer, TrainingConfig config, IReadOnlyList<SftExample> examples,
        out string dataHash)
    {
        var rules = new PreferenceTokenizer(tokenizer, config.Tokenization);
        var sequences = examples.Select(rules.Tokenize).ToArray();
        dataHash = DatasetHash(rules.Options, examples.Select((e, i) => (new[] { e.Prompt, e.Response },
            new[] { sequences[i].PromptIds, sequences[i].ResponseIds })));
        return sequences;
    }

    /// <summary>SHA-256 over the dataset's texts, its token ids and the limits (so template, tokenizer and truncation all count).</summary>
    private static string DatasetHash(TokenizationOptions options, IEnumerable<(string[] Texts, int[][] Ids)> rows)
    {
        using var hash = new Hashing.Builder();
        hash.Add(SettingsText(options));
        long n = 0;
        foreach (var (texts, ids) in rows)
        {
            foreach (var t in texts) hash.Add(t);
            foreach (var i in ids) hash.Add(i);
            n++;
        }
        return hash.Add(n).Hex();
    }

    /// <summary>Attaches LoRA when configured and not attached yet.</summary>
    public static void PrepareLora(CausalLM model, TrainingConfig config)
    {
        if (config.Lora is { } lora && !LoraAdapters.HasAdapters(model)) LoraAdapters.Attach(model, lora, config.Seed);
    }

    /// <summary>
    /// The final save of a causal LM: with LoRA, the adapter in PEFT layout to outputDir/adapter and, when
    /// SaveMergedModel, the merged model to outputDir (the in-memory model is then merged); without LoRA the model to outputDir.
    /// </summary>
    public static (string? ModelDir, string? AdapterDir) SaveFinal(CausalLM model, ITokenizer tokenizer, TrainingConfig config, string outputDir,
        string? baseModelNameOrPath)
    {
        string? adapterDir = null, modelDir = null;
        if (LoraAdapters.HasAdapters(model))
        {
            adapterDir = Path.Combine(outputDir, AdapterFolder);
            LoraAdapters.Save(model, config.Lora ?? new LoraConfig(), adapterDir, baseModelNameOrPath);
            if (tokenizer is HfTokenizer hfAdapter) hfAdapter.Save(adapterDir);
            if (!config.SaveMergedModel) return (null, adapterDir);
            LoraAdapters.Merge(model);
        }
        PretrainedModel.Save(model, outputDir);
        if (tokenizer is HfTokenizer hf) hf.Save(outputDir);
        modelDir = outputDir;
        return (modelDir, adapterDir);
    }
}
