using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Tokenization;

namespace WeakTeacher.Engine.Training;

/// <summary>Shared pieces of the trainers: tokenisation options, dataset hashing, LoRA set-up and the final save.</summary>
internal static class TrainerOutputs
{
    public const string AdapterFolder = "adapter";

    public static TokenizationOptions Tokenization(TrainingConfig config) =>
        new() { MaxLength = config.MaxLength, MaxPromptLength = config.MaxPromptLength };

    public static string SettingsText(TrainingConfig config) =>
        $"max_length={config.MaxLength};max_prompt_length={config.MaxPromptLength};truncation=keep_end";

    /// <summary>SHA-256 over the dataset's texts and its token ids (so template, tokenizer and truncation all count).</summary>
    public static string DatasetHash(IEnumerable<(string[] Texts, int[][] Ids)> rows)
    {
        using var hash = new Hashing.Builder();
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
