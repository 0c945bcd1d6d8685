using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// Tensor-and-number operations whose TorchSharp <see cref="Scalar"/> is made here, held until the native call has
/// returned, then disposed. TorchSharp's implicit number-to-Scalar conversion (<c>t.mul_(0.9)</c>,
/// <c>masked_fill(mask, 0)</c>) and the operators and overloads that convert inside TorchSharp (<c>t * 0.5</c>,
/// <c>a + b</c> and <c>add_(t)</c> with their alpha of 1, <c>square()</c>, <c>linalg.vector_norm(t, 2)</c>,
/// <c>arange(a, b)</c>, the optimizers' step) leave a finalizable Scalar that nothing references once its native
/// handle has been read. A collection started by any other thread (an upload allocating) may then run its finalizer,
/// which deletes the native at::Scalar while libtorch is still reading it: "Expected false to be true" from
/// c10/core/Scalar.h, or silently wrong values. The engine and kernels use these instead; a test reads both
/// assemblies' IL for any call that makes an unheld Scalar.
/// </summary>
public static class ScalarOps
{
    /// <summary>The alpha of 1 that a plain add uses. Static, so never finalized; at::Scalar is immutable, so every thread may share it.</summary>
    public static readonly Scalar One = 1.ToScalar();

    /// <summary><c>a + b</c>.</summary>
    public static Tensor Add(this Tensor a, Tensor b) => a.add(b, One);

    /// <summary><c>a += b</c>.</summary>
    public static Tensor AddInPlace(this Tensor a, Tensor b) => a.add_(b, One);

    /// <summary><c>a + alpha * b</c>, in place.</summary>
    public static Tensor AddInPlace(this Tensor a, Tensor b, double alpha)
    {
        using var s = alpha.ToScalar();
        return a.add_(b, s);
    }

    public static Tensor Add(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.add(s, One);
    }

    public static Tensor Add(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.add(s, One);
    }

    public static Tensor AddInPlace(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.add_(s, One);
    }

    public static Tensor Sub(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.sub(s);
    }

    public static Tensor Sub(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.sub(s);
    }

    /// <summary><c>value - a</c> (as TorchSharp's operator computes it: -a + value).</summary>
    public static Tensor SubtractFrom(this Tensor a, double value)
    {
        using var negated = a.negative();
        return negated.Add(value);
    }

    public static Tensor Mul(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.mul(s);
    }

    public static Tensor Mul(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.mul(s);
    }

    public static Tensor MulInPlace(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.mul_(s);
    }

    public static Tensor Div(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.div(s);
    }

    public static Tensor Div(this Tensor a, long value, RoundingMode roundingMode)
    {
        using var s = value.ToScalar();
        return a.div(s, rounding_mode: roundingMode);
    }

    /// <summary><c>value / a</c> (as TorchSharp's operator computes it: reciprocal(a) * value).</summary>
    public static Tensor DivideInto(this Tensor a, double value)
    {
        using var reciprocal = a.reciprocal();
        return reciprocal.Mul(value);
    }

    /// <summary><c>a ** 2</c>.</summary>
    public static Tensor Square(this Tensor a)
    {
        using var s = 2.ToScalar();
        return a.pow(s);
    }

    public static Tensor Eq(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.eq(s);
    }

    public static Tensor Ne(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.ne(s);
    }

    public static Tensor Lt(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.lt(s);
    }

    public static Tensor Ge(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.ge(s);
    }

    public static Tensor Le(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.le(s);
    }

    public static Tensor FillInPlace(this Tensor a, bool value)
    {
        using var s = value.ToScalar();
        return a.fill_(s);
    }

    public static Tensor FillInPlace(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.fill_(s);
    }

    public static Tensor IndexFill(this Tensor a, long dim, Tensor index, double value)
    {
        using var s = value.ToScalar();
        return a.index_fill(dim, index, s);
    }

    public static Tensor MaskedFill(this Tensor a, Tensor mask, double value)
    {
        using var s = value.ToScalar();
        return a.masked_fill(mask, s);
    }

    public static Tensor MaskedFill(this Tensor a, Tensor mask, long value)
    {
        using var s = value.ToScalar();
        return a.masked_fill(mask, s);
    }

    public static Tensor ClampMin(this Tensor a, double min)
    {
        using var s = min.ToScalar();
        return a.clamp_min(s);
    }

    public static Tensor ClampMin(this Tensor a, long min)
    {
        using var s = min.ToScalar();
        return a.clamp_min(s);
    }

    public static Tensor ClampMax(this Tensor a, double max)
    {
        using var s = max.ToScalar();
        return a.clamp(null, s);
    }

    /// <summary><c>torch.arange(start, stop)</c> with step 1.</summary>
    public static Tensor Arange(long start, long stop, ScalarType dtype, Device device)
    {
        using var first = start.ToScalar();
        using var end = stop.ToScalar();
        return arange(first, end, One, dtype, device);
    }

    /// <summary><c>index_add_(dim, index, source)</c> with alpha 1.</summary>
    public static Tensor IndexAddInPlace(this Tensor a, long dim, Tensor index, Tensor source) => a.index_add_(dim, index, source, One);
}
