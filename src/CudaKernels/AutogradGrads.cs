using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// The custom autograd functions here turn off TorchSharp's materialize_grads: with it on, an output that received no
/// gradient is zero-filled from a tensor TorchSharp made in the caller's dispose scope at forward time, which the caller
/// may already have disposed when backward runs (crash). Unused outputs instead arrive undefined and become zeros here.
/// Their backwards run through <see cref="Backward"/>, so that only the gradients they return outlive them.
/// </summary>
internal static class AutogradGrads
{
    public static Tensor OrZeros(Tensor grad, long length, Device device)
        => grad is null || grad.IsInvalid ? zeros(length, ScalarType.Float32, device) : grad;

    /// <summary>
    /// A custom function's backward such that nothing it makes or unpacks outlives it, on whatever thread autograd runs
    /// it (libtorch runs a CPU graph's backward on the caller's thread, inside the caller's dispose scopes, but a CUDA
    /// node's on a device thread of its own, where no scope exists and an undisposed wrapper holds its native memory
    /// until the collector finalises it): the saved tensors' wrappers, every temporary and the incoming gradients'
    /// wrappers are disposed when it returns. The gradients it returns must outlive it (TorchSharp hands libtorch
    /// their handles after it returns, and nothing calls back once libtorch has copied them): they go to the caller's
    /// dispose scope, and where there is none (a CUDA backward) they are the collector's, the one thing left to it.
    /// </summary>
    public static List<Tensor> Backward(autograd.AutogradContext ctx, IReadOnlyList<Tensor?> grads, Func<List<Tensor>, List<Tensor>> body)
    {
        ReleaseEarlier();
        List<Tensor>? result = null;
        using (var scope = NewDisposeScope())
        {
            try
            {
                result = body(ctx.get_saved_variables());
                foreach (var r in result)
                    if (r is not null && !r.IsInvalid && !grads.Any(g => ReferenceEquals(g, r))) r.MoveToOuterDisposeScope();
            }
            finally
            {
                // TorchSharp wrapped them for this call only; a gradient passed straight through is returned, not disposed
                foreach (var g in grads)
                    if (g is not null && !g.IsInvalid && (result is null || !result.Any(r => ReferenceEquals(g, r)))) g.Dispose();
            }
        }
        Returning(result);
        return result;
    }

    /// <summary>Records the gradients a custom backward returns, for the next one on this thread (or
    /// <see cref="Backpropagation.Run"/>) to release.</summary>
    internal static void Returning(IEnumerable<Tensor?> gradients) =>
        returnedEarlier = gradients.Where(r => r is not null && !r.IsInvalid).Select(r => r!).ToList();

    /// <summary>
    /// The gradients the previous custom backward on this thread returned. Their wrappers would otherwise live to the
    /// end of the caller's scope, and while one lives autograd sees the gradient as shared: it keeps it to the end of
    /// the whole backward and sums into it out of place (a layer's dX per projection, hundreds of MiB over a model).
    /// Backwards on one thread run one at a time, and libtorch took its own references to one's gradients when it
    /// returned, so the next one to start disposes their wrappers (disposing twice, by the scope too, is harmless).
    /// </summary>
    [ThreadStatic] private static List<Tensor>? returnedEarlier;

    internal static void ReleaseEarlier()
    {
        var earlier = returnedEarlier;
        returnedEarlier = null;
        foreach (var t in earlier ?? []) t.Dispose();
    }
}

/// <summary>The backward pass the trainers run: loss.backward(), then the wrappers of the gradients the last custom
/// backward on this thread returned are released (<see cref="AutogradGrads"/>), so that none waits for the next
/// backward or, on a thread without a dispose scope, for the collector.</summary>
public static class Backpropagation
{
    public static void Run(Tensor loss)
    {
        ArgumentNullException.ThrowIfNull(loss);
        try { loss.backward(); }
        finally { AutogradGrads.ReleaseEarlier(); }
    }
}
