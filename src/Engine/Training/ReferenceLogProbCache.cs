using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Models;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// Where a DPO reference model comes from, and its identity for the reference log-prob cache. The model is only
/// loaded when the cache misses, and disposed right after (it is not kept while the policy trains).
/// </summary>
public sealed class ReferenceModel
{
    private readonly Func<CausalLM> _load;

    private ReferenceModel(string identity, string description, Func<CausalLM> load)
    {
        Identity = identity;
        Description = description;
        _load = load;
    }

    /// <summary>SHA-256 of the reference weights (or the identity a caller gave).</summary>
    public string Identity { get; }
    public string Description { get; }

    /// <summary>A Hugging Face checkpoint folder; the identity is the SHA-256 of its weight file(s) and config.json.</summary>
    public static ReferenceModel FromDirectory(string dir, ModelLoadOptions? options = null)
    {
        if (!Directory.Exists(dir)) throw new CheckpointException(dir, "reference model folder not found");
        var files = Directory.GetFiles(dir, "*.safetensors").Select(Path.GetFileName).OfType<string>()
            .Where(f => f == PretrainedModel.WeightsFile || f.StartsWith("model-", StringComparison.Ordinal))
            .OrderBy(f => f, StringComparer.Ordinal).ToList();
        if (files.Count == 0) throw new CheckpointException(dir, $"no {PretrainedModel.WeightsFile} (or shards) in the reference model folder");
        using var hash = new Hashing.Builder();
        foreach (var file in files.Append(PretrainedModel.ConfigFile))
        {
            var path = Path.Combine(dir, file);
            hash.Add(file).Add(File.Exists(path) ? Hashing.FileSha256(path) : "-");
        }
        return new ReferenceModel(hash.Hex(), dir, () => PretrainedModel.Load(dir, options));
    }

    /// <summary>A model made in code; <paramref name="identity"/> must change whenever its weights do.</summary>
    public static ReferenceModel FromFactory(string identity, Func<CausalLM> load, string description = "in-memory reference")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(identity);
        ArgumentNullException.ThrowIfNull(load);
        return new ReferenceModel(identity, description, load);
    }

    public CausalLM Load() => _load();
}

/// <summary>
/// What the DPO losses need of the reference model, per pair index, each [N, 2] float32 (chosen, rejected): the summed
/// response log-probs, the response token counts (ipo and sigmoid_norm average per token) and the log-probs of the
/// tokens past the pair's shared length (LD-DPO weights those by ld_alpha).
/// </summary>
public sealed record ReferenceLogps(Tensor Logps, Tensor TokenCounts, Tensor TailLogps) : IDisposable
{
    public const string LogpsName = "logps", TokenCountsName = "token_counts", TailLogpsName = "tail_logps";

    public long Count => Logps.shape[0];

    /// <summary>[N, 2] reference log-probs as the loss sees them: shared + ld_alpha * tail (the plain sums when null).</summary>
    public Tensor Weighted(double? ldAlpha) => ldAlpha is double a ? Logps - TailLogps.Mul(1 - a) : Logps;

    public void Dispose()
    {
        Logps.Dispose();
        TokenCounts.Dispose();
        TailLogps.Dispose();
    }
}

/// <summary>
/// Reference log-probs of a preference dataset, computed once per (reference model, dataset, tokenisation) and kept on
/// disk, as TRL's precompute_ref_log_probs does: &lt;dir&gt;/ref-logps-&lt;key&gt;.safetensors holding the three [N, 2]
/// tensors of <see cref="ReferenceLogps"/> per pair index, with the full key in the metadata.
/// </summary>
public static class ReferenceLogProbCache
{
    private static readonly string[] Names = [ReferenceLogps.LogpsName, ReferenceLogps.TokenCountsName, ReferenceLogps.TailLogpsName];

    public static string FilePath(string cacheDir, string key) => Path.Combine(cacheDir, $"ref-logps-{key[..Math.Min(32, key.Length)]}.safetensors");

    /// <summary>The cache key: SHA-256 over the reference identity, the dataset hash and the tokenisation settings.</summary>
    public static string Key(string referenceIdentity, string datasetHash, string settings)
    {
        using var hash = new Hashing.Builder();
        return hash.Add("ref-logps-v2").Add(referenceIdentity).Add(datasetHash).Add(settings).Hex();
    }

    /// <summary>The cached values, or null when absent, damaged or made for another key/size.</summary>
    public static ReferenceLogps? TryLoad(string cacheDir, string key, int count)
    {
        var path = FilePath(cacheDir, key);
        if (!File.Exists(path)) return null;
        Dictionary<string, Tensor> tensors;
        IReadOnlyDictionary<string, string> metadata;
        try
        {
            tensors = SafeTensors.Load(path, out metadata);
        }
        catch (CheckpointException)
        {
            return null; // a damaged cache file is recomputed, not trusted
        }
        bool valid = metadata.TryGetValue("key", out var stored) && stored == key
            && Names.All(n => tensors.TryGetValue(n, out var t) && t.dim() == 2 && t.shape[0] == count && t.shape[1] == 2);
        foreach (var (name, t) in tensors) if (!valid || !Names.Contains(name)) t.Dispose();
        return valid ? new ReferenceLogps(tensors[Names[0]], tensors[Names[1]], tensors[Names[2]]) : null;
    }

    public static void Save(string cacheDir, string key, ReferenceLogps values)
    {
        Directory.CreateDirectory(cacheDir);
        SafeTensors.Save(new Dictionary<string, Tensor>
            {
                [Names[0]] = values.Logps.to(ScalarType.Float32).cpu(),
                [Names[1]] = values.TokenCounts.to(ScalarType.Float32).cpu(),
                [Names[2]] = values.TailLogps.to(ScalarType.Float32).cpu(),
            }, FilePath(cacheDir, key),
            new Dictionary<string, string> { ["key"] = key, ["count"] = values.Count.ToString(System.Globalization.CultureInfo.InvariantCulture) });
    }

    /// <summary>The cached values, or <paramref name="compute"/>'s (then stored). <paramref name="fromCache"/> tells which.</summary>
    public static ReferenceLogps GetOrCompute(string cacheDir, string key, int count, Func<ReferenceLogps> compute, out bool fromCache)
    {
        var cached = TryLoad(cacheDir, key, count);
        if (cached is not null)
        {
            fromCache = true;
            return cached;
        }
        var computed = compute();
        Save(cacheDir, key, computed);
        fromCache = false;
        return computed;
    }
}
