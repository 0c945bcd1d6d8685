using TorchSharp;
using WeakTeacher.CudaKernels;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>Masks, positions and the attention call shared by the model families.</summary>
internal static class Attention
{
    /// <summary>
    /// Boolean attention mask [B, 1, T, P + T] (true = may attend) for <paramref name="queryLength"/> new tokens after
    /// P cached ones. <paramref name="attentionMask"/> [B, P + T] holds 0 on padding and, on real tokens, either 1 or the
    /// segment id 1..k of a packed row (sequences laid side by side, numbered left to right, as OpenRLHF's packed
    /// attention_mask): key j is visible to query i when it is causal (j &lt;= P + i), real, and in the query's segment.
    /// For a 0/1 mask that is exactly causal AND key padding. Each query also sees its own key, so rows of pure padding
    /// (left padding) stay finite instead of NaN; their outputs are never used. On CUDA this dense mask is what SDPA
    /// gets for packed rows too (the fallback the issue allows: no varlen kernel is bound here).
    /// </summary>
    public static Tensor CausalPaddingMask(Tensor attentionMask, long queryLength)
    {
        using var scope = NewDisposeScope();
        long total = attentionMask.shape[1];
        long past = total - queryLength;
        var device = attentionMask.device;
        var query = ScalarOps.Arange(past, total, int64, device).unsqueeze(1);   // [T, 1] absolute positions of the queries
        var key = ScalarOps.Arange(0, total, int64, device).unsqueeze(0); // [1, S]
        var causal = key.le(query);                                     // [T, S]
        var self = key.eq(query);
        var segments = attentionMask.to(int64);
        var keySegment = segments.unsqueeze(1).unsqueeze(1);             // [B, 1, 1, S]
        var querySegment = segments.narrow(1, past, queryLength).unsqueeze(1).unsqueeze(3); // [B, 1, T, 1]
        // a padding query (segment 0) keeps today's rule (every real key before it); a real one sees its own segment only
        var sameSegment = keySegment.eq(querySegment).logical_or(querySegment.Eq(0L));
        var visible = keySegment.Ne(0L).logical_and(sameSegment);        // [B, 1, T, S]
        return causal.unsqueeze(0).unsqueeze(0).logical_and(visible).logical_or(self).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Position ids [B, T] of the new tokens: the index of each real token within its segment (see
    /// <see cref="CausalPaddingMask"/>), so positions restart at 0 for every sequence of a packed row. For a 0/1 mask
    /// (one segment) it is attention_mask cumsum - 1, as Hugging Face computes positions for padded batches; padding
    /// positions get 0.
    /// </summary>
    public static Tensor Positions(Tensor attentionMask, long queryLength)
    {
        using var scope = NewDisposeScope();
        var segments = attentionMask.to(int64);
        var real = segments.Ne(0L).to(int64);
        var counted = real.cumsum(1);                                  // real tokens up to and including t
        // a segment starts where its id exceeds every id before it (ids grow left to right; padding between keeps them)
        var before = cat([zeros_like(segments.narrow(1, 0, 1)), segments.narrow(1, 0, segments.shape[1] - 1)], 1).cummax(1).values;
        var starts = segments.gt(before);
        // real tokens before the current segment: the count just before its start, carried forward by cummax
        var offset = where(starts, counted.Sub(1L), zeros_like(counted)).cummax(1).values;
        var positions = ((counted - offset) * real).Sub(1L).ClampMin(0L);
        long total = attentionMask.shape[1];
        return positions.narrow(1, total - queryLength, queryLength).MoveToOuterDisposeScope();
    }

    /// <summary>[B, T, H*D] -> [B, H, T, D].</summary>
    public static Tensor SplitHeads(Tensor x, long heads, long headDim)
        => x.view(x.shape[0], x.shape[1], heads, headDim).transpose(1, 2);

    /// <summary>[B, H, T, D] -> [B, T, H*D].</summary>
    public static Tensor MergeHeads(Tensor x)
        => x.transpose(1, 2).contiguous().view(x.shape[0], x.shape[2], x.shape[1] * x.shape[3]);

    /// <summary>
    /// softmax(q k^T / sqrt(D) + mask) v with keys/values of <paramref name="kvHeads"/> heads repeated for grouped-query
    /// attention (Hugging Face's repeat_kv), dropout on the probabilities when training.
    /// </summary>
    public static Tensor ScaledDotProduct(Tensor query, Tensor key, Tensor value, Tensor mask, double dropout)
    {
        long groups = query.shape[1] / key.shape[1];
        if (groups > 1)
        {
            key = key.repeat_interleave(groups, 1);
            value = value.repeat_interleave(groups, 1);
        }
        return nn.functional.scaled_dot_product_attention(query, key, value, mask, dropout, false);
    }
}
