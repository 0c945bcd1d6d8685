using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// The custom autograd functions here turn off TorchSharp's materialize_grads: with it on, an output that received no
/// gradient is zero-filled from a tensor TorchSharp made in the caller's dispose scope at forward time, which the caller
/// may already have disposed when backward runs (crash). Unused outputs instead arrive undefined and become zeros here.
/// </summary>
internal static class AutogradGrads
{
    public static Tensor OrZeros(Tensor grad, long length, Device device)
        => grad is null || grad.IsInvalid ? zeros(length, ScalarType.Float32, device) : grad;
}
