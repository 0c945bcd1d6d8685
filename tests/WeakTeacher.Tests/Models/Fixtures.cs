using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Models;

/// <summary>The Hugging Face parity fixtures: the shared ones (tests/fixtures/hf-parity, made by make_hf_parity.py with
/// transformers 5.17) and the project's own (tests/fixtures/hf-own, made by make_own_fixtures.py on the GPU machine).</summary>
internal static class Fixtures
{
    /// <summary>The shared fixtures, each a single model.safetensors in float32.</summary>
    public static readonly string[] Names = { "opt", "opt-350m-style", "gpt2", "llama" };

    /// <summary>Every fixture the parity tests compare against transformers: the shared ones and each folder of
    /// fixtures/hf-own that holds an expected.safetensors (sharded and bf16 checkpoints among them).</summary>
    public static string[] ParityNames => Names.Concat(OwnNames()).ToArray();

    private static string OwnRoot => Path.Combine(AppContext.BaseDirectory, "fixtures", "hf-own");

    private static IEnumerable<string> OwnNames() =>
        Directory.Exists(OwnRoot)
            ? Directory.GetDirectories(OwnRoot).Where(d => File.Exists(Path.Combine(d, "expected.safetensors")))
                .Select(d => Path.GetFileName(d)).Order(StringComparer.Ordinal)
            : [];

    /// <summary>The device WT_DEVICE names (cpu by default), so the parity tests check CUDA on a GPU machine.</summary>
    public static readonly Device Device = TorchDevice.Initialize(new RuntimeOptions());

    public static string Dir(string name) => Names.Contains(name)
        ? Path.Combine(AppContext.BaseDirectory, "fixtures", "hf-parity", name)
        : Path.Combine(OwnRoot, name);

    /// <summary>A fixture's checkpoint loaded onto <see cref="Device"/>, cast as its parity.json says ("load_dtype":
    /// a bf16 checkpoint whose expected values transformers computed in float32).</summary>
    public static CausalLM Load(string name)
    {
        ScalarType? dtype = null;
        var parity = Path.Combine(Dir(name), "parity.json");
        if (File.Exists(parity))
        {
            var loadDtype = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(parity))?["load_dtype"]?.GetValue<string>();
            dtype = loadDtype switch
            {
                null => null,
                "float32" => ScalarType.Float32,
                _ => throw new InvalidDataException($"{parity}: load_dtype '{loadDtype}' is not supported (float32)"),
            };
        }
        return PretrainedModel.Load(Dir(name), new ModelLoadOptions { Device = Device, DType = dtype });
    }

    /// <summary>input_ids, attention_mask, response_mask, logits, seq_logps, gen_* of a fixture.</summary>
    public static Dictionary<string, Tensor> Expected(string name) => SafeTensors.Load(Path.Combine(Dir(name), "expected.safetensors"));

    /// <summary>The fixture's input_ids, attention_mask and response_mask on <see cref="Device"/>.</summary>
    public static (Tensor InputIds, Tensor AttentionMask, Tensor ResponseMask) Inputs(Dictionary<string, Tensor> expected) =>
        (expected["input_ids"].to(Device), expected["attention_mask"].to(Device), expected["response_mask"].to(Device));

    /// <summary>A fresh scratch folder under the temp directory, deleted when disposed.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "wt-models-test-" + Guid.NewGuid().ToString("N"));
        public TempDir() => Directory.CreateDirectory(Path);
        public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }

        /// <summary>Copies a fixture's checkpoint files (not expected.safetensors) into this folder; returns the folder.</summary>
        public string CopyFixture(string name)
        {
            foreach (var file in new[] { "config.json", "model.safetensors", "generation_config.json" })
                File.Copy(System.IO.Path.Combine(Dir(name), file), System.IO.Path.Combine(Path, file), overwrite: true);
            foreach (var f in Directory.EnumerateFiles(Path)) File.SetAttributes(f, FileAttributes.Normal);
            return Path;
        }
    }
}

internal static class TensorAssertions
{
    /// <summary>Same shape, dtype and values (NaN-free tensors).</summary>
    public static bool Same(this Tensor a, Tensor b)
        => a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && (a.numel() == 0 || a.eq(b).all().item<bool>());
}
