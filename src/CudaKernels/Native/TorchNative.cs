using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Native;

/// <summary>The one LibTorchSharp export TorchSharp does not surface: the element pointer of a tensor.</summary>
internal static partial class TorchNative
{
    [LibraryImport("LibTorchSharp")]
    private static partial IntPtr THSTensor_data(IntPtr tensor);

    /// <summary>Address of the first element (storage offset applied); a device pointer for CUDA tensors.
    /// The tensor must stay alive (and unmoved) while the address is used.</summary>
    internal static IntPtr DataPointer(Tensor tensor)
    {
        var p = THSTensor_data(tensor.Handle);
        if (p == IntPtr.Zero && tensor.numel() > 0)
        {
            TorchSharp.torch.CheckForErrors();
            throw new InvalidOperationException("THSTensor_data returned a null pointer for a non-empty tensor.");
        }
        return p;
    }
}
