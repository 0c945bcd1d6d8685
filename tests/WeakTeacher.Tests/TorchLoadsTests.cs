using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests;

public class TorchLoadsTests
{
    [Fact]
    public void LibtorchLoadsAndComputes()
    {
        var a = tensor(new float[] { 1, 2, 3, 4 }).reshape(2, 2);
        var b = a.matmul(a);
        Assert.Equal(new float[] { 7, 10, 15, 22 }, b.data<float>().ToArray());
        var x = randn(3, requires_grad: true);
        (x * x).sum().backward();
        Assert.True(x.grad is not null && x.grad.allclose(2 * x));
    }
}
