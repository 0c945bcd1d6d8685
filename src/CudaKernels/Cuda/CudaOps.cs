using WeakTeacher.CudaKernels.Native;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels.Cuda;

/// <summary>
/// Launches of the embedded kernels on the legacy default stream (stream 0), which orders them with libtorch's work.
/// Callers pass contiguous CUDA tensors of the documented dtypes; the tensors must stay alive until the launch is
/// enqueued (the stream order then keeps the memory valid, as the caching allocator frees on the same stream).
/// </summary>
internal static unsafe class CudaOps
{
    internal const string LogProbFile = "token_logprobs.cu";
    internal const string PreferenceFile = "preference.cu";

    /// <summary>Launches issued through this class in this process (the benchmark reports launches per call).</summary>
    internal static long LaunchCount;

    private static ulong Ptr(Tensor t) => (ulong)TorchNative.DataPointer(t);

    private static void Launch(CudaDevice device, string file, string name, uint grid, uint block, void** args)
    {
        var f = device.Function(file, name);
        device.MakeCurrent();
        device.Driver.LaunchKernel(f, grid, 1, 1, block, 1, 1, 0, CudaDriver.DefaultStream, args, name);
        Interlocked.Increment(ref LaunchCount);
        if (KernelSettings.SynchronizeAfterLaunch)
            device.Driver.Check(device.Driver.CtxSynchronizeResult(), $"cuCtxSynchronize after {name}");
    }

    /// <summary>Elements per 16-byte vector load for the logits dtype.</summary>
    private static int VectorWidth(ScalarType dtype) => dtype == ScalarType.Float32 ? 4 : 8;

    private static string KernelName(ScalarType dtype, bool forward) => (dtype, forward) switch
    {
        (ScalarType.Float32, true) => "logprob_forward_f32",
        (ScalarType.BFloat16, true) => "logprob_forward_bf16",
        (ScalarType.Float32, false) => "logprob_backward_f32",
        (ScalarType.BFloat16, false) => "logprob_backward_bf16",
        _ => throw new ArgumentException($"The CUDA log-prob kernels take float32 or bfloat16 logits, got {dtype}."),
    };

    /// <summary>Threads per row: about 8 loads per thread, 32..512 threads.</summary>
    internal static uint RowThreads(long loadsPerRow) =>
        (uint)Math.Clamp((((loadsPerRow + 7) / 8) + 31) / 32 * 32, 32, 512);

    private static bool Vectorizable(long vocab, int width, params Tensor[] tensors)
    {
        if (vocab % width != 0) return false;
        foreach (var t in tensors)
            if (Ptr(t) % 16 != 0) return false;
        return true;
    }

    /// <summary>token/lse [N] float32 are written (the per-sequence sums are <see cref="SequenceSums"/>).</summary>
    internal static void LogProbForward(Tensor logits, Tensor labels, long ignoreIndex, Tensor token, Tensor lse)
    {
        long n = logits.shape[0];
        if (n == 0) return;
        long vocabLong = logits.shape[1];
        if (vocabLong > int.MaxValue) throw new ArgumentException($"Vocabulary of {vocabLong} exceeds the kernel's int range.");
        var device = CudaRuntime.DeviceOf(logits);
        int width = VectorWidth(logits.dtype);
        int vectorized = Vectorizable(vocabLong, width, logits) ? 1 : 0;
        uint threads = RowThreads(vectorized == 1 ? vocabLong / width : vocabLong);
        ulong pLogits = Ptr(logits), pLabels = Ptr(labels), pToken = Ptr(token), pLse = Ptr(lse);
        int vocab = (int)vocabLong;
        long ignore = ignoreIndex;
        void** args = stackalloc void*[7];
        args[0] = &pLogits; args[1] = &pLabels; args[2] = &vocab; args[3] = &ignore;
        args[4] = &vectorized; args[5] = &pToken; args[6] = &pLse;
        Launch(device, LogProbFile, KernelName(logits.dtype, forward: true), checked((uint)n), threads, args);
    }

    /// <summary>sums [S] float32 = per-sequence sums of values [N] float32 by seqIndex [N] int64, fully written,
    /// deterministic (one block per sequence, a fixed reduction order; no atomics).</summary>
    internal static void SequenceSums(Tensor values, Tensor seqIndex, Tensor sums)
    {
        long s = sums.shape[0];
        if (s == 0) return;
        var device = CudaRuntime.DeviceOf(sums);
        ulong pValues = Ptr(values), pSeqIndex = Ptr(seqIndex), pSums = Ptr(sums);
        int n = checked((int)values.shape[0]);
        if (n == 0) { sums.zero_(); return; }
        void** args = stackalloc void*[4];
        args[0] = &pValues; args[1] = &pSeqIndex; args[2] = &n; args[3] = &pSums;
        Launch(device, LogProbFile, "sequence_sums_f32", checked((uint)s), 256, args);
    }

    /// <summary>dlogits (same dtype and shape as logits; may be the logits tensor itself) is fully written. logits may
    /// be a [rows, slice] tile of the vocabulary starting at entry <paramref name="columnOffset"/>; lse is over full rows.</summary>
    internal static void LogProbBackward(Tensor logits, Tensor labels, Tensor seqIndex, Tensor lse, Tensor gradToken, Tensor gradSequence,
        long ignoreIndex, Tensor dlogits, long columnOffset = 0)
    {
        long n = logits.shape[0];
        if (n == 0) return;
        long vocabLong = logits.shape[1];
        var device = CudaRuntime.DeviceOf(logits);
        int width = VectorWidth(logits.dtype);
        int vectorized = Vectorizable(vocabLong, width, logits, dlogits) ? 1 : 0;
        uint threads = RowThreads(vectorized == 1 ? vocabLong / width : vocabLong);
        ulong pLogits = Ptr(logits), pLabels = Ptr(labels), pSeqIndex = Ptr(seqIndex), pLse = Ptr(lse),
            pGradToken = Ptr(gradToken), pGradSeq = gradSequence.numel() == 0 ? 0UL : Ptr(gradSequence), pOut = Ptr(dlogits);
        int vocab = checked((int)vocabLong);
        long ignore = ignoreIndex, offset = columnOffset;
        void** args = stackalloc void*[11];
        args[0] = &pLogits; args[1] = &pLabels; args[2] = &pSeqIndex; args[3] = &pLse; args[4] = &pGradToken;
        args[5] = &pGradSeq; args[6] = &vocab; args[7] = &offset; args[8] = &ignore; args[9] = &vectorized; args[10] = &pOut;
        Launch(device, LogProbFile, KernelName(logits.dtype, forward: false), checked((uint)n), threads, args);
    }

    /// <summary>One launch: the four [B] metrics, grads [4, B] (d loss / d pi_c, pi_r, ref_c, ref_r) and the scalar
    /// loss, all float32. lossType: 0 sigmoid, 1 ipo, 2 hinge, 3 robust (the order of <see cref="PreferenceLossType"/>).</summary>
    internal static void PreferenceLoss(Tensor policyChosen, Tensor policyRejected, Tensor referenceChosen, Tensor referenceRejected,
        int lossType, double beta, double labelSmoothing, Tensor chosenRewards, Tensor rejectedRewards, Tensor accuracies,
        Tensor margins, Tensor grads, Tensor loss)
    {
        var device = CudaRuntime.DeviceOf(policyChosen);
        int n = checked((int)policyChosen.shape[0]);
        ulong a = Ptr(policyChosen), b = Ptr(policyRejected), c = Ptr(referenceChosen), d = Ptr(referenceRejected),
            cr = Ptr(chosenRewards), rr = Ptr(rejectedRewards), acc = Ptr(accuracies), m = Ptr(margins), g = Ptr(grads), l = Ptr(loss);
        void** args = stackalloc void*[14];
        args[0] = &a; args[1] = &b; args[2] = &c; args[3] = &d; args[4] = &n; args[5] = &lossType;
        args[6] = &beta; args[7] = &labelSmoothing; args[8] = &cr; args[9] = &rr; args[10] = &acc; args[11] = &m;
        args[12] = &g; args[13] = &l;
        Launch(device, PreferenceFile, "preference_loss", 1, 256, args);
    }

    /// <summary>One launch: reward A, reward B, margin, confidence [B] float32 and label [B] int64.</summary>
    internal static void PreferenceLabel(Tensor policyA, Tensor referenceA, Tensor policyB, Tensor referenceB, double beta,
        Tensor rewardA, Tensor rewardB, Tensor margin, Tensor confidence, Tensor label)
    {
        var device = CudaRuntime.DeviceOf(policyA);
        int n = checked((int)policyA.shape[0]);
        ulong a = Ptr(policyA), b = Ptr(referenceA), c = Ptr(policyB), d = Ptr(referenceB),
            ra = Ptr(rewardA), rb = Ptr(rewardB), m = Ptr(margin), conf = Ptr(confidence), l = Ptr(label);
        void** args = stackalloc void*[11];
        args[0] = &a; args[1] = &b; args[2] = &c; args[3] = &d; args[4] = &n; args[5] = &beta;
        args[6] = &ra; args[7] = &rb; args[8] = &m; args[9] = &conf; args[10] = &l;
        uint blocks = (uint)Math.Clamp((n + 255) / 256, 1, 1024);
        Launch(device, PreferenceFile, "preference_label", blocks, 256, args);
    }
}
