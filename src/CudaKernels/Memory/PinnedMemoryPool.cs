using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using WeakTeacher.CudaKernels.Cuda;
using WeakTeacher.CudaKernels.Native;

namespace WeakTeacher.CudaKernels.Memory;

/// <summary>Where a <see cref="PinnedMemoryPool"/> gets its blocks.</summary>
public enum PinnedMemoryKind
{
    /// <summary>Page-locked when CUDA is available, ordinary memory otherwise.</summary>
    Auto,
    /// <summary>Page-locked host memory from cuMemHostAlloc (fast, truly asynchronous host-device copies).</summary>
    PageLocked,
    /// <summary>Ordinary memory: arrays on the pinned object heap, so the address is stable like the page-locked kind.</summary>
    Managed,
}

/// <summary>
/// A pool of host buffers for host-device transfers, rented and returned by power-of-two size class (4 KiB upward),
/// bounded in total bytes, thread-safe. A rent in steady state reuses a block and its owner object: no native
/// allocation and no managed allocation. Returning a block whose upload is still in flight is safe: the block is
/// handed out again only after that copy has finished.
/// </summary>
public sealed unsafe class PinnedMemoryPool : IDisposable
{
    /// <summary>The smallest block (and size class) in bytes.</summary>
    public const int MinBlockBytes = 4096;

    private static readonly Lazy<PinnedMemoryPool> SharedPool = new(() => new PinnedMemoryPool(1L << 30));

    /// <summary>A process-wide pool of at most 1 GiB (page-locked when CUDA is available).</summary>
    public static PinnedMemoryPool Shared => SharedPool.Value;

    private readonly Lock _lock = new();
    private readonly Stack<PinnedBlock>[] _idle = new Stack<PinnedBlock>[48];
    private bool _disposed;

    /// <param name="maxTotalBytes">Bound on the bytes of all blocks held (rented or idle).</param>
    /// <param name="kind">Page-locked or ordinary memory; Auto picks page-locked when CUDA is available.</param>
    public PinnedMemoryPool(long maxTotalBytes, PinnedMemoryKind kind = PinnedMemoryKind.Auto)
    {
        if (maxTotalBytes < MinBlockBytes)
            throw new ArgumentOutOfRangeException(nameof(maxTotalBytes), maxTotalBytes, $"The pool bound must be at least {MinBlockBytes} bytes.");
        if (kind == PinnedMemoryKind.PageLocked) CudaRuntime.EnsureAvailable();
        IsPageLocked = kind == PinnedMemoryKind.PageLocked || (kind == PinnedMemoryKind.Auto && CudaRuntime.IsAvailable);
        MaxTotalBytes = maxTotalBytes;
        for (int i = 0; i < _idle.Length; i++) _idle[i] = new Stack<PinnedBlock>();
    }

    /// <summary>True when blocks come from cuMemHostAlloc.</summary>
    public bool IsPageLocked { get; }

    /// <summary>The bound on <see cref="HeldBytes"/>.</summary>
    public long MaxTotalBytes { get; }

    /// <summary>Bytes of all blocks the pool holds (rented and idle).</summary>
    public long HeldBytes { get; private set; }

    /// <summary>Bytes of the blocks currently rented.</summary>
    public long RentedBytes { get; private set; }

    /// <summary>How many blocks were allocated (natively or on the pinned heap) over the pool's life.</summary>
    public long BlockAllocations { get; private set; }

    /// <summary>The size class (block bytes) that serves a request of this many bytes.</summary>
    public static long BlockBytesFor(long bytes) => bytes <= MinBlockBytes ? MinBlockBytes : (long)BitOperations.RoundUpToPowerOf2((ulong)bytes);

    /// <summary>Rents a buffer of exactly <paramref name="length"/> elements (the block behind it may be larger).
    /// Dispose the owner to return it.</summary>
    public PinnedMemoryOwner<T> Rent<T>(int length) where T : unmanaged
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        long bytes = Math.Max((long)length * sizeof(T), 1);
        long blockBytes = BlockBytesFor(bytes);
        int sizeClass = BitOperations.Log2((ulong)blockBytes);
        PinnedBlock? block = null;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_idle[sizeClass].Count > 0) block = _idle[sizeClass].Pop();
            else
            {
                if (HeldBytes + blockBytes > MaxTotalBytes) TrimLocked();
                if (HeldBytes + blockBytes > MaxTotalBytes)
                    throw new InvalidOperationException(
                        $"PinnedMemoryPool: renting {bytes} bytes (a {blockBytes}-byte block) would exceed the pool bound of {MaxTotalBytes} bytes; {RentedBytes} bytes are rented and not yet returned.");
                HeldBytes += blockBytes;
                BlockAllocations++;
            }
            RentedBytes += blockBytes;
        }
        try
        {
            block ??= AllocateBlock(blockBytes, sizeClass);
        }
        catch
        {
            lock (_lock) { HeldBytes -= blockBytes; RentedBytes -= blockBytes; }
            throw;
        }
        block.WaitForTransfer();
        if (block.Owner is not PinnedMemoryOwner<T> owner)
        {
            owner = new PinnedMemoryOwner<T>(this, block);
            block.Owner = owner;
        }
        owner.Activate(length);
        return owner;
    }

    internal void Return(PinnedBlock block)
    {
        lock (_lock)
        {
            RentedBytes -= block.Bytes;
            if (!_disposed) { _idle[block.SizeClass].Push(block); return; }
            HeldBytes -= block.Bytes;
        }
        FreeBlock(block);
    }

    /// <summary>Frees every idle block (rented blocks are unaffected).</summary>
    public void Trim()
    {
        lock (_lock) TrimLocked();
    }

    private void TrimLocked()
    {
        foreach (var stack in _idle)
            while (stack.Count > 0)
            {
                var block = stack.Pop();
                HeldBytes -= block.Bytes;
                FreeBlock(block);
            }
    }

    private PinnedBlock AllocateBlock(long bytes, int sizeClass)
    {
        if (IsPageLocked)
        {
            CudaRuntime.Device(0);   // cuMemHostAlloc needs a current context
            var pointer = CudaDriver.Instance.MemHostAlloc((nuint)bytes, CudaDriver.CU_MEMHOSTALLOC_PORTABLE);
            return new PinnedBlock((IntPtr)pointer, bytes, sizeClass, null);
        }
        // ordinary memory: a pinned-object-heap array has a stable address for its whole life
        var array = GC.AllocateUninitializedArray<byte>(checked((int)bytes), pinned: true);
        return new PinnedBlock((IntPtr)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array)), bytes, sizeClass, array);
    }

    private static void FreeBlock(PinnedBlock block)
    {
        if (block.Managed is null) CudaRuntime.Device(0);   // a current context for the driver calls below
        block.WaitForTransfer();
        block.DestroyEvent();
        if (block.Managed is null && block.Pointer != IntPtr.Zero)
            CudaDriver.Instance.MemFreeHost((void*)block.Pointer);
        block.Pointer = IntPtr.Zero;
    }

    /// <summary>Frees the idle blocks; blocks still rented are freed when they come back.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            TrimLocked();
        }
    }
}

/// <summary>One block of a <see cref="PinnedMemoryPool"/>: its memory, size class, the owner object reused across
/// rents, and the event that marks the end of the last asynchronous copy from or to it.</summary>
internal sealed class PinnedBlock(IntPtr pointer, long bytes, int sizeClass, byte[]? managed)
{
    internal IntPtr Pointer = pointer;
    internal readonly long Bytes = bytes;
    internal readonly int SizeClass = sizeClass;
    internal readonly byte[]? Managed = managed;   // keeps a pinned-heap array alive
    internal object? Owner;
    internal IntPtr TransferEvent;                  // created on first async copy, reused
    internal bool TransferPending;

    internal void WaitForTransfer()
    {
        if (!TransferPending) return;
        CudaDriver.Instance.EventSynchronize(TransferEvent);
        TransferPending = false;
    }

    internal IntPtr EventForTransfer()
    {
        if (TransferEvent == IntPtr.Zero) TransferEvent = CudaDriver.Instance.EventCreate(CudaDriver.CU_EVENT_DISABLE_TIMING);
        return TransferEvent;
    }

    internal void DestroyEvent()
    {
        if (TransferEvent == IntPtr.Zero) return;
        CudaDriver.Instance.EventDestroy(TransferEvent);
        TransferEvent = IntPtr.Zero;
    }
}

/// <summary>
/// A rented buffer of <typeparamref name="T"/> (an <see cref="IMemoryOwner{T}"/> in the CommunityToolkit
/// MemoryOwner style): <see cref="Span"/> and <see cref="MemoryManager{T}.Memory"/> cover exactly
/// <see cref="Length"/> elements. Dispose returns it to the pool; the object itself is reused by later rents of the
/// same block, so do not touch it after disposing.
/// </summary>
public sealed unsafe class PinnedMemoryOwner<T> : MemoryManager<T> where T : unmanaged
{
    private readonly PinnedMemoryPool _pool;
    private bool _rented;

    internal PinnedMemoryOwner(PinnedMemoryPool pool, PinnedBlock block)
    {
        _pool = pool;
        Block = block;
    }

    internal PinnedBlock Block { get; }

    /// <summary>Elements in this rent.</summary>
    public int Length { get; private set; }

    /// <summary>Bytes in this rent (Length * sizeof(T)).</summary>
    public long ByteLength => (long)Length * sizeof(T);

    /// <summary>Address of the first element (stable while rented).</summary>
    public IntPtr Pointer => _rented ? Block.Pointer : throw new ObjectDisposedException(nameof(PinnedMemoryOwner<T>), "The buffer was returned to its pool.");

    /// <summary>True when the memory is page-locked (cuMemHostAlloc).</summary>
    public bool IsPageLocked => Block.Managed is null;

    /// <summary>The rented elements.</summary>
    public Span<T> Span => GetSpan();

    internal void Activate(int length)
    {
        Length = length;
        _rented = true;
    }

    public override Span<T> GetSpan() => new((void*)Pointer, Length);

    public override MemoryHandle Pin(int elementIndex = 0)
    {
        if ((uint)elementIndex > (uint)Length) throw new ArgumentOutOfRangeException(nameof(elementIndex));
        return new MemoryHandle((T*)Pointer + elementIndex);
    }

    public override void Unpin() { }

    /// <summary>Returns the buffer to its pool (once; later calls do nothing).</summary>
    public void Dispose() => ((IDisposable)this).Dispose();

    protected override void Dispose(bool disposing)
    {
        if (!_rented) return;
        _rented = false;
        _pool.Return(Block);
    }
}
