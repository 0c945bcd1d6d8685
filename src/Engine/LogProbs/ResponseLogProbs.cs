using TorchSharp;
using WeakTeacher.CudaKernels;
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
    {
        using var scope = NewDisposeScope();
        var (sequence, tokens, rowIndex, counts, rows) = RunWithRows(model, inputIds, attentionMask, responseMask);
        long b = inputIds.shape[0], t = inputIds.shape[1];
        var sequenceIndex = rowIndex.Div(t, RoundingMode.floor);
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
        return new ResponseLogProbsDetail(sequence.MoveToOuterDisposeScope(), tokens, sequenceIndex.MoveToOuterDisposeScope(),
            counts.MoveToOuterDisposeScope(), logitSums.MoveToOuterDisposeScope(), wpo ? wpoLog.MoveToOuterDisposeScope() : null);
    }

    private static (Tensor Sequence, Tensor Tokens, Tensor RowIndex, Tensor Counts) Run(CausalLM model, Tensor inputIds,
        Tensor attentionMask, Tensor responseMask)
    {
        var (sequence, tokens, rowIndex, counts, _) = RunWithRows(model, inputIds, attentionMask, responseMask);
        return (sequence, tokens, rowIndex, counts);
    }

    private static (Tensor Sequence, Tensor Tokens, Tensor RowIndex, Tensor Counts, Tensor Rows) RunWithRows(CausalLM model, Tensor inputIds,
        Tensor attentionMask, Tensor responseMask)
    {
        if (inputIds.dim() != 2)
            throw new ArgumentException($"input_ids must be [B, T], got [{string.Join(", ", inputIds.shape)}]", nameof(inputIds));
        if (!attentionMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"attention_mask [{string.Join(", ", attentionMask.shape)}] must match input_ids [{string.Join(", ", inputIds.shape)}]", nameof(attentionMask));
        if (!responseMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"response_mask [{string.Join(", ", responseMask.shape)}] must match input_ids [{string.Join(", ", inputIds.shape)}]", nameof(responseMask));
        long b = inputIds.shape[0], t = inputIds.shape[1];
        var device = model.Device;
        var ids = inputIds.to(int64).to(device);
        var mask = attentionMask.to(device);
        var hidden = model.ForwardHidden(ids, mask);                          // [B, T, H]

        // rows t = 0 .. T-2 predict token t + 1; keep those whose label is a response token
        var scored = responseMask.to(device).narrow(1, 1, t - 1).Ne(0);        // [B, T-1]
        var where = scored.nonzero();                                          // [N, 2] (sequence, row)
        var sequenceIndex = where.select(1, 0).contiguous();
        var rowIndex = sequenceIndex.Mul(t).Add(where.select(1, 1));                // row in the flattened [B*T, H]
        var rows = hidden.reshape(b * t, hidden.shape[2]).index_select(0, rowIndex);
        var labels = ids.reshape(b * t).index_select(0, rowIndex.Add(1L));
        var (tokens, sequence) = FusedHeadLogProbs.Compute(rows, model.OutputWeight, labels, sequenceIndex, (int)b);
        // TorchSharp's custom-autograd node fills the gradient of an unused output with zeros_like(that output object),
        // so the raw outputs must outlive this call even when only the sequence sums are used: leave them to the GC
        tokens.DetachFromDisposeScope();
        var counts = scored.sum(1, type: int64);
        return (sequence, tokens, rowIndex, counts, rows);
    }
}
