using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using WeakTeacher.Engine.Models;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Checkpoints;

/// <summary>How <see cref="PretrainedModel.Load"/> places and checks the weights.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>Where the parameters live (default CPU).</summary>
    public Device? Device { get; init; }
    /// <summary>Cast floating-point weights to this type (default: the checkpoint's own type).</summary>
    public ScalarType? DType { get; init; }
    /// <summary>When true (default), a tensor the model expects but the files lack, or one the files hold but the model
    /// does not know, is an error; when false, missing ones keep their initial values and unknown ones are skipped.
    /// A tensor of the wrong shape is always an error.</summary>
    public bool Strict { get; init; } = true;
}

/// <summary>Checkpoints in the Hugging Face layout: config.json, model.safetensors or a sharded index, generation_config.json.</summary>
public static class PretrainedModel
{
    public const string ConfigFile = "config.json";
    public const string WeightsFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";
    public const string GenerationConfigFile = "generation_config.json";

    /// <summary>
    /// Loads a checkpoint folder as Hugging Face's from_pretrained does: the family from config.json, every expected
    /// tensor with its shape checked, tied heads as the family ties them (a stored lm_head.weight of a tied model is
    /// ignored), GPT-2 names with or without "transformer." and without its attn.bias buffers. Returns the model in
    /// eval mode. On any error nothing stays allocated.
    /// </summary>
    /// <exception cref="CheckpointException">a file missing, malformed, truncated, or not matching the model.</exception>
    public static CausalLM Load(string dir, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        if (!Directory.Exists(dir)) throw new CheckpointException(dir, "checkpoint folder not found");
        var config = ModelConfig.Load(Path.Combine(dir, ConfigFile));
        var generationPath = Path.Combine(dir, GenerationConfigFile);
        var generation = File.Exists(generationPath) ? GenerationDefaults.Load(generationPath, config) : GenerationDefaults.FromConfig(config);

        var files = OpenWeights(dir);
        CausalLM? model = null;
        try
        {
            var stored = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
            foreach (var file in files)
                foreach (var name in file.Tensors.Keys)
                    stored[name] = file;

            model = CausalLMFactory.Construct(config);
            var parameters = model.named_parameters().ToList();
            var plan = Match(config, parameters.Select(p => (p.name, p.parameter.shape)).ToList(), stored, options.Strict, dir);

            var dtype = options.DType ?? StoredFloatType(plan.Select(p => p.File.Tensors[p.StoredName])) ?? ScalarType.Float32;
            CausalLMFactory.MoveTo(model, options.Device, dtype);
            var byName = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            using (no_grad())
                foreach (var (name, storedName, file) in plan)
                    file.ReadInto(storedName, byName[name]);
            model.GenerationDefaults = generation;
            model.eval();
            return model;
        }
        catch
        {
            model?.Dispose();
            throw;
        }
        finally
        {
            foreach (var file in files) file.Dispose();
        }
    }

    private static List<SafeTensorsFile> OpenWeights(string dir)
    {
        var single = Path.Combine(dir, WeightsFile);
        var index = Path.Combine(dir, IndexFile);
        if (File.Exists(single)) return new List<SafeTensorsFile> { SafeTensorsFile.Open(single) };
        if (!File.Exists(index))
        {
            string hint = File.Exists(Path.Combine(dir, "pytorch_model.bin"))
                ? " (pytorch_model.bin is a pickle; convert it to safetensors)" : "";
            throw new CheckpointException(dir, $"no {WeightsFile} or {IndexFile} in the checkpoint folder{hint}");
        }
        var shardNames = ReadIndex(index).Values.Distinct().ToList();
        var files = new List<SafeTensorsFile>();
        try
        {
            foreach (var shard in shardNames)
            {
                if (shard.Contains('/') || shard.Contains('\\') || shard.Contains(".."))
                    throw new CheckpointException(index, $"weight_map names a file outside the folder: '{shard}'");
                var path = Path.Combine(dir, shard);
                if (!File.Exists(path)) throw new CheckpointException(index, $"weight_map names shard '{shard}', which does not exist");
                files.Add(SafeTensorsFile.Open(path));
            }
            return files;
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>weight_map (tensor name -> shard file name) of a model.safetensors.index.json.</summary>
    public static Dictionary<string, string> ReadIndex(string indexPath)
    {
        try
        {
            var root = JsonNode.Parse(File.ReadAllText(indexPath)) as JsonObject
                       ?? throw new CheckpointException(indexPath, "expected a JSON object");
            var map = root["weight_map"] as JsonObject ?? throw new CheckpointException(indexPath, "missing 'weight_map' object");
            return map.ToDictionary(kv => kv.Key, kv => kv.Value?.GetValue<string>()
                ?? throw new CheckpointException(indexPath, $"weight_map entry '{kv.Key}' is not a file name"), StringComparer.Ordinal);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new CheckpointException(indexPath, $"malformed index: {e.Message}", e);
        }
    }

    /// <summary>Stored names the families carry that are not parameters (buffers, tied duplicates).</summary>
    private static bool IsIgnorable(ModelConfig config, string storedName)
        => storedName.EndsWith(".attn.bias", StringComparison.Ordinal) && config.Family == ModelFamily.Gpt2
           || storedName.EndsWith(".attn.masked_bias", StringComparison.Ordinal)
           || storedName.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)
           || storedName == "lm_head.weight" && (config.TieWordEmbeddings || config.Family != ModelFamily.Llama);

    private static string BasePrefix(ModelConfig config) => config.Family == ModelFamily.Gpt2 ? "transformer." : "model.";

    private static List<(string Name, string StoredName, SafeTensorsFile File)> Match(ModelConfig config,
        List<(string Name, long[] Shape)> expected, Dictionary<string, SafeTensorsFile> stored, bool strict, string dir)
    {
        string prefix = BasePrefix(config);
        var plan = new List<(string, string, SafeTensorsFile)>();
        var missing = new List<string>();
        var wrongShape = new List<string>();
        var used = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, shape) in expected)
        {
            // Hugging Face also accepts checkpoints of the base model, whose names lack the "model."/"transformer." prefix
            string? storedName = stored.ContainsKey(name) ? name
                : name.StartsWith(prefix, StringComparison.Ordinal) && stored.ContainsKey(name[prefix.Length..]) ? name[prefix.Length..]
                : null;
            if (storedName is null) { missing.Add(name); continue; }
            used.Add(storedName);
            var file = stored[storedName];
            var info = file.Tensors[storedName];
            if (!info.Shape.SequenceEqual(shape))
            {
                wrongShape.Add($"{storedName} in {Path.GetFileName(file.Path)}: stored [{string.Join(", ", info.Shape)}], model expects [{string.Join(", ", shape)}]");
                continue;
            }
            if (info.ScalarType is not (ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float64))
            {
                wrongShape.Add($"{storedName} in {Path.GetFileName(file.Path)}: stored as {info.DType}, expected a floating-point type");
                continue;
            }
            plan.Add((name, storedName, file));
        }
        var unexpected = stored.Keys.Where(n => !used.Contains(n) && !IsIgnorable(config, n)).OrderBy(n => n, StringComparer.Ordinal).ToList();
        var problems = new List<string>();
        if (wrongShape.Count > 0) problems.Add($"wrong shape: {List(wrongShape)}");
        if (strict && missing.Count > 0) problems.Add($"missing tensors: {List(missing)}");
        if (strict && unexpected.Count > 0) problems.Add($"unexpected tensors: {List(unexpected)}");
        if (problems.Count > 0)
        {
            string where = stored.Values.Distinct().Count() == 1 ? stored.Values.First().Path : dir;
            throw new CheckpointException(where, $"does not match the {config.ModelType} model of config.json: {string.Join("; ", problems)}");
        }
        return plan;
    }

    private static string List(List<string> names)
        => names.Count <= 20 ? string.Join(", ", names) : string.Join(", ", names.Take(20)) + $" (and {names.Count - 20} more)";

    private static ScalarType? StoredFloatType(IEnumerable<SafeTensorInfo> infos)
        => infos.Select(i => (ScalarType?)i.ScalarType).FirstOrDefault();

    /// <summary>
    /// Writes a checkpoint folder that Hugging Face transformers loads unchanged: config.json, model.safetensors (or
    /// model-0000i-of-0000n.safetensors shards of at most <paramref name="maxShardBytes"/> plus model.safetensors.index.json),
    /// generation_config.json. Tied heads are not duplicated. Weights are written in <paramref name="dtype"/> when given.
    /// Files are written to a temporary folder first and moved into place, so a failed save leaves the previous
    /// checkpoint intact; other files in the folder (tokenizer) are kept, stale weight files removed.
    /// </summary>
    private const string SaveFolderPrefix = ".save-";

    public static void Save(CausalLM model, string dir, ScalarType? dtype = null, long maxShardBytes = 2L << 30)
    {
        if (maxShardBytes <= 0) throw new ArgumentOutOfRangeException(nameof(maxShardBytes), maxShardBytes, "must be positive");
        var parameters = model.named_parameters().ToList();
        var adapters = parameters.Where(p => p.name.Contains(".lora_A.") || p.name.Contains(".lora_B.")).Select(p => p.name).ToList();
        if (adapters.Count > 0)
            throw new InvalidOperationException(
                $"the model has LoRA adapters ({adapters[0]}, ...); merge them (Projection.MergeLora) or save them as an adapter, not as a Hugging Face model");
        var savedType = dtype ?? model.DType;

        Runtime.WriteFence.Check(dir);
        Directory.CreateDirectory(dir);
        // save folders of an earlier save that a kill interrupted: loaders ignore them, a copy of the folder would not
        foreach (var leftover in Directory.EnumerateDirectories(dir, SaveFolderPrefix + "*")) Directory.Delete(leftover, recursive: true);
        var temp = Path.Combine(dir, SaveFolderPrefix + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(temp);
        try
        {
            // shards in parameter order, each at most maxShardBytes (a single bigger tensor gets a shard of its own)
            var shards = new List<List<(string Name, Tensor Tensor)>> { new() };
            long shardBytes = 0, totalBytes = 0;
            foreach (var (name, p) in parameters)
            {
                long bytes = p.numel() * SafeTensors.ElementSize(is_floating_point(p) ? savedType : p.dtype);
                if (shardBytes > 0 && shardBytes + bytes > maxShardBytes) { shards.Add(new()); shardBytes = 0; }
                shards[^1].Add((name, p));
                shardBytes += bytes;
                totalBytes += bytes;
            }
            var metadata = new Dictionary<string, string> { ["format"] = "pt" };
            var written = new List<string>();
            if (shards.Count == 1)
            {
                SafeTensors.WriteFile(shards[0].Select(e => KeyValuePair.Create(e.Name, e.Tensor)), Path.Combine(temp, WeightsFile), metadata, savedType);
                written.Add(WeightsFile);
            }
            else
            {
                var weightMap = new JsonObject();
                for (int i = 0; i < shards.Count; i++)
                {
                    string shardName = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
                    SafeTensors.WriteFile(shards[i].Select(e => KeyValuePair.Create(e.Name, e.Tensor)), Path.Combine(temp, shardName), metadata, savedType);
                    foreach (var (name, _) in shards[i]) weightMap[name] = shardName;
                    written.Add(shardName);
                }
                var sortedMap = new JsonObject();
                foreach (var kv in weightMap.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sortedMap[kv.Key] = kv.Value!.DeepClone();
                var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = totalBytes }, ["weight_map"] = sortedMap };
                File.WriteAllText(Path.Combine(temp, IndexFile), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                written.Add(IndexFile);
            }

            var config = model.Config with { TorchDtype = DTypeName(savedType) };
            config.Save(Path.Combine(temp, ConfigFile));
            var generation = model.GenerationDefaults ?? GenerationDefaults.FromConfig(model.Config);
            File.WriteAllText(Path.Combine(temp, GenerationConfigFile),
                generation.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            written.Add(ConfigFile);
            written.Add(GenerationConfigFile);
            Runtime.Failpoints.Hit(Runtime.Failpoints.ModelSaveStaged);

            Runtime.WriteFence.Check(dir);
            foreach (var name in written) File.Move(Path.Combine(temp, name), Path.Combine(dir, name), overwrite: true);
            // weight files of an earlier save that this one did not replace would be read by loaders: remove them
            foreach (var stale in Directory.EnumerateFiles(dir).Select(Path.GetFileName).ToList())
                if (stale is not null && !written.Contains(stale) &&
                    (stale == WeightsFile || stale == IndexFile || stale.StartsWith("model-", StringComparison.Ordinal) && stale.EndsWith(".safetensors", StringComparison.Ordinal)))
                    File.Delete(Path.Combine(dir, stale));
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    /// <summary>config.json's name of a dtype.</summary>
    public static string DTypeName(ScalarType type) => type switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.Float16 => "float16",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float64 => "float64",
        _ => type.ToString().ToLowerInvariant(),
    };
}
