using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Tests;

/// <summary>Alone, not beside other tests: it reads the process's malloc totals, which concurrent tests would move.</summary>
[CollectionDefinition(nameof(ProcessHeapCollection), DisableParallelization = true)]
public sealed class ProcessHeapCollection;

/// <summary>
/// The fused head's backward frees what it kept once it has used it (issue 17 point 3): the CPU's kept [N, V] logits
/// go as soon as the head's backward returns, not when the graph is freed (in a training step: after the rest of the
/// backward, the transformer's). Measured on glibc's bytes in use (mallinfo2), which a buffer this size (over glibc's
/// largest mmap threshold, 32 MiB) enters and leaves exactly.
/// </summary>
[Collection(nameof(ProcessHeapCollection))]
public sealed class FusedHeadMemoryTests
{
    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public nuint arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
    }

    [DllImport("libc.so.6")]
    private static extern MallInfo2 mallinfo2();

    private static long HeapInUse()
    {
        var info = mallinfo2();
        return (long)(info.uordblks + info.hblkhd);
    }

    [Fact]
    public void TheKeptLogitsAreFreedWhenTheHeadsBackwardReturnsWhileTheGraphLives()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "reads glibc's malloc totals");
        const int n = 256, hiddenSize = 64, vocab = 65536, s = 4;
        const long kept = 4L * n * vocab, mib = 1 << 20;   // 64 MiB of float32 logits
        Assert.True(FusedHeadLogProbs.KeepsLogits(n, vocab, ScalarType.Float32, DeviceType.CPU, needWeight: true));
        using var scope = NewDisposeScope();
        var gen = new TorchSharp.torch.Generator(17);
        var hidden = randn([n, hiddenSize], generator: gen).requires_grad_(true);
        var weight = (randn([vocab, hiddenSize], generator: gen) * 0.1).requires_grad_(true);
        var (labels, seqIndex) = TestData.Rows(gen, n, vocab, s, -100, allMaskedSequence: -1);
        var (token, sequence) = FusedHeadLogProbs.Compute(hidden, weight, labels, seqIndex, s);
        var loss = sequence.sum();
        long afterForward = HeapInUse();
        loss.backward();
        long afterBackward = HeapInUse();
        // the outputs, and so the node and its saved tensors, are still alive; the backward added dW and dH (16 MiB),
        // once: the copy autograd makes of the returned dW (its wrapper still holds it then) is freed with the wrapper
        // by GradientReleaseFunction, before the backward returns
        long gradients = 4L * (vocab + n) * hiddenSize;
        Assert.True(afterBackward <= afterForward - kept + gradients + 8 * mib,
            $"the heap went from {afterForward / mib} to {afterBackward / mib} MiB over the backward: the {kept / mib} MiB of kept logits are still held");
        Assert.NotNull(weight.grad);
    }
}
