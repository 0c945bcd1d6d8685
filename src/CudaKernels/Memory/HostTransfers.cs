using WeakTeacher.CudaKernels.Cuda;
using WeakTeacher.CudaKernels.Native;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Memory;

/// <summary>Marks the end of an asynchronous host-device copy. Default (and every CPU copy) is already complete.</summary>
public readonly struct TransferFence
{
    private readonly IntPtr _event;

    internal TransferFence(IntPtr cudaEvent) => _event = cudaEvent;

    /// <summary>True when the copy has finished (never blocks).</summary>
    public bool IsCompleted => _event == IntPtr.Zero || CudaDriver.Instance.EventQuery(_event);

    /// <summary>Blocks until the copy has finished.</summary>
    public void Wait()
    {
        if (_event != IntPtr.Zero) CudaDriver.Instance.EventSynchronize(_event);
    }
}

/// <summary>
/// Copies between pooled host buffers and tensors. For a CUDA tensor the copy is cuMemcpyHtoDAsync / DtoHAsync on the
/// legacy default stream, so it is ordered with libtorch's kernels before and after it; the returned fence tells when
/// the host buffer may be read (download) or reused (the pool also waits before handing the block out again). For a
/// CPU tensor the copy is a plain memory copy and the fence is complete.
/// </summary>
public static unsafe class HostTransfers
{
    /// <summary>
    /// <paramref name="host"/> (a CPU tensor) on <paramref name="device"/>: on the CPU the same storage (a new handle),
    /// elsewhere <see cref="Staged"/> through <see cref="PinnedMemoryPool.Shared"/>, asynchronously. The training and
    /// scoring batches go up this way, so the host does not wait for a pageable copy.
    /// </summary>
    public static Tensor ToDevice(Tensor host, Device device)
    {
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(device);
        if (host.device_type != TorchSharp.DeviceType.CPU)
            throw new ArgumentException($"HostTransfers.ToDevice: host must be a CPU tensor, it is on {host.device}.", nameof(host));
        if (device.type == TorchSharp.DeviceType.CPU) return host.alias();
        return device.type == TorchSharp.DeviceType.CUDA ? Staged(host, device, PinnedMemoryPool.Shared) : host.to(device);
    }

    /// <summary>
    /// A new tensor on <paramref name="device"/> with the values of the CPU tensor <paramref name="host"/>: its bytes go
    /// into a block rented from <paramref name="pool"/>, which is uploaded (cuMemcpyHtoDAsync on CUDA, ordered with
    /// libtorch's work; a memory copy on the CPU) and returned at once (the pool hands it out again only after the copy).
    /// </summary>
    public static Tensor Staged(Tensor host, Device device, PinnedMemoryPool pool)
    {
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(pool);
        if (host.device_type != TorchSharp.DeviceType.CPU)
            throw new ArgumentException($"HostTransfers.Staged: host must be a CPU tensor, it is on {host.device}.", nameof(host));
        using var contiguous = host.contiguous();
        var destination = empty(host.shape, host.dtype, device);
        try
        {
            long bytes = contiguous.numel() * contiguous.ElementSize;
            using var buffer = pool.Rent<byte>(checked((int)bytes));
            if (bytes > 0)
            {
                Buffer.MemoryCopy((void*)TorchNative.DataPointer(contiguous), (void*)buffer.Pointer, bytes, bytes);
                Copy(buffer.Block, buffer.Pointer, bytes, destination);
            }
            return destination;
        }
        catch
        {
            destination.Dispose();
            throw;
        }
    }

    /// <summary>Copies all of <paramref name="source"/> into the contiguous <paramref name="destination"/>, which must
    /// have exactly source.Length elements of sizeof(T) bytes.</summary>
    public static TransferFence Upload<T>(PinnedMemoryOwner<T> source, Tensor destination) where T : unmanaged
    {
        CheckTensor(destination, source.Length, sizeof(T), nameof(destination));
        if (source.Length == 0) return default;
        return Copy(source.Block, source.Pointer, source.ByteLength, destination);
    }

    private static TransferFence Copy(PinnedBlock block, IntPtr pointer, long bytes, Tensor destination)
    {
        var target = TorchNative.DataPointer(destination);
        if (destination.device_type != TorchSharp.DeviceType.CUDA)
        {
            Buffer.MemoryCopy((void*)pointer, (void*)target, bytes, bytes);
            return default;
        }
        var device = CudaRuntime.DeviceOf(destination);
        block.WaitForTransfer();
        var driver = device.Driver;
        driver.MemcpyHtoDAsync((ulong)target, (void*)pointer, (nuint)bytes, CudaDriver.DefaultStream);
        var e = block.EventForTransfer();
        driver.EventRecord(e, CudaDriver.DefaultStream);
        block.TransferPending = true;
        return new TransferFence(e);
    }

    /// <summary>Copies the contiguous <paramref name="source"/> (exactly destination.Length elements of sizeof(T)
    /// bytes) into <paramref name="destination"/>; wait on the fence before reading the buffer.</summary>
    public static TransferFence Download<T>(Tensor source, PinnedMemoryOwner<T> destination) where T : unmanaged
    {
        CheckTensor(source, destination.Length, sizeof(T), nameof(source));
        if (destination.Length == 0) return default;
        var from = TorchNative.DataPointer(source);
        if (source.device_type != TorchSharp.DeviceType.CUDA)
        {
            Buffer.MemoryCopy((void*)from, (void*)destination.Pointer, destination.ByteLength, destination.ByteLength);
            return default;
        }
        var device = CudaRuntime.DeviceOf(source);
        var block = destination.Block;
        block.WaitForTransfer();
        var driver = device.Driver;
        driver.MemcpyDtoHAsync((void*)destination.Pointer, (ulong)from, (nuint)destination.ByteLength, CudaDriver.DefaultStream);
        var e = block.EventForTransfer();
        driver.EventRecord(e, CudaDriver.DefaultStream);
        block.TransferPending = true;
        return new TransferFence(e);
    }

    private static void CheckTensor(Tensor tensor, int length, int elementBytes, string name)
    {
        ArgumentNullException.ThrowIfNull(tensor, name);
        if (!tensor.is_contiguous())
            throw new ArgumentException($"{name} must be contiguous.", name);
        if (tensor.numel() != length)
            throw new ArgumentException($"{name} has {tensor.numel()} elements but the host buffer has {length}.", name);
        if (tensor.ElementSize != elementBytes)
            throw new ArgumentException($"{name} has {tensor.ElementSize}-byte elements ({tensor.dtype}) but the host buffer's are {elementBytes} bytes.", name);
    }
}
