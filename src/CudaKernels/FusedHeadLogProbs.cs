using WeakTeacher.CudaKernels.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// The output head and the per-token log-prob in one (the Cut Cross-Entropy idea): from hidden states [N, H] and the
/// output embedding [V, H], the log-probs of the labels without ever holding all [N, V] logits. The forward goes over
/// row blocks [chunkRows, V] (each row's logsumexp needs the whole row) and keeps the per-row logsumexp.
/// Frozen head (LoRA, the paper's DPO): each forward block also turns its logits into onehot - softmax in place and
/// keeps (onehot - p) @ W [rows, H], so the backward is dH = g * that, with no recompute: two head matmuls per step, as
/// eager (forward + dH). Trained head: the backward walks [rows, V-slice] tiles of up to 8 * chunkRows * V elements
/// (all rows when they fit), recomputes each tile's logits, turns them into dlogits in place and adds
/// dH += dlogits @ W[slice], dW[slice] = dlogits^T @ h (one product, rounded once, when the tile has every row).
/// On the CPU, when all N x V float32 logits fit <see cref="KeptLogitsElements"/>, a trained head's forward keeps them
/// (written block by block into one buffer), and the backward turns them into dlogits in place instead of recomputing
/// them: three vocabulary-sized products per step instead of four (eager's is two, over every row, prompt included).
/// Per-sequence sums are deterministic (<see cref="SequenceSums"/>).
/// </summary>
public static class FusedHeadLogProbs
{
    /// <summary>Most float32 elements of logits a trained head's forward keeps for its backward on the CPU: 2^27
    /// (512 MiB; 4 pairs x 128 tokens of OPT's vocabulary keep about 100 MiB). Above it the backward recomputes them in
    /// tiles. Tests set it to 0 to exercise the recompute path; the results do not depend on it.</summary>
    internal static long KeptLogitsElements { get; set; } = 1L << 27;

    /// <summary>Whether the forward keeps the logits for the backward: a trained head, float32/float64 on the CPU (the
    /// CUDA path's memory is the scarce resource there), N x V within <see cref="KeptLogitsElements"/>.</summary>
    internal static bool KeepsLogits(long n, long vocab, ScalarType dtype, DeviceType device, bool needWeight) =>
        needWeight && device == DeviceType.CPU && dtype is ScalarType.Float32 or ScalarType.Float64 && n * vocab <= KeptLogitsElements;

    /// <summary>Elements of one logits block when <c>chunkRows</c> is 0 (auto): 2^25 (128 MiB in float32).</summary>
    public const long AutoBlockElements = 1L << 25;

    /// <summary>Rows per block for the auto setting: about <see cref="AutoBlockElements"/> / V, a multiple of 64 when
    /// that is at least 64, never more than N.</summary>
    public static int AutoChunkRows(long n, long vocab)
    {
        long rows = AutoBlockElements / Math.Max(vocab, 1);
        if (rows >= 64) rows = rows / 64 * 64;
        return (int)Math.Clamp(rows, 1, Math.Max(n, 1));
    }

    /// <param name="hidden">[N, H] float32 or bfloat16 final hidden states (one row per predicted token).</param>
    /// <param name="weight">[V, H] output embedding, same dtype and device as <paramref name="hidden"/>.</param>
    /// <param name="labels">[N] int64; <paramref name="ignoreIndex"/> marks rows without a label.</param>
    /// <param name="seqIndex">[N] int64 sequence of each row, in [0, numSequences).</param>
    /// <param name="numSequences">Number of sequences.</param>
    /// <param name="ignoreIndex">Label of ignored rows: log-prob 0, no gradient.</param>
    /// <param name="chunkRows">Rows per logits block; 0 picks <see cref="AutoChunkRows"/>.</param>
    /// <param name="checkIndices">False when the caller has validated labels and seqIndex on the host: skips the range
    /// check on the device (a device-to-host read that waits for all queued work).</param>
    /// <returns>TokenLogps [N] and SequenceLogps [numSequences], float32, differentiable w.r.t. hidden and weight.</returns>
    public static (Tensor TokenLogps, Tensor SequenceLogps) Compute(Tensor hidden, Tensor weight, Tensor labels, Tensor seqIndex,
        int numSequences, long ignoreIndex = -100, int chunkRows = 0, bool checkIndices = true)
    {
        const string op = "FusedHeadLogProbs.Compute";
        InputChecks.Logits(op, hidden, nameof(hidden));
        InputChecks.Logits(op, weight, nameof(weight));
        if (weight.shape[1] != hidden.shape[1])
            throw new ArgumentException($"{op}: weight is [{weight.shape[0]}, {weight.shape[1]}] but hidden has {hidden.shape[1]} features; weight must be [V, H].", nameof(weight));
        if (weight.dtype != hidden.dtype)
            throw new ArgumentException($"{op}: weight ({weight.dtype}) and hidden ({hidden.dtype}) must have the same dtype.", nameof(weight));
        if (!InputChecks.SameDevice(weight, hidden))
            throw new ArgumentException($"{op}: weight ({weight.device}) and hidden ({hidden.device}) must be on the same device.", nameof(weight));
        if (chunkRows < 0)
            throw new ArgumentOutOfRangeException(nameof(chunkRows), chunkRows, $"{op}: chunkRows must be >= 0 (0 = auto).");
        InputChecks.Indices(op, labels, seqIndex, hidden.shape[0], numSequences, hidden);
        if (checkIndices) InputChecks.IndexRanges(op, labels, seqIndex, weight.shape[0], numSequences, ignoreIndex);
        bool cuda = KernelSettings.UseCuda(hidden, op, floatKernel: true, nameof(hidden));
        int rows = chunkRows > 0 ? (int)Math.Min(chunkRows, Math.Max(hidden.shape[0], 1)) : AutoChunkRows(hidden.shape[0], weight.shape[0]);
        // a trained head's dW is as large as the embedding: its wrapper is released right after the head's backward
        var input = hidden.contiguous();
        if (hidden.requires_grad && weight.requires_grad && is_grad_enabled()) input = GradientReleaseFunction.apply(input);
        var outputs = FusedHeadLogProbsFunction.apply(input, weight.contiguous(), labels.contiguous(), seqIndex.contiguous(),
            numSequences, ignoreIndex, rows, cuda, hidden.requires_grad, weight.requires_grad);
        return (outputs[0], outputs[1]);
    }
}

/// <summary>Autograd function of <see cref="FusedHeadLogProbs"/>: one [rows, V] logits block alive at a time in both
/// directions; the per-block log-prob maths is the CUDA kernel or the reference, chosen at the call.</summary>
internal sealed class FusedHeadLogProbsFunction : TorchSharp.torch.autograd.MultiTensorFunction<FusedHeadLogProbsFunction>
{
    public override string Name => "WeakTeacher.FusedHeadLogProbs";

    public override List<Tensor> forward(TorchSharp.torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var hidden = (Tensor)vars[0];
        var weight = (Tensor)vars[1];
        var labels = (Tensor)vars[2];
        var seqIndex = (Tensor)vars[3];
        int numSequences = (int)vars[4];
        long ignoreIndex = (long)vars[5];
        int chunkRows = (int)vars[6];
        bool cuda = (bool)vars[7];
        bool needHidden = (bool)vars[8], needWeight = (bool)vars[9];
        long n = hidden.shape[0];
        // frozen head (LoRA): the backward needs only dH = g * (onehot - p) @ W, and (onehot - p) @ W is a per-row
        // [H] vector each forward block can compute while its logits are alive, so the backward recomputes nothing
        bool frozenHead = needHidden && !needWeight;
        // trained head on the CPU within budget: the logits of every row, kept for the backward (no recompute there)
        bool keep = !cuda && !frozenHead && FusedHeadLogProbs.KeepsLogits(n, weight.shape[0], hidden.dtype, hidden.device_type, needWeight);

        var token = empty(n, ScalarType.Float32, hidden.device);
        var lse = empty(n, ScalarType.Float32, hidden.device);
        Tensor? headGrad = frozenHead ? empty_like(hidden) : null;   // [N, H]: (onehot - p) @ W per row, 0 on ignored rows
        Tensor? kept = keep ? empty([n, weight.shape[0]], hidden.dtype, hidden.device) : null;
        var weightT = weight.t();
        for (long start = 0; start < n; start += chunkRows)
        {
            using var scope = NewDisposeScope();
            long rows = Math.Min(chunkRows, n - start);
            // beta 0: the uninitialised buffer is ignored, not read (torch.addmm's documented rule)
            var logits = kept is not null
                ? kept.narrow(0, start, rows).addmm_(hidden.narrow(0, start, rows), weightT, beta: 0, alpha: 1)
                : hidden.narrow(0, start, rows).mm(weightT);
            var labelsBlock = labels.narrow(0, start, rows);
            var tokenBlock = token.narrow(0, start, rows);
            var lseBlock = lse.narrow(0, start, rows);
            if (cuda) CudaOps.LogProbForward(logits, labelsBlock, ignoreIndex, tokenBlock, lseBlock);
            else ReferenceLogProbs.ForwardBlock(logits.to(ScalarType.Float32), labelsBlock, ignoreIndex, tokenBlock, lseBlock);
            if (headGrad is null) continue;
            Tensor q;   // onehot - p, in the logits' dtype
            var unit = labelsBlock.Ne(ignoreIndex).to(ScalarType.Float32);
            if (cuda)
            {
                // the backward kernel with g = 1 per valid row, in place on the block
                CudaOps.LogProbBackward(logits, labelsBlock, labelsBlock /* seqIndex: unread without grad_seq */, lseBlock, unit, empty(0, ScalarType.Float32, hidden.device),
                    ignoreIndex, logits);
                q = logits;
            }
            else
            {
                q = ReferenceLogProbs.BackwardBlock(logits.to(ScalarType.Float32), labelsBlock, ignoreIndex, lseBlock, unit).to(hidden.dtype);
            }
            headGrad.narrow(0, start, rows).copy_(q.mm(weight));
        }
        var sequence = ReferenceLogProbs.SequenceSums(token, seqIndex, numSequences);
        ctx.save_for_backward(headGrad is not null ? [headGrad, labels, seqIndex]
            : kept is not null ? [hidden, weight, labels, seqIndex, lse, kept] : [hidden, weight, labels, seqIndex, lse]);
        ctx.save_data("ignoreIndex", ignoreIndex);
        ctx.save_data("chunkRows", chunkRows);
        ctx.save_data("cuda", cuda);
        ctx.save_data("frozenHead", frozenHead);
        ctx.save_data("needHidden", needHidden);
        ctx.save_data("needWeight", needWeight);
        ctx.save_data("numSequences", numSequences);
        ctx.set_materialize_grads(false);   // see AutogradGrads
        return [token, sequence];
    }

    /// <summary>The backward's tiles when the head is trained: [rows, columns] of at most 8 * chunkRows * V elements,
    /// all N rows when 64 columns or more then fit, so dW[slice] = dlogits^T h is one product rounded once (as eager's
    /// dW is) and written straight into dW; dH gathers one product per vocabulary slice in float32.</summary>
    internal static (long Rows, long Columns) BackwardTile(long n, long vocab, int chunkRows)
    {
        long budget = 8L * chunkRows * Math.Max(vocab, 1);
        long rows = Math.Clamp(budget / 64, 1, Math.Max(n, 1));
        long columns = Math.Min(vocab, Math.Max(64, budget / rows / 64 * 64));
        return (rows, columns);
    }

    /// <summary>Frees a saved buffer's memory once the backward has used it (turned into dlogits in place, it is
    /// single-use already): the node would otherwise hold it until the graph is freed, past the rest of the backward
    /// (the kept logits: N x V floats). Its storage is swapped for an empty one, so every holder of the tensor lets go;
    /// a second backward through the node fails on its version counter, as it would on the in-place dlogits.</summary>
    private static void Release(Tensor saved)
    {
        using var empty = torch.empty(0, saved.dtype, saved.device);
        saved.set_(empty);
    }

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, List<Tensor> grads) =>
        AutogradGrads.Backward(ctx, grads, saved => Backward(ctx, saved, grads));

    private static List<Tensor> Backward(TorchSharp.torch.autograd.AutogradContext ctx, List<Tensor> saved, List<Tensor> grads)
    {
        long ignoreIndex = (long)ctx.get_data("ignoreIndex");
        int chunkRows = (int)ctx.get_data("chunkRows");
        bool cuda = (bool)ctx.get_data("cuda");
        bool needHidden = (bool)ctx.get_data("needHidden");
        bool needWeight = (bool)ctx.get_data("needWeight");
        int numSequences = (int)ctx.get_data("numSequences");
        if (!needHidden && !needWeight) return [null!, null!, null!, null!, null!, null!, null!, null!, null!, null!, null!];
        if ((bool)ctx.get_data("frozenHead"))
        {
            Tensor headGrad = saved[0], frozenLabels = saved[1], frozenSeq = saved[2];
            using var frozenScope = NewDisposeScope();
            var g = ReferenceLogProbs.RowGrad(AutogradGrads.OrZeros(grads[0], headGrad.shape[0], headGrad.device),
                AutogradGrads.OrZeros(grads[1], numSequences, headGrad.device), frozenLabels, frozenSeq, ignoreIndex);
            // float32: the saved product itself, scaled in place, is dH (nothing to free after)
            var dh = headGrad.to(ScalarType.Float32).mul_(g.unsqueeze(1)).to(headGrad.dtype).MoveToOuterDisposeScope();
            return [dh, null!, null!, null!, null!, null!, null!, null!, null!, null!, null!];
        }
        Tensor hidden = saved[0], weight = saved[1], labels = saved[2], seqIndex = saved[3], lse = saved[4];
        long n = hidden.shape[0], vocab = weight.shape[0];
        if (saved.Count > 5) return KeptBackward(hidden, weight, labels, seqIndex, lse, saved[5], grads, numSequences, ignoreIndex, chunkRows, needHidden);
        // float32/float64 inputs accumulate in place; bfloat16/float16 in float32 buffers
        bool full = hidden.dtype is ScalarType.Float32 or ScalarType.Float64;

        Tensor? dHidden = null, dWeight = null;
        // dH accumulates over vocabulary slices: float32 [N, H] (the output itself for float32 inputs)
        Tensor? dHidden32 = needHidden ? zeros(hidden.shape, full ? hidden.dtype : ScalarType.Float32, hidden.device) : null;
        if (needWeight) dWeight = full ? zeros_like(weight) : empty_like(weight);
        using (var scope = NewDisposeScope())
        {
            var gradTokenIn = AutogradGrads.OrZeros(grads[0], n, hidden.device);
            var gradSequenceIn = AutogradGrads.OrZeros(grads[1], numSequences, hidden.device);
            Tensor? gradToken = null, gradSequence = null, rowGrad = null;
            if (cuda)
            {
                gradToken = gradTokenIn.to(ScalarType.Float32).contiguous();
                gradSequence = gradSequenceIn.to(ScalarType.Float32).contiguous();
            }
            else
            {
                rowGrad = ReferenceLogProbs.RowGrad(gradTokenIn, gradSequenceIn, labels, seqIndex, ignoreIndex);
            }
            var (tileRows, sliceColumns) = BackwardTile(n, vocab, chunkRows);
            bool oneRowTile = tileRows >= n;
            for (long col = 0; col < vocab; col += sliceColumns)
            {
                using var sliceScope = NewDisposeScope();
                long cols = Math.Min(sliceColumns, vocab - col);
                var weightSlice = weight.narrow(0, col, cols);
                var weightSliceT = weightSlice.t();
                // dW of this slice: the output's rows themselves for float32 or a single row tile, else a float32 accumulator
                Tensor? dWeightSlice = dWeight is null ? null
                    : full || oneRowTile ? dWeight.narrow(0, col, cols) : zeros([cols, weight.shape[1]], ScalarType.Float32, weight.device);
                for (long start = 0; start < n; start += tileRows)
                {
                    using var tileScope = NewDisposeScope();
                    long rows = Math.Min(tileRows, n - start);
                    var hiddenBlock = hidden.narrow(0, start, rows);
                    var logits = hiddenBlock.mm(weightSliceT);
                    var labelsBlock = labels.narrow(0, start, rows);
                    Tensor dlogits;
                    if (cuda)
                    {
                        // in place: the recomputed logits tile becomes dlogits
                        CudaOps.LogProbBackward(logits, labelsBlock, seqIndex.narrow(0, start, rows), lse.narrow(0, start, rows),
                            gradToken!.narrow(0, start, rows), gradSequence!, ignoreIndex, logits, col);
                        dlogits = logits;
                    }
                    else
                    {
                        dlogits = ReferenceLogProbs.BackwardBlock(logits.to(ScalarType.Float32), labelsBlock, ignoreIndex,
                            lse.narrow(0, start, rows), rowGrad!.narrow(0, start, rows), col).to(hidden.dtype);
                    }
                    if (dHidden32 is not null)
                    {
                        var target = dHidden32.narrow(0, start, rows);
                        if (full) target.addmm_(dlogits, weightSlice);
                        else target.AddInPlace(dlogits.mm(weightSlice));
                    }
                    if (dWeightSlice is not null)
                    {
                        if (full) dWeightSlice.addmm_(dlogits.t(), hiddenBlock);
                        else if (oneRowTile) dWeightSlice.copy_(dlogits.t().mm(hiddenBlock));
                        else dWeightSlice.AddInPlace(dlogits.t().mm(hiddenBlock));
                    }
                }
                if (dWeightSlice is not null && !full && !oneRowTile) dWeight!.narrow(0, col, cols).copy_(dWeightSlice);
            }
        }
        if (dHidden32 is not null) dHidden = full ? dHidden32 : dHidden32.to(hidden.dtype);
        return [dHidden!, dWeight!, null!, null!, null!, null!, null!, null!, null!, null!, null!];
    }

    /// <summary>The backward from the kept [N, V] logits (CPU, float32/float64): each row block becomes dlogits in place,
    /// then dH = dlogits W and dW = dlogits^T h, one product each over all rows, rounded once as eager's.</summary>
    private static List<Tensor> KeptBackward(Tensor hidden, Tensor weight, Tensor labels, Tensor seqIndex, Tensor lse, Tensor logits,
        List<Tensor> grads, int numSequences, long ignoreIndex, int chunkRows, bool needHidden)
    {
        long n = hidden.shape[0];
        Tensor dHidden, dWeight;
        using (var scope = NewDisposeScope())
        {
            var rowGrad = ReferenceLogProbs.RowGrad(AutogradGrads.OrZeros(grads[0], n, hidden.device),
                AutogradGrads.OrZeros(grads[1], numSequences, hidden.device), labels, seqIndex, ignoreIndex);
            // block by block so that the temporaries of the softmax stay one [chunkRows, V] block
            for (long start = 0; start < n; start += chunkRows)
            {
                using var blockScope = NewDisposeScope();
                long rows = Math.Min(chunkRows, n - start);
                var block = logits.narrow(0, start, rows);
                var labelsBlock = labels.narrow(0, start, rows);
                var lseBlock = lse.narrow(0, start, rows);
                var gradBlock = rowGrad.narrow(0, start, rows);
                // in place on the kept block (float64 inputs keep float64 logits: lse and g follow their dtype)
                ReferenceLogProbs.BackwardBlock(block, labelsBlock, ignoreIndex, lseBlock.to(block.dtype), gradBlock.to(block.dtype));
            }
            dHidden = needHidden ? logits.mm(weight).MoveToOuterDisposeScope() : null!;
            dWeight = logits.t().mm(hidden).MoveToOuterDisposeScope();
        }
        Release(logits);
        return [dHidden, dWeight, null!, null!, null!, null!, null!, null!, null!, null!, null!];
    }
}

/// <summary>
/// Identity on the fused head's hidden rows whose backward runs right after the head's (it takes the head's dH) and
/// releases the wrappers of the gradients the head's backward returned (AutogradGrads' release, which otherwise waits
/// for the next custom backward, several layers later). TorchSharp hands libtorch their handles only after a backward
/// has returned, so the head cannot dispose them itself; while a wrapper lives, autograd sees the
/// gradient as shared: it copies an untied head's dW into .grad instead of taking it over, and adds a tied one to the
/// embedding's gradient out of place at the end of the backward, where the step's memory peaks; on CUDA (libtorch's
/// device thread, no dispose scope) the wrappers would wait for the collector.
/// </summary>
internal sealed class GradientReleaseFunction : TorchSharp.torch.autograd.SingleTensorFunction<GradientReleaseFunction>
{
    public override string Name => "WeakTeacher.GradientRelease";

    public override Tensor forward(TorchSharp.torch.autograd.AutogradContext ctx, params object[] vars)
    {
        ctx.set_materialize_grads(false);   // see AutogradGrads
        return ((Tensor)vars[0]).alias();
    }

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, Tensor grad)
    {
        // the head's backward has returned and libtorch holds its own references to what it returned
        AutogradGrads.ReleaseEarlier();
        AutogradGrads.Returning([grad]);   // the dH it passes on, released as any custom backward's gradient
        return [grad, null!];
    }
}
