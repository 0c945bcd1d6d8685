using WeakTeacher.Engine.Runtime;
using Xunit;

namespace WeakTeacher.Tests.Runtime;

/// <summary>WT_MMAP_THRESHOLD, glibc's fixed mmap threshold for libtorch's CPU tensors: its values and its errors.</summary>
public sealed class NativeHeapTests
{
    [Theory]
    [InlineData(null, NativeHeap.DefaultThreshold)]
    [InlineData("", NativeHeap.DefaultThreshold)]
    [InlineData("0", 0)]
    [InlineData("262144", 262144)]
    [InlineData("33554432", 33554432)]
    public void TheSettingGivesTheThreshold(string? setting, int bytes) => Assert.Equal(bytes, NativeHeap.ThresholdFrom(setting));

    [Theory]
    [InlineData("1m")]
    [InlineData("-1")]
    [InlineData("100")]
    [InlineData("33554433")]
    public void AnythingElseIsOneClearError(string setting)
    {
        var e = Assert.Throws<ArgumentException>(() => NativeHeap.ThresholdFrom(setting));
        Assert.Contains(NativeHeap.ThresholdVariable, e.Message);
        Assert.Contains(setting, e.Message);
    }
}
