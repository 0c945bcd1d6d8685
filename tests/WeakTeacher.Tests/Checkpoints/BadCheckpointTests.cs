using System.Text;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Models;
using WeakTeacher.Tests.Models;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Checkpoints;

/// <summary>Broken checkpoints give one CheckpointException naming the file and what is wrong.</summary>
public class BadCheckpointTests
{
    private static CheckpointException LoadFails(string dir, string file, params string[] problem)
    {
        var e = Assert.Throws<CheckpointException>(() => PretrainedModel.Load(dir));
        Assert.Contains(file, e.Message);
        foreach (var p in problem) Assert.Contains(p, e.Message);
        return e;
    }

    [Fact]
    public void MissingFolder()
        => LoadFails("/nonexistent/checkpoint-dir", "/nonexistent/checkpoint-dir", "not found");

    [Fact]
    public void MissingConfig()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("opt");
        File.Delete(Path.Combine(temp.Path, "config.json"));
        LoadFails(temp.Path, Path.Combine(temp.Path, "config.json"), "not found");
    }

    [Fact]
    public void MalformedConfig()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("opt");
        File.WriteAllText(Path.Combine(temp.Path, "config.json"), "{\"model_type\": \"opt\", \"hidden_size\": ");
        LoadFails(temp.Path, "config.json", "malformed JSON");
    }

    [Fact]
    public void UnknownModelType()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("opt");
        EditConfig(temp.Path, "\"model_type\": \"opt\"", "\"model_type\": \"qwen2\"");
        LoadFails(temp.Path, "config.json", "unknown model_type 'qwen2'");
    }

    [Fact]
    public void MissingRequiredConfigField()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("llama");
        EditConfig(temp.Path, "\"intermediate_size\": 160,", "");
        LoadFails(temp.Path, "config.json", "missing required field 'intermediate_size'");
    }

    [Fact]
    public void WrongFieldType()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("llama");
        EditConfig(temp.Path, "\"hidden_size\": 64", "\"hidden_size\": \"64\"");
        LoadFails(temp.Path, "config.json", "'hidden_size' must be an integer");
    }

    [Fact]
    public void MissingWeights()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("opt");
        File.Delete(Path.Combine(temp.Path, "model.safetensors"));
        LoadFails(temp.Path, temp.Path, "no model.safetensors");
    }

    [Fact]
    public void MissingTensor()
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("llama");
        var tensors = SafeTensors.Load(Path.Combine(Fixtures.Dir("llama"), "model.safetensors"));
        tensors.Remove("model.layers.1.mlp.up_proj.weight");
        SafeTensors.Save(tensors, Path.Combine(temp.Path, "model.safetensors"));
        LoadFails(temp.Path, "model.safetensors", "missing tensors: model.layers.1.mlp.up_proj.weight");
    }

    [Fact]
    public void UnexpectedTensor()
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("gpt2");
        var tensors = SafeTensors.Load(Path.Combine(Fixtures.Dir("gpt2"), "model.safetensors"));
        tensors["transformer.h.2.ln_1.weight"] = ones(64);
        SafeTensors.Save(tensors, Path.Combine(temp.Path, "model.safetensors"));
        LoadFails(temp.Path, "model.safetensors", "unexpected tensors: transformer.h.2.ln_1.weight");
    }

    [Fact]
    public void WrongShapeTensor()
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("opt-350m-style");
        var tensors = SafeTensors.Load(Path.Combine(Fixtures.Dir("opt-350m-style"), "model.safetensors"));
        tensors["model.decoder.project_in.weight"] = zeros(32, 64);
        SafeTensors.Save(tensors, Path.Combine(temp.Path, "model.safetensors"));
        LoadFails(temp.Path, "model.safetensors", "wrong shape", "model.decoder.project_in.weight", "[32, 64]", "[64, 32]");
    }

    [Fact]
    public void TruncatedSafetensors()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("opt");
        var path = Path.Combine(temp.Path, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length - 1000)]);
        LoadFails(temp.Path, path, "truncated", "ends at data byte");
        File.WriteAllBytes(path, bytes[..100]); // cut inside the header
        LoadFails(temp.Path, path, "truncated", "header length");
        File.WriteAllBytes(path, bytes[..5]);
        LoadFails(temp.Path, path, "truncated");
    }

    [Fact]
    public void CorruptHeader()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("opt");
        var path = Path.Combine(temp.Path, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        long headerLength = BitConverter.ToInt64(bytes, 0);
        // garbage in the JSON
        var garbled = (byte[])bytes.Clone();
        for (int i = 8; i < 40; i++) garbled[i] = (byte)'#';
        File.WriteAllBytes(path, garbled);
        LoadFails(temp.Path, path, "corrupt header", "not valid JSON");
        // a header length far beyond the file
        var huge = (byte[])bytes.Clone();
        BitConverter.GetBytes(1L << 40).CopyTo(huge, 0);
        File.WriteAllBytes(path, huge);
        LoadFails(temp.Path, path, "corrupt header");
        // entries that are inconsistent with themselves or each other
        WriteWithHeader(path, """{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}""", 24);
        AssertOpenFails(path, "tensor 'a'", "need", "24");
        WriteWithHeader(path, """{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}""", 12);
        AssertOpenFails(path, "overlap");
        WriteWithHeader(path, """{"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}""", 8);
        AssertOpenFails(path, "unsupported dtype 'Q4'");
        WriteWithHeader(path, """{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}""", 4);
        AssertOpenFails(path, "truncated", "tensor 'a'");
        Assert.True(headerLength > 0);
    }

    [Fact]
    public void MalformedIndex()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("opt");
        File.Delete(Path.Combine(temp.Path, "model.safetensors"));
        File.WriteAllText(Path.Combine(temp.Path, "model.safetensors.index.json"), """{"weight_map": {"model.decoder.embed_tokens.weight": "model-00001-of-00002.safetensors"}}""");
        LoadFails(temp.Path, "model.safetensors.index.json", "model-00001-of-00002.safetensors", "does not exist");
        File.WriteAllText(Path.Combine(temp.Path, "model.safetensors.index.json"), "{\"metadata\": ");
        LoadFails(temp.Path, "model.safetensors.index.json", "malformed index");
    }

    [Fact]
    public void SlidingWindowIsRejectedClearly()
    {
        using var temp = new Fixtures.TempDir();
        temp.CopyFixture("llama");
        EditConfig(temp.Path, "\"model_type\": \"llama\"", "\"model_type\": \"mistral\", \"sliding_window\": 16");
        var e = Assert.Throws<NotSupportedException>(() => PretrainedModel.Load(temp.Path));
        Assert.Contains("config.json", e.Message);
        Assert.Contains("sliding_window 16", e.Message);
    }

    private static void AssertOpenFails(string path, params string[] problem)
    {
        var e = Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.Contains(path, e.Message);
        foreach (var p in problem) Assert.Contains(p, e.Message);
    }

    private static void WriteWithHeader(string path, string header, int dataBytes)
    {
        var json = Encoding.UTF8.GetBytes(header);
        using var stream = File.Create(path);
        stream.Write(BitConverter.GetBytes((long)json.Length));
        stream.Write(json);
        stream.Write(new byte[dataBytes]);
    }

    private static void EditConfig(string dir, string from, string to)
    {
        var path = Path.Combine(dir, "config.json");
        var text = File.ReadAllText(path);
        Assert.Contains(from, text);
        File.WriteAllText(path, text.Replace(from, to));
    }
}
