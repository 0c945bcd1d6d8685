using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using WeakTeacher.CudaKernels;
using TorchSharp.Modules;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Tokenization;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// A Bradley-Terry reward model as transformers' *ForSequenceClassification with num_labels 1: a causal LM backbone
/// (its output head unused) and a scalar head <c>score</c> [1, H_out] without bias, read at the last real token of
/// each sequence as transformers pools it: the rightmost token that is not the pad token (so with GPT-2's pad == eos the
/// token before the response's EOS), among the positions the attention mask keeps; without a pad token id, the last
/// position the mask keeps. Either padding side works.
/// Saved as a Hugging Face folder: backbone weights plus score.weight in model.safetensors, config.json with
/// architectures [&lt;Family&gt;ForSequenceClassification] and num_labels 1.
/// </summary>
public sealed class RewardModel : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly CausalLM backbone;
    private readonly Linear score;

    public RewardModel(CausalLM backbone, long seed = 0) : base("RewardModel")
    {
        this.backbone = backbone ?? throw new ArgumentNullException(nameof(backbone));
        long hidden = backbone.OutputWeight.shape[1];
        score = nn.Linear(hidden, 1, hasBias: false, device: backbone.Device, dtype: backbone.DType);
        using (no_grad())
        {
            // transformers initialises the head as every linear layer: normal(0, initializer_range)
            var generator = new Generator((ulong)seed);
            using var init = randn(new long[] { 1, hidden }, generator: generator).MulInPlace(backbone.Config.InitializerRange).AddInPlace(0.0);
            score.weight!.copy_(init);
        }
        PadTokenId = backbone.Config.PadTokenId;
        RegisterComponents();
    }

    /// <summary>The pad token id the reward is pooled by (config.json's pad_token_id; the trainer sets the tokenizer's when absent).</summary>
    public int? PadTokenId { get; set; }

    public CausalLM Backbone => backbone;
    public Parameter ScoreWeight => score.weight!;
    public ModelConfig Config => backbone.Config;
    public Device Device => backbone.Device;

    /// <summary>Rewards [B] (float32) at the last real token of each row of <paramref name="inputIds"/> [B, T].</summary>
    public override Tensor forward(Tensor inputIds, Tensor attentionMask)
    {
        using var scope = NewDisposeScope();
        var device = Device;
        var ids = inputIds.to(ScalarType.Int64).to(device);
        var mask = attentionMask.to(device);
        var hidden = backbone.ForwardHidden(ids, mask);                                   // [B, T, H]
        long t = ids.shape[1];
        // transformers' *ForSequenceClassification: argmax of position * (input_ids != pad_token_id), here also * mask
        // (rows with no such token give 0)
        var keep = mask.Ne(0);
        if (PadTokenId is int pad) keep = keep.logical_and(ids.Ne(pad));
        var positions = ScalarOps.Arange(0, t, ScalarType.Int64, device).unsqueeze(0) * keep.to(ScalarType.Int64);
        var last = positions.argmax(1);                                                     // [B]
        var picked = hidden.gather(1, last.view(-1, 1, 1).expand(-1, 1, hidden.shape[2])).squeeze(1); // [B, H]
        var rewards = score.forward(picked).squeeze(-1).to(ScalarType.Float32);
        return rewards.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Rewards [sequences] (float32) of a collated batch, in sequence order. A padded batch goes through
    /// <see cref="forward"/>; a packed one is pooled the same way within each sequence's span (the rightmost token that is
    /// not the pad token, else the span's first token, as argmax gives position 0 on a right-padded row), with the
    /// positions found on the host from the batch's layout.
    /// </summary>
    public Tensor Rewards(SequenceBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (!batch.IsPacked) return forward(batch.InputIds, batch.AttentionMask);
        using var scope = NewDisposeScope();
        var device = Device;
        long width = batch.SequenceLength;
        var ids = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(batch.HostInputIds.bytes);
        var pooled = new long[batch.SequenceCount];
        for (int s = 0; s < pooled.Length; s++)
        {
            var span = batch.Sequences[s];
            int at = span.Start;
            for (int t = span.Start + span.Length - 1; t >= span.Start; t--)
            {
                if (PadTokenId is int pad && ids[(int)(span.Row * width + t)] == pad) continue;
                at = t;
                break;
            }
            pooled[s] = span.Row * width + at;
        }
        var hidden = backbone.ForwardHidden(batch.InputIds.to(ScalarType.Int64).to(device), batch.AttentionMask.to(device));
        var picked = hidden.reshape(-1, hidden.shape[2]).index_select(0, tensor(pooled).to(device));   // [S, H]
        return score.forward(picked).squeeze(-1).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>The architectures name of this family's sequence classifier in transformers.</summary>
    public static string ArchitectureName(ModelConfig config) => config.Family switch
    {
        ModelFamily.Opt => "OPTForSequenceClassification",
        ModelFamily.Gpt2 => "GPT2ForSequenceClassification",
        _ => config.ModelType == "mistral" ? "MistralForSequenceClassification" : "LlamaForSequenceClassification",
    };

    /// <summary>Backbone tensor names not saved with a sequence classifier (its LM head).</summary>
    private static bool IsLmHead(string name) => name == "lm_head.weight";

    /// <summary>Writes the model as a Hugging Face sequence-classification folder (LoRA adapters must be merged first).</summary>
    public void Save(string dir, ITokenizer? tokenizer = null)
    {
        if (LoraAdapters.HasAdapters(backbone))
            throw new InvalidOperationException("the reward model has LoRA adapters; merge them (LoraAdapters.Merge) before saving");
        Directory.CreateDirectory(dir);
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, p) in backbone.named_parameters())
            if (!IsLmHead(name)) tensors[name] = p;
        tensors["score.weight"] = score.weight!;
        var weightsPath = Path.Combine(dir, PretrainedModel.WeightsFile);
        SafeTensors.Save(tensors, weightsPath, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var stale in new[] { PretrainedModel.IndexFile })
            if (File.Exists(Path.Combine(dir, stale))) File.Delete(Path.Combine(dir, stale));

        var json = Config.ToJson();
        json["architectures"] = new JsonArray(ArchitectureName(Config));
        json["num_labels"] = 1;
        json["id2label"] = new JsonObject { ["0"] = "LABEL_0" };
        json["label2id"] = new JsonObject { ["LABEL_0"] = 0 };
        json["torch_dtype"] = PretrainedModel.DTypeName(backbone.DType);
        if (PadTokenId is int padId) json["pad_token_id"] = padId;
        else if (json["pad_token_id"] is null && tokenizer is not null) json["pad_token_id"] = tokenizer.PadTokenId;
        AtomicFile.WriteAllText(Path.Combine(dir, PretrainedModel.ConfigFile), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        if (tokenizer is HfTokenizer hf) hf.Save(dir);
    }

    /// <summary>
    /// Loads a sequence-classification folder written by <see cref="Save"/> or by transformers (num_labels 1). Every
    /// backbone tensor but the LM head and score.weight must be present.
    /// </summary>
    public static RewardModel Load(string dir, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        var configPath = Path.Combine(dir, PretrainedModel.ConfigFile);
        if (!File.Exists(configPath)) throw new CheckpointException(dir, "no config.json in the reward model folder");
        var weightsPath = Path.Combine(dir, PretrainedModel.WeightsFile);
        if (!File.Exists(weightsPath)) throw new CheckpointException(dir, $"no {PretrainedModel.WeightsFile} in the reward model folder");
        JsonNode? root = JsonNode.Parse(File.ReadAllText(configPath));
        if (root?["num_labels"] is JsonNode labels && labels.GetValue<int>() != 1)
            throw new CheckpointException(configPath, $"num_labels is {labels.GetValue<int>()}; a reward model has 1");
        if (root?["id2label"] is JsonObject id2label && id2label.Count != 1)
            throw new CheckpointException(configPath, $"id2label has {id2label.Count} labels; a reward model has 1");

        HashSet<string> stored;
        using (var file = SafeTensorsFile.Open(weightsPath))
        {
            if (!file.Tensors.ContainsKey("score.weight"))
                throw new CheckpointException(weightsPath, "tensor 'score.weight' (the reward head) is missing");
            stored = new HashSet<string>(file.Tensors.Keys, StringComparer.Ordinal);
        }
        var backbone = PretrainedModel.Load(dir, options with { Strict = false });
        RewardModel? model = null;
        try
        {
            // Load(Strict = false) keeps missing tensors at their init: check the backbone is complete (GPT-2 names
            // may come with or without "transformer.")
            static string Alternative(string n) => n.StartsWith("transformer.", StringComparison.Ordinal) ? n["transformer.".Length..] : "transformer." + n;
            var missing = backbone.named_parameters().Select(p => p.name)
                .Where(n => !IsLmHead(n) && !stored.Contains(n) && !stored.Contains(Alternative(n)))
                .ToList();
            if (missing.Count > 0)
                throw new CheckpointException(weightsPath, $"backbone tensor '{missing[0]}' is missing ({missing.Count} missing)");
            model = new RewardModel(backbone);
            using (var file = SafeTensorsFile.Open(weightsPath))
            {
                var info = file.Tensors["score.weight"];
                if (!info.Shape.SequenceEqual(model.ScoreWeight.shape))
                    throw new CheckpointException(weightsPath, $"score.weight has shape [{string.Join(", ", info.Shape)}], expected [{string.Join(", ", model.ScoreWeight.shape)}]");
                using var scoreTensor = file.Read("score.weight");
                using (no_grad()) model.ScoreWeight.copy_(scoreTensor);
            }
            model.eval();
            return model;
        }
        catch
        {
            if (model is not null) model.Dispose(); else backbone.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Rewards of (prompt, response) texts, in input order, in batches of similar length (<see cref="LengthBatches"/>):
    /// the prompt is tokenised as DPO does (BOS, template already applied by the caller), the response followed by EOS,
    /// truncated to <paramref name="options"/>.
    /// </summary>
    public float[] Score(IReadOnlyList<(string Prompt, string Response)> items, ITokenizer tokenizer, int batchSize = 16,
        TokenizationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(items);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        var tokenizerRules = new PreferenceTokenizer(tokenizer, options);
        var result = new float[items.Count];
        bool wasTraining = training;
        eval();
        try
        {
            using var noGrad = no_grad();
            var sequences = items.Select(i => tokenizerRules.TokenizeSequence(i.Prompt, i.Response)).ToArray();
            foreach (var members in LengthBatches.Plan(sequences.Select(s => s.Length).ToArray(), batchSize))
            {
                using var scope = NewDisposeScope();
                using var batch = Collator.CollateSequences(members.Select(i => sequences[i]).ToArray(), tokenizer.PadTokenId, Device);
                var rewards = forward(batch.InputIds, batch.AttentionMask).cpu().data<float>().ToArray();
                for (int j = 0; j < members.Length; j++) result[members[j]] = rewards[j];
            }
        }
        finally
        {
            if (wasTraining) train();
        }
        return result;
    }
}
