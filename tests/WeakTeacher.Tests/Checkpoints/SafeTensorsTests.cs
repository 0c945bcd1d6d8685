using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Tests.Models;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Checkpoints;

public class SafeTensorsTests
{
    [Fact]
    public void RoundTripsEveryDtypeWithMetadata()
    {
        using var scope = NewDisposeScope();
        using var temp = new Fixtures.TempDir();
        var tensors = new Dictionary<string, Tensor>
        {
            ["f32"] = randn(3, 4),
            ["f16"] = randn(5).to(ScalarType.Float16),
            ["bf16"] = randn(2, 2, 2).to(ScalarType.BFloat16),
            ["f64"] = randn(7, dtype: ScalarType.Float64),
            ["i64"] = arange(-5, 5, ScalarType.Int64),
            ["i32"] = arange(0, 6, ScalarType.Int32).reshape(2, 3),
            ["u8"] = tensor(new byte[] { 0, 1, 255 }),
            ["bool"] = tensor(new[] { true, false, true }),
            ["scalar"] = tensor(3.5f),
            ["empty"] = zeros(0, 4),
            ["strided"] = randn(4, 6).t(), // non-contiguous input is written in logical order
        };
        var path = Path.Combine(temp.Path, "t.safetensors");
        SafeTensors.Save(tensors, path, new Dictionary<string, string> { ["format"] = "pt", ["step"] = "12" });
        var loaded = SafeTensors.Load(path, out var metadata);
        Assert.Equal("12", metadata["step"]);
        Assert.Equal(tensors.Keys.Order(), loaded.Keys.Order());
        foreach (var (name, t) in tensors)
        {
            Assert.Equal(t.dtype, loaded[name].dtype);
            Assert.Equal(t.shape, loaded[name].shape);
            Assert.True(t.Same(loaded[name]), name);
        }
        // the data section starts 8-byte aligned, as the reference writer makes it
        using var file = File.OpenRead(path);
        var lengthBytes = new byte[8];
        file.ReadExactly(lengthBytes);
        Assert.Equal(0, BitConverter.ToInt64(lengthBytes) % 8);
    }

    [Fact]
    public void ReadsTransformersFileIntoExistingTensorsWithCast()
    {
        using var scope = NewDisposeScope();
        using var file = SafeTensorsFile.Open(Path.Combine(Fixtures.Dir("llama"), "expected.safetensors"));
        Assert.Equal("F64", file.Tensors["seq_logps"].DType);
        Assert.Equal("I64", file.Tensors["input_ids"].DType);
        var seq = file.Read("seq_logps");
        var into = empty(seq.shape, ScalarType.Float32);
        file.ReadInto("seq_logps", into);
        Assert.True(into.Same(seq.to(ScalarType.Float32)));
        Assert.Throws<CheckpointException>(() => file.Read("nope"));
    }
}
