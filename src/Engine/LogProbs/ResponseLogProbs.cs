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
        var perToken = zeros(b * t, float32, sequence.device).index_add(0, rowIndex + 1, tokens, 1).view(b, t);
        return new ResponseLogProbsResult(sequence.MoveToOuterDisposeScope(), perToken.MoveToOuterDisposeScope(), counts.MoveToOuterDisposeScope());
    }

    private static (Tensor Sequence, Tensor Tokens, Tensor RowIndex, Tensor Counts) Run(CausalLM model, Tensor inputIds,
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
        var scored = responseMask.to(device).narrow(1, 1, t - 1).ne(0);        // [B, T-1]
        var where = scored.nonzero();                                          // [N, 2] (sequence, row)
        var sequenceIndex = where.select(1, 0).contiguous();
        var rowIndex = sequenceIndex * t + where.select(1, 1);                 // row in the flattened [B*T, H]
        var rows = hidden.reshape(b * t, hidden.shape[2]).index_select(0, rowIndex);
        var labels = ids.reshape(b * t).index_select(0, rowIndex + 1);
        var (tokens, sequence) = FusedHeadLogProbs.Compute(rows, model.OutputWeight, labels, sequenceIndex, (int)b);
        // TorchSharp's custom-autograd node fills the gradient of an unused output with zeros_like(that output object),
        // so the raw outputs must outlive this call even when only the sequence sums are used: leave them to the GC
        tokens.DetachFromDisposeScope();
        var counts = scored.sum(1, type: int64);
        return (sequence, tokens, rowIndex, counts);
    }
}
