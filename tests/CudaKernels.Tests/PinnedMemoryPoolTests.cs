using WeakTeacher.CudaKernels.Native;
using WeakTeacher.CudaKernels.Cuda;
using WeakTeacher.CudaKernels.Memory;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>The host buffer pool with ordinary memory (what the CPU machine has); the page-locked kind is exercised by
/// <see cref="GpuKernelTests"/>.</summary>
public sealed class PinnedMemoryPoolTests
{
    [Fact]
    public void RentGivesExactLengthAndReturnReusesTheBlock()
    {
        using var pool = new PinnedMemoryPool(1 << 20, PinnedMemoryKind.Managed);
        Assert.False(pool.IsPageLocked);
        var first = pool.Rent<long>(1000);
        Assert.Equal(1000, first.Length);
        Assert.Equal(1000, first.Span.Length);
        Assert.Equal(1000, first.Memory.Length);
        Assert.Equal(8192, pool.RentedBytes);   // 8000 bytes -> the 8 KiB class
        var address = first.Pointer;
        first.Span.Fill(7);
        first.Dispose();
        Assert.Equal(0, pool.RentedBytes);

        var second = pool.Rent<long>(900);      // same size class: same block, same owner object
        Assert.Same(first, second);
        Assert.Equal(address, second.Pointer);
        Assert.Equal(900, second.Span.Length);
        Assert.Equal(1, pool.BlockAllocations);
        second.Dispose();
        Assert.Throws<ObjectDisposedException>(() => second.Span.Length);
    }

    [Fact]
    public void SizeClassesArePowersOfTwoFromFourKiB()
    {
        Assert.Equal(4096, PinnedMemoryPool.BlockBytesFor(1));
        Assert.Equal(4096, PinnedMemoryPool.BlockBytesFor(4096));
        Assert.Equal(8192, PinnedMemoryPool.BlockBytesFor(4097));
        Assert.Equal(1L << 30, PinnedMemoryPool.BlockBytesFor((1L << 29) + 1));
        using var pool = new PinnedMemoryPool(1 << 20, PinnedMemoryKind.Managed);
        using var a = pool.Rent<byte>(5000);
        using var b = pool.Rent<byte>(5000);
        Assert.NotEqual(a.Pointer, b.Pointer);
        Assert.Equal(2, pool.BlockAllocations);
        Assert.Equal(16384, pool.HeldBytes);
    }

    [Fact]
    public void SteadyStateRentAndReturnAllocateNothing()
    {
        using var pool = new PinnedMemoryPool(1 << 24, PinnedMemoryKind.Managed);
        for (int i = 0; i < 4; i++) { using var warm = pool.Rent<int>(16384); using var warm2 = pool.Rent<long>(100); }
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++)
        {
            using var tokens = pool.Rent<int>(16384);
            using var results = pool.Rent<long>(100);
            tokens.Span[0] = i;
            results.Span[0] = i;
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
        Assert.Equal(2, pool.BlockAllocations);
    }

    [Fact]
    public void SteadyStateUploadsAllocateNothing()
    {
        using var pool = new PinnedMemoryPool(1 << 24, PinnedMemoryKind.Managed);
        var target = empty(4096, ScalarType.Int64);
        for (int i = 0; i < 4; i++) { using var warm = pool.Rent<long>(4096); HostTransfers.Upload(warm, target).Wait(); }
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 200; i++)
        {
            using var tokens = pool.Rent<long>(4096);
            tokens.Span[0] = i;
            HostTransfers.Upload(tokens, target).Wait();
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.Equal(199L, target[0].item<long>());
    }

    [Fact]
    public void TheBoundIsEnforcedAndIdleBlocksAreTrimmedToMakeRoom()
    {
        using var pool = new PinnedMemoryPool(64 * 1024, PinnedMemoryKind.Managed);
        var big = pool.Rent<byte>(32 * 1024);
        var big2 = pool.Rent<byte>(32 * 1024);
        var ex = Assert.Throws<InvalidOperationException>(() => pool.Rent<byte>(1));
        Assert.Contains("exceed the pool bound of 65536 bytes", ex.Message);
        big.Dispose();
        // the idle 32 KiB block is freed to make room for a 16 KiB one
        using var small = pool.Rent<byte>(16 * 1024);
        Assert.Equal(48 * 1024, pool.HeldBytes);
        big2.Dispose();
        pool.Trim();
        Assert.Equal(16 * 1024, pool.HeldBytes);
    }

    [Fact]
    public void ConcurrentRentsNeverShareABlock()
    {
        using var pool = new PinnedMemoryPool(1 << 24, PinnedMemoryKind.Managed);
        int failures = 0;
        Parallel.For(0, 8, worker =>
        {
            for (int i = 0; i < 500; i++)
            {
                using var buffer = pool.Rent<int>(1024 + worker);
                buffer.Span.Fill(worker * 100000 + i);
                Thread.SpinWait(20);
                foreach (var v in buffer.Span)
                    if (v != worker * 100000 + i) { Interlocked.Increment(ref failures); break; }
            }
        });
        Assert.Equal(0, failures);
        Assert.Equal(0, pool.RentedBytes);
        Assert.True(pool.BlockAllocations <= 8);
    }

    [Fact]
    public void UploadAndDownloadCopyThroughCpuTensors()
    {
        using var pool = new PinnedMemoryPool(1 << 20, PinnedMemoryKind.Managed);
        using var tokens = pool.Rent<long>(6);
        for (int i = 0; i < 6; i++) tokens.Span[i] = 10 + i;
        var target = empty(2, 3, ScalarType.Int64);
        var fence = HostTransfers.Upload(tokens, target);
        Assert.True(fence.IsCompleted);
        Assert.Equal([10L, 11, 12, 13, 14, 15], target.data<long>().ToArray());

        using var results = pool.Rent<float>(3);
        HostTransfers.Download(tensor(new float[] { 1.5f, -2f, 3f }), results).Wait();
        Assert.Equal([1.5f, -2f, 3f], results.Span.ToArray());

        Assert.Contains("has 4-byte elements", Assert.Throws<ArgumentException>(() => HostTransfers.Upload(tokens, empty(6, ScalarType.Int32))).Message);
        Assert.Contains("has 5 elements", Assert.Throws<ArgumentException>(() => HostTransfers.Upload(tokens, empty(5, ScalarType.Int64))).Message);
    }

    [Fact]
    public void StagedUploadCopiesAnyCpuTensorThroughOneReusedBlock()
    {
        // the path batches take to CUDA (HostTransfers.ToDevice), run here with ordinary memory into CPU tensors
        using var pool = new PinnedMemoryPool(1 << 20, PinnedMemoryKind.Managed);
        var ids = arange(0L, 15L, dtype: ScalarType.Int64).reshape(3, 5);
        var transposed = ids.t();   // not contiguous: staged as its logical values
        for (int i = 0; i < 3; i++)
        {
            using var copy = HostTransfers.Staged(ids, CPU, pool);
            Assert.Equal(new long[] { 3, 5 }, copy.shape);
            Assert.Equal(ScalarType.Int64, copy.dtype);
            Assert.True(copy.eq(ids).all().item<bool>());
            Assert.NotEqual(TorchNative.DataPointer(ids), TorchNative.DataPointer(copy));
        }
        Assert.Equal(1, pool.BlockAllocations);
        Assert.Equal(0, pool.RentedBytes);
        using var t = HostTransfers.Staged(transposed, CPU, pool);
        Assert.True(t.eq(transposed).all().item<bool>());
        var floats = tensor(new float[] { 1.5f, -2f, 3f });
        using var f = HostTransfers.Staged(floats, CPU, pool);
        Assert.Equal([1.5f, -2f, 3f], f.data<float>().ToArray());
        using var empty0 = HostTransfers.Staged(empty(0, ScalarType.Int64), CPU, pool);
        Assert.Equal(0, empty0.numel());
        // on the CPU, ToDevice is the plain path: the same storage, no copy
        using var alias = HostTransfers.ToDevice(ids, CPU);
        Assert.Equal(TorchNative.DataPointer(ids), TorchNative.DataPointer(alias));
    }

    [Fact]
    public void PageLockedKindNeedsCuda()
    {
        if (CudaRuntime.IsAvailable)
        {
            using var pool = new PinnedMemoryPool(1 << 20, PinnedMemoryKind.PageLocked);
            Assert.True(pool.IsPageLocked);
            return;
        }
        var ex = Assert.Throws<Native.CudaUnavailableException>(() => new PinnedMemoryPool(1 << 20, PinnedMemoryKind.PageLocked));
        Assert.Equal(CudaRuntime.UnavailableReason, ex.Message);
        using var auto = new PinnedMemoryPool(1 << 20);
        Assert.False(auto.IsPageLocked);   // Auto without CUDA hands out ordinary memory through the same API
    }
}
