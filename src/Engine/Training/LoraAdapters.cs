using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Models;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// LoRA on a model's <see cref="Projection"/> layers, in PEFT's layout: adapter_config.json (peft_type "LORA") and
/// adapter_model.safetensors with keys base_model.model.&lt;module path&gt;.lora_A.weight / .lora_B.weight.
/// </summary>
public static class LoraAdapters
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    private const string PeftPrefix = "base_model.model.";

    /// <summary>The projections whose last name segment is one of <paramref name="targetModules"/>, by module path.</summary>
    public static IReadOnlyList<(string Name, Projection Projection)> TargetProjections(nn.Module model, IReadOnlyCollection<string> targetModules)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(targetModules);
        var targets = new HashSet<string>(targetModules, StringComparer.Ordinal);
        return model.named_modules()
            .Where(m => m.module is Projection && targets.Contains(m.name[(m.name.LastIndexOf('.') + 1)..]))
            .Select(m => (m.name, (Projection)m.module))
            .ToList();
    }

    /// <summary>
    /// Attaches an adapter to every target projection and freezes every other parameter, so that only the adapters
    /// train (PEFT's get_peft_model). Returns the number of adapted projections. The adapters' initial values come from
    /// <paramref name="seed"/> (the run's seed), not from the global generator, so a job started twice trains the same.
    /// </summary>
    public static int Attach(nn.Module model, LoraConfig config, long seed)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.TargetModules.Count == 0) throw new ArgumentException("LoRA target_modules is empty", nameof(config));
        var projections = TargetProjections(model, config.TargetModules);
        if (projections.Count == 0)
        {
            var available = model.named_modules().Where(m => m.module is Projection)
                .Select(m => m.name[(m.name.LastIndexOf('.') + 1)..]).Distinct().OrderBy(n => n, StringComparer.Ordinal);
            throw new ArgumentException($"LoRA target_modules [{string.Join(", ", config.TargetModules)}] match no projection of the model " +
                $"(its projections: {string.Join(", ", available)})", nameof(config));
        }
        using var generator = new Generator((ulong)seed);
        foreach (var (_, projection) in projections)
            if (!projection.HasLora) projection.AttachLora(config.Rank, config.Alpha, config.Dropout, generator);
        foreach (var (name, parameter) in model.named_parameters())
            parameter.requires_grad = IsAdapterParameter(name);
        return projections.Count;
    }

    /// <summary>True for lora_A / lora_B weights.</summary>
    public static bool IsAdapterParameter(string name) =>
        name.EndsWith(".lora_A.weight", StringComparison.Ordinal) || name.EndsWith(".lora_B.weight", StringComparison.Ordinal);

    /// <summary>The adapter parameters of the model, by their module path names.</summary>
    public static IReadOnlyList<(string Name, Parameter Parameter)> AdapterParameters(nn.Module model) =>
        model.named_parameters().Where(p => IsAdapterParameter(p.name)).Select(p => (p.name, p.parameter)).ToList();

    /// <summary>True when any projection of the model carries an adapter.</summary>
    public static bool HasAdapters(nn.Module model) => model.named_modules().Any(m => m.module is Projection { HasLora: true });

    /// <summary>Writes the adapters in PEFT's layout to <paramref name="dir"/>.</summary>
    public static void Save(nn.Module model, LoraConfig config, string dir, string? baseModelNameOrPath)
    {
        ArgumentNullException.ThrowIfNull(config);
        // GPT-2's Conv1D layers store W as [in, out]: PEFT records that as fan_in_fan_out
        bool fanInFanOut = model.named_modules().Any(m => m.module is Projection { HasLora: true, FanInFanOut: true });
        var adapters = AdapterParameters(model);
        if (adapters.Count == 0) throw new InvalidOperationException("the model has no LoRA adapters to save");
        Directory.CreateDirectory(dir);
        var tensors = adapters.ToDictionary(a => PeftPrefix + a.Name, a => (Tensor)a.Parameter, StringComparer.Ordinal);
        SafeTensors.Save(tensors, Path.Combine(dir, WeightsFile), new Dictionary<string, string> { ["format"] = "pt" });
        var targets = new JsonArray(config.TargetModules.Select(t => (JsonNode?)JsonValue.Create(t)).ToArray());
        var json = new JsonObject
        {
            ["alpha_pattern"] = new JsonObject(),
            ["base_model_name_or_path"] = baseModelNameOrPath,
            ["bias"] = "none",
            ["fan_in_fan_out"] = fanInFanOut,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["layers_pattern"] = null,
            ["layers_to_transform"] = null,
            ["lora_alpha"] = config.Alpha,
            ["lora_dropout"] = config.Dropout,
            ["modules_to_save"] = null,
            ["peft_type"] = "LORA",
            ["r"] = config.Rank,
            ["rank_pattern"] = new JsonObject(),
            ["revision"] = null,
            ["target_modules"] = targets,
            ["task_type"] = "CAUSAL_LM",
            ["use_dora"] = false,
            ["use_rslora"] = false,
        };
        AtomicFile.WriteAllText(Path.Combine(dir, ConfigFile), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Reads adapter_config.json of a PEFT adapter folder.</summary>
    public static LoraConfig ReadConfig(string dir)
    {
        var path = Path.Combine(dir, ConfigFile);
        if (!File.Exists(path)) throw new CheckpointException(path, "adapter config not found");
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new CheckpointException(path, $"not valid JSON ({e.Message})"); }
        if (root is not JsonObject o) throw new CheckpointException(path, "expected a JSON object");
        var peftType = o["peft_type"]?.GetValue<string>();
        if (!string.Equals(peftType, "LORA", StringComparison.OrdinalIgnoreCase))
            throw new CheckpointException(path, $"peft_type is '{peftType}', only LORA is supported");
        if (o["use_dora"]?.GetValue<bool>() == true) throw new CheckpointException(path, "use_dora adapters are not supported");
        if (o["use_rslora"]?.GetValue<bool>() == true) throw new CheckpointException(path, "use_rslora adapters are not supported");
        int rank = o["r"]?.GetValue<int>() ?? throw new CheckpointException(path, "field 'r' is missing");
        double alpha = o["lora_alpha"]?.GetValue<double>() ?? throw new CheckpointException(path, "field 'lora_alpha' is missing");
        double dropout = o["lora_dropout"]?.GetValue<double>() ?? 0.0;
        var targetsNode = o["target_modules"];
        IReadOnlyList<string> targets = targetsNode switch
        {
            JsonArray a => a.Select(t => t!.GetValue<string>()).ToList(),
            JsonValue v => new[] { v.GetValue<string>() },
            _ => throw new CheckpointException(path, "field 'target_modules' is missing"),
        };
        return new LoraConfig { Rank = rank, Alpha = alpha, Dropout = dropout, TargetModules = targets };
    }

    /// <summary>
    /// Loads a PEFT adapter folder into <paramref name="model"/>: attaches adapters of its config (where not attached) and
    /// copies its lora_A / lora_B weights. Every adapter of the model must be in the file and vice versa.
    /// </summary>
    public static LoraConfig Load(nn.Module model, string dir)
    {
        var config = ReadConfig(dir);
        var weightsPath = Path.Combine(dir, WeightsFile);
        var loaded = SafeTensors.Load(weightsPath);
        try
        {
            Attach(model, config, seed: 0); // the loaded weights replace the initial ones
            var adapters = AdapterParameters(model);
            var expected = new HashSet<string>(adapters.Select(a => PeftPrefix + a.Name), StringComparer.Ordinal);
            // PEFT may keep the adapter name in keys ("lora_A.default.weight") in memory, never in saved files
            var unexpected = loaded.Keys.Where(k => !expected.Contains(k)).ToList();
            if (unexpected.Count > 0)
                throw new CheckpointException(weightsPath, $"tensor '{unexpected[0]}' matches no adapter of the model ({unexpected.Count} such)");
            using var noGrad = no_grad();
            foreach (var (name, parameter) in adapters)
            {
                if (!loaded.TryGetValue(PeftPrefix + name, out var value))
                    throw new CheckpointException(weightsPath, $"tensor '{PeftPrefix + name}' is missing");
                if (!value.shape.SequenceEqual(parameter.shape))
                    throw new CheckpointException(weightsPath, $"tensor '{PeftPrefix + name}' has shape [{string.Join(", ", value.shape)}], the model expects [{string.Join(", ", parameter.shape)}]");
                parameter.copy_(value);
            }
            return config;
        }
        finally
        {
            foreach (var t in loaded.Values) t.Dispose();
        }
    }

    /// <summary>Folds every adapter into its projection's weight (W += alpha/r B A) and removes the adapters; all parameters become trainable again.</summary>
    public static int Merge(nn.Module model)
    {
        int merged = 0;
        foreach (var (_, module) in model.named_modules().ToList())
            if (module is Projection { HasLora: true } projection)
            {
                projection.MergeLora();
                merged++;
            }
        foreach (var (_, parameter) in model.named_parameters()) parameter.requires_grad = true;
        return merged;
    }
}
