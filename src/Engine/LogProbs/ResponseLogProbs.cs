using System.Runtime.InteropServices;
using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.CudaKernels.Memory;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Models;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.LogProbs;

/// <summary>Per-sequence log-probs with their per-token parts, for metrics.</summary>
/// <param name="SequenceLogps">[B] float32: sum of the response tokens' log-probs (differentiable).</param>
/// <param name="TokenLogps">[B, T] float32: log p(ids[t] | ids[&lt;t]) at response positions t, 0 elsewhere (differentiable).</param>
/// <param name="TokenCounts">[B] int64: number of response tokens scored in each sequence.</param>
public sealed record ResponseLogProbsResult(Tensor SequenceLogps, Tensor TokenLogps, Tensor TokenCounts) : IDisposable
{
    public void Dispose()
    {
        SequenceLogps.Dispose();
        TokenLogps.Dispose();
        TokenCounts.Dispose();
    }
}

/// <summary>Per-sequence log-probs with the per-token terms TRL's DPO variants need, one row per scored token.</summary>
/// <param name="SequenceLogps">[B] float32 sum of the response tokens' log-probs (differentiable).</param>
/// <param name="TokenLogps">[N] float32 log-prob of each scored token (differentiable), sequences in order, tokens in time order.</param>
/// <param name="SequenceIndex">[N] int64 sequence of each scored token.</param>
/// <param name="TokenCounts">[B] int64 scored tokens per sequence.</param>
/// <param name="LogitSums">[B] float32 sum over the sequence's scored positions of the mean logit over the vocabulary
/// (TRL's logits/chosen numerator; exact as h . mean(W), no logits built). Detached.</param>
/// <param name="WpoLogWeights">[B] float32 WPO's mean over tokens of log p - log sum_v p_v^2 (null unless asked). Detached.</param>
public sealed record ResponseLogProbsDetail(Tensor SequenceLogps, Tensor TokenLogps, Tensor SequenceIndex, Tensor TokenCounts,
    Tensor LogitSums, Tensor? WpoLogWeights) : IDisposable
{
    /// <summary>
    /// [B] log-probs summed over the tokens past the shared length of each pair (LD-DPO's verbose tail), for a batch laid
    /// out as [chosen; rejected] of <paramref name="pairs"/> pairs: a token at position k (1-based) of its response is
    /// in the tail when k &gt; min(chosen length, rejected length) (TRL v1.9.0 dpo_trainer.py L1204-1216).
    /// </summary>
    public Tensor PairTailLogps(int pairs)
    {
        using var scope = NewDisposeScope();
        var counts = TokenCounts;
        var starts = counts.cumsum(0) - counts;                                         // first row of each sequence
        var position = (ScalarOps.Arange(0, TokenLogps.shape[0], int64, TokenLogps.device) - starts.index_select(0, SequenceIndex)).Add(1L);
        var shared = minimum(counts.narrow(0, 0, pairs), counts.narrow(0, pairs, pairs));
        var sharedPerRow = cat([shared, shared]).index_select(0, SequenceIndex);
        var tail = SequenceSums.Compute(TokenLogps * position.gt(sharedPerRow).to(float32), SequenceIndex, (int)counts.shape[0]);
        return tail.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        SequenceLogps.Dispose();
        TokenLogps.Dispose();
        SequenceIndex.Dispose();
        TokenCounts.Dispose();
        LogitSums.Dispose();
        WpoLogWeights?.Dispose();
    }
}

/// <summary>
/// Log-probabilities of given responses under a model: the engine's hot path (DPO policy and reference log-probs,
/// labelling, evaluation, the gRPC host). Only response positions go through the output head, fused with the
/// log-softmax and the label gather (<see cref="FusedHeadLogProbs"/>), so no [B, T, V] logits tensor is ever built.
/// </summary>
public static class ResponseLogProbs
{
    /// <summary>
    /// [B] float32: sum over t &gt;= 1 of log p(ids[t] | ids[&lt;t]) where response_mask[t] != 0. Differentiable with
    /// respect to the model's parameters (for DPO); call under no_grad for reference / labelling passes.
    /// </summary>
    /// <param name="inputIds">[B, T] int64 prompt + response token ids (padding on either side).</param>
    /// <param name="attentionMask">[B, T] 1 on real tokens, 0 on padding.</param>
    /// <param name="responseMask">[B, T] 1 on the tokens to score (normally the response tokens), 0 elsewhere.</param>
    public static Tensor Compute(CausalLM model, Tensor inputIds, Tensor attentionMask, Tensor responseMask)
    {
        using var scope = NewDisposeScope();
        var (sequence, _, _, _) = Run(model, inputIds, attentionMask, responseMask);
        return sequence.MoveToOuterDisposeScope();
    }

    /// <summary>As <see cref="Compute(CausalLM, Tensor, Tensor, Tensor)"/> for a collated batch: its host-side ids and
    /// response mask give the scored rows without reading the device.</summary>
    public static Tensor Compute(CausalLM model, SequenceBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        using var scope = NewDisposeScope();
        var (sequence, _, _, _) = Run(model, batch.InputIds, batch.AttentionMask, batch.ResponseMask, batch);
        return sequence.MoveToOuterDisposeScope();
    }

    /// <summary>As <see cref="Compute"/>, also returning the per-token log-probs [B, T] and response token counts [B].</summary>
    public static ResponseLogProbsResult ComputeWithTokens(CausalLM model, Tensor inputIds, Tensor attentionMask, Tensor responseMask)
    {
        using var scope = NewDisposeScope();
        var (sequence, tokens, rowIndex, counts) = Run(model, inputIds, attentionMask, responseMask);
        long b = inputIds.shape[0], t = inputIds.shape[1];
        // token at position t (the label) gets the log-prob predicted from row t - 1
        var perToken = zeros(b * t, float32, sequence.device).index_add(0, rowIndex.Add(1L), tokens, ScalarOps.One).view(b, t);
        return new ResponseLogProbsResult(sequence.MoveToOuterDisposeScope(), perToken.MoveToOuterDisposeScope(), counts.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// As <see cref="Compute"/>, with the per-token terms of <see cref="ResponseLogProbsDetail"/>. The mean logit of a
    /// row is h . mean_v(W) (the head has no bias), so TRL's logits metrics cost one [N, H] x [H] product. WPO's
    /// log sum_v p_v^2 needs each row's logsumexp of logits and of 2 * logits: with <paramref name="wpo"/> the rows go
    /// through the head once more, without gradient, in blocks of <see cref="FusedHeadLogProbs.AutoChunkRows"/>.
    /// </summary>
    public static ResponseLogProbsDetail ComputeDetailed(CausalLM model, Tensor inputIds, Tensor attentionMask, Tensor responseMask, bool wpo = false)
        => Detailed(model, inputIds, attentionMask, responseMask, wpo, null);

    /// <summary>As <see cref="ComputeDetailed(CausalLM, Tensor, Tensor, Tensor, bool)"/> for a collated batch (scored rows from its host-side tensors).</summary>
    public static ResponseLogProbsDetail ComputeDetailed(CausalLM model, SequenceBatch batch, bool wpo = false)
    {
        ArgumentNullException.ThrowIfNull(batch);
        return Detailed(model, batch.InputIds, batch.AttentionMask, batch.ResponseMask, wpo, batch);
    }

    private static ResponseLogProbsDetail Detailed(CausalLM model, Tensor inputIds, Tensor attentionMask, Tensor responseMask, bool wpo, SequenceBatch? batch)
    {
        using var scope = NewDisposeScope();
        var (sequence, tokens, sequenceIndex, counts, rows) = RunWithRows(model, inputIds, attentionMask, responseMask, batch);
        long b = counts.shape[0];
        Tensor logitSums, wpoLog;
        using (no_grad())
        {
            var weight = model.OutputWeight.detach();
            var detachedRows = rows.detach();
            var meanLogit = detachedRows.to(float32).matmul(weight.to(float32).mean([0]));                 // [N]
            // deterministic sums (index_add adds with atomics on CUDA)
            logitSums = SequenceSums.Compute(meanLogit.contiguous(), sequenceIndex, (int)b);
            wpoLog = null!;
            if (wpo)
            {
                // Eq. (2) of WPO (TRL L1565-1576): mean over tokens of log p(y_t) - log sum_v p_v^2, where
                // log sum_v p_v^2 = logsumexp(2 z) - 2 logsumexp(z)
                long n = detachedRows.shape[0];
                var denominator = empty(n, float32, sequence.device);
                int block = FusedHeadLogProbs.AutoChunkRows(n, weight.shape[0]);
                for (long start = 0; start < n; start += block)
                {
                    using var blockScope = NewDisposeScope();
                    long count = Math.Min(block, n - start);
                    var logits = detachedRows.narrow(0, start, count).matmul(weight.t()).to(float32);
                    denominator.narrow(0, start, count).copy_(logits.Mul(2L).logsumexp(1) - logits.logsumexp(1).Mul(2L));
                }
                var aligned = tokens.detach() - denominator;
                wpoLog = SequenceSums.Compute(aligned.contiguous(), sequenceIndex, (int)b) / counts.ClampMin(1L).to(float32);
            }
        }
        return new ResponseLogProbsDetail(sequence.MoveToOuterDisposeScope(), tokens.MoveToOuterDisposeScope(), sequenceIndex.MoveToOuterDisposeScope(),
            counts.MoveToOuterDisposeScope(), logitSums.MoveToOuterDisposeScope(), wpo ? wpoLog.MoveToOuterDisposeScope() : null);
    }

    private static (Tensor Sequence, Tensor Tokens, Tensor RowIndex, Tensor Counts) Run(CausalLM model, Tensor inputIds,
        Tensor attentionMask, Tensor responseMask, SequenceBatch? batch = null)
    {
        var (sequence, tokens, _, counts, _, rowIndex) = RunWithRowIndex(model, inputIds, attentionMask, responseMask, batch);
        return (sequence, tokens, rowIndex, counts);
    }

    /// <summary>The scored rows of a batch: rows t = 0 .. T-2 predict token t + 1, kept where that token is a response token.</summary>
    private sealed record ScoredRows(Tensor SequenceIndex, Tensor RowIndex, Tensor Labels, Tensor Counts);

    private static ScoredRows Rows(Tensor ids, Tensor responseMask)
    {
        long b = ids.shape[0], t = ids.shape[1];
        var scored = responseMask.narrow(1, 1, t - 1).Ne(0);                   // [B, T-1]
        var where = scored.nonzero();                                          // [N, 2] (sequence, row)
        var sequenceIndex = where.select(1, 0).contiguous();
        var rowIndex = sequenceIndex.Mul(t).Add(where.select(1, 1));           // row in the flattened [B*T, H]
        var labels = ids.reshape(b * t).index_select(0, rowIndex.Add(1L));
        return new ScoredRows(sequenceIndex, rowIndex, labels, scored.sum(1, type: int64));
    }

    /// <summary>
    /// The scored rows of a collated batch from its layout, on the host: for each sequence (in order) the positions t of
    /// its span whose token t + 1 is a response token of the same sequence, so no scored row crosses from one packed
    /// sequence into the next, and the rows come ordered by (sequence, position) as <see cref="ResponseLogProbsDetail"/>
    /// promises. For a padded batch these are exactly the rows of <see cref="Rows(Tensor, Tensor)"/>.
    /// </summary>
    private static ScoredRows Rows(SequenceBatch batch, Tensor hostIds)
    {
        int width = batch.SequenceLength;
        var response = batch.HostResponseMask.contiguous();
        var responseSpan = MemoryMarshal.Cast<byte, long>(response.bytes);
        var ids = hostIds.contiguous();
        var idSpan = MemoryMarshal.Cast<byte, long>(ids.bytes);
        int total = 0;
        foreach (var span in batch.Sequences)
            for (int t = span.Start + 1; t < span.Start + span.Length; t++)
                if (responseSpan[span.Row * width + t] != 0) total++;
        var sequenceIndex = new long[total];
        var rowIndex = new long[total];
        var labels = new long[total];
        var counts = new long[batch.SequenceCount];
        int k = 0;
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            var span = batch.Sequences[s];
            for (int t = span.Start + 1; t < span.Start + span.Length; t++)
            {
                int at = span.Row * width + t;
                if (responseSpan[at] == 0) continue;
                sequenceIndex[k] = s;
                rowIndex[k] = at - 1;                                          // predicted from the token before it
                labels[k] = idSpan[at];
                k++;
                counts[s]++;
            }
        }
        if (!ReferenceEquals(response, batch.HostResponseMask)) response.Dispose();
        if (!ReferenceEquals(ids, hostIds)) ids.Dispose();
        return new ScoredRows(tensor(sequenceIndex), tensor(rowIndex), tensor(labels), tensor(counts));
    }

    /// <summary>Every id of the host-side batch in [0, vocab): one clear error instead of a device-side assert.</summary>
    private static void CheckIds(Tensor hostIds, long vocab)
    {
        var bad = hostIds.Lt(0L).logical_or(hostIds.Ge(vocab));
        if (!bad.any().item<bool>()) return;
        var at = bad.nonzero()[0];
        long row = at[0].item<long>(), column = at[1].item<long>();
        throw new ArgumentOutOfRangeException("inputIds",
            $"input_ids[{row}, {column}] = {hostIds[row, column].item<long>()} is outside the model's vocabulary [0, {vocab})");
    }

    /// <summary>
    /// The forward and the fused head over the scored rows. The row indices, labels and counts come from the host-side
    /// tensors (<paramref name="batch"/>'s, or the inputs themselves when they are on the CPU) and are validated there,
    /// before anything is queued on the device: the hot path reads nothing back from the device (no nonzero() on a device
    /// mask, no device-side index check). Inputs only on the device take the device path (one nonzero() sync).
    /// </summary>
    private static (Tensor Sequence, Tensor Tokens, Tensor SequenceIndex, Tensor Counts, Tensor Rows) RunWithRows(CausalLM model, Tensor inputIds,
        Tensor attentionMask, Tensor responseMask, SequenceBatch? batch = null)
    {
        var (sequence, tokens, sequenceIndex, counts, rows, _) = RunWithRowIndex(model, inputIds, attentionMask, responseMask, batch);
        return (sequence, tokens, sequenceIndex, counts, rows);
    }

    private static (Tensor Sequence, Tensor Tokens, Tensor SequenceIndex, Tensor Counts, Tensor Rows, Tensor RowIndex) RunWithRowIndex(CausalLM model,
        Tensor inputIds, Tensor attentionMask, Tensor responseMask, SequenceBatch? batch)
    {
        if (inputIds.dim() != 2)
            throw new ArgumentException($"input_ids must be [B, T], got [{string.Join(", ", inputIds.shape)}]", nameof(inputIds));
        if (!attentionMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"attention_mask [{string.Join(", ", attentionMask.shape)}] must match input_ids [{string.Join(", ", inputIds.shape)}]", nameof(attentionMask));
        if (!responseMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"response_mask [{string.Join(", ", responseMask.shape)}] must match input_ids [{string.Join(", ", inputIds.shape)}]", nameof(responseMask));
        // sequences, not rows: a packed batch has fewer rows than sequences
        long b = batch?.SequenceCount ?? inputIds.shape[0];
        var device = model.Device;
        long vocab = model.OutputWeight.shape[0];
        Tensor? hostIds = batch?.HostInputIds ?? (inputIds.device_type == DeviceType.CPU ? inputIds : null);
        Tensor? hostResponse = batch?.HostResponseMask ?? (responseMask.device_type == DeviceType.CPU ? responseMask : null);
        ScoredRows scored;
        Tensor ids, mask;
        bool onHost = hostIds is not null && hostResponse is not null;
        if (onHost)
        {
            var host = hostIds!.to(int64);
            CheckIds(host, vocab);
            var rows = batch is not null ? Rows(batch, host) : Rows(host, hostResponse!);
            scored = new ScoredRows(Up(rows.SequenceIndex), Up(rows.RowIndex), Up(rows.Labels), Up(rows.Counts));
            bool there = inputIds.device_type == device.type && inputIds.device_index == device.index;
            ids = there ? inputIds.to(int64) : Up(host);
            mask = attentionMask.device_type == DeviceType.CPU ? Up(attentionMask) : attentionMask.to(device);
        }
        else
        {
            ids = inputIds.to(int64).to(device);
            mask = attentionMask.to(device);
            scored = Rows(ids, responseMask.to(device));
        }
        Tensor Up(Tensor host) => HostTransfers.ToDevice(host.contiguous(), device);

        var hidden = model.ForwardHidden(ids, mask);                          // [B, T, H]
        var rowsHidden = hidden.reshape(-1, hidden.shape[2]).index_select(0, scored.RowIndex);
        // host-derived indices are valid by construction (ids checked above, rows from the masks' own shape)
        var (tokens, sequence) = FusedHeadLogProbs.Compute(rowsHidden, model.OutputWeight, scored.Labels, scored.SequenceIndex, (int)b,
            checkIndices: !onHost);
        // the per-token output is disposed with the caller's scope like every other tensor: the fused head's autograd
        // function turns materialize_grads off, so TorchSharp never reads an output object at backward time (AutogradGrads)
        return (sequence, tokens, scored.SequenceIndex, scored.Counts, rowsHidden, scored.RowIndex);
    }
}
