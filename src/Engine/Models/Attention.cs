using TorchSharp;
using WeakTeacher.CudaKernels;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>Masks, positions and the attention call shared by the model families.</summary>
internal static class Attention
{
    /// <summary>
    /// Boolean attention mask [B, 1, T, P + T] (true = may attend) for <paramref name="queryLength"/> new tokens after
    /// P cached ones: causal (key j visible to query i when j &lt;= P + i) and key padding (attentionMask[j] == 1).
    /// Each query also sees its own key, so rows of pure padding (left padding) stay finite instead of NaN; their
    /// outputs are never used.
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
        var keyIsReal = attentionMask.Ne(0).unsqueeze(1).unsqueeze(1);  // [B, 1, 1, S]
        return causal.unsqueeze(0).unsqueeze(0).logical_and(keyIsReal).logical_or(self).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Position ids [B, T] of the new tokens, counted over real tokens only (attention_mask cumsum - 1), as Hugging Face
    /// computes them for padded batches; padding positions get 0.
    /// </summary>
    public static Tensor Positions(Tensor attentionMask, long queryLength)
    {
        using var scope = NewDisposeScope();
        var mask = attentionMask.to(int64);
        var positions = (mask.cumsum(1) * mask).Sub(1L).ClampMin(0L);
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
