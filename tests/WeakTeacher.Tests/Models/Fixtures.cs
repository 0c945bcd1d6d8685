using WeakTeacher.Engine.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Models;

/// <summary>The Hugging Face parity fixtures (tests/fixtures/hf-parity, made by make_hf_parity.py with transformers 5.17).</summary>
internal static class Fixtures
{
    public static readonly string[] Names = { "opt", "opt-350m-style", "gpt2", "llama" };

    public static string Dir(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", "hf-parity", name);

    /// <summary>input_ids, attention_mask, response_mask, logits, seq_logps, gen_* of a fixture.</summary>
    public static Dictionary<string, Tensor> Expected(string name) => SafeTensors.Load(Path.Combine(Dir(name), "expected.safetensors"));

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
