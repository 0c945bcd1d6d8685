using System.Runtime.InteropServices;
using TorchSharp;
using WeakTeacher.CudaKernels.Memory;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Data;

/// <summary>
/// Right-padded (prompt, response) sequences as int64 tensors [N, T]: <see cref="InputIds"/> (padding =
/// the tokenizer's pad id), <see cref="AttentionMask"/> (1 on real tokens), <see cref="ResponseMask"/> (1 exactly on
/// response tokens, EOS included; 0 on prompt and padding). Mask positions are the tokens themselves: the log-prob of
/// token t comes from the logits at t-1, so a consumer pairs logits[:, :-1] with ResponseMask[:, 1:].
/// <see cref="HostInputIds"/> and <see cref="HostResponseMask"/> are the CPU originals (the same storage on the CPU), so
/// row indices, labels and id checks are computed on the host without reading the device.
/// Owns its tensors; dispose it when done.
/// </summary>
public class SequenceBatch : IDisposable
{
    internal SequenceBatch(BatchTensors tensors)
    {
        InputIds = tensors.Ids;
        AttentionMask = tensors.Attention;
        ResponseMask = tensors.Response;
        HostInputIds = tensors.HostIds;
        HostResponseMask = tensors.HostResponse;
        Lengths = tensors.Lengths;
    }

    public Tensor InputIds { get; }
    public Tensor AttentionMask { get; }
    public Tensor ResponseMask { get; }
    /// <summary><see cref="InputIds"/> on the CPU.</summary>
    public Tensor HostInputIds { get; }
    /// <summary><see cref="ResponseMask"/> on the CPU.</summary>
    public Tensor HostResponseMask { get; }
    /// <summary>Real (unpadded) length of each row; the last real token of row i is at Lengths[i] - 1.</summary>
    public IReadOnlyList<int> Lengths { get; }
    public int RowCount => Lengths.Count;
    public int SequenceLength => (int)InputIds.shape[1];

    public void Dispose()
    {
        InputIds.Dispose();
        AttentionMask.Dispose();
        ResponseMask.Dispose();
        HostInputIds.Dispose();
        HostResponseMask.Dispose();
        GC.SuppressFinalize(this);
    }
}

/// <summary>An SFT batch: the loss is taken where <see cref="SequenceBatch.ResponseMask"/> is 1.</summary>
public sealed class SftBatch : SequenceBatch
{
    internal SftBatch(BatchTensors tensors) : base(tensors) { }
}

/// <summary>
/// A DPO batch laid out for one forward as TRL's concatenated_forward: rows 0..B-1 are prompt + chosen, rows B..2B-1
/// prompt + rejected, all [2B, T].
/// </summary>
public sealed class PreferenceBatch : SequenceBatch
{
    internal PreferenceBatch(BatchTensors tensors, int pairCount) : base(tensors) => PairCount = pairCount;

    /// <summary>B: the number of pairs (half the rows).</summary>
    public int PairCount { get; }
}

/// <summary>
/// Collates tokenised rows into right-padded batches. Each field is one tensor whose values are written straight into
/// its own CPU storage (no intermediate per-token allocation), then moved to <c>device</c> when one is given.
/// </summary>
public static class Collator
{
    public static PreferenceBatch CollatePreferences(IReadOnlyList<TokenizedPair> pairs, int padTokenId, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        if (pairs.Count == 0) throw new ArgumentException("cannot collate an empty batch", nameof(pairs));
        int b = pairs.Count;
        var rows = new (int[] Prompt, int[] Response)[2 * b];
        for (int i = 0; i < b; i++)
        {
            rows[i] = (pairs[i].PromptIds, pairs[i].ChosenIds);
            rows[b + i] = (pairs[i].PromptIds, pairs[i].RejectedIds);
        }
        return new PreferenceBatch(Fill(rows, padTokenId, device), b);
    }

    public static SftBatch CollateSft(IReadOnlyList<TokenizedSequence> sequences, int padTokenId, Device? device = null)
    {
        return new SftBatch(Fill(Rows(sequences), padTokenId, device));
    }

    public static SequenceBatch CollateSequences(IReadOnlyList<TokenizedSequence> sequences, int padTokenId, Device? device = null)
    {
        return new SequenceBatch(Fill(Rows(sequences), padTokenId, device));
    }

    private static (int[] Prompt, int[] Response)[] Rows(IReadOnlyList<TokenizedSequence> sequences)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        if (sequences.Count == 0) throw new ArgumentException("cannot collate an empty batch", nameof(sequences));
        var rows = new (int[] Prompt, int[] Response)[sequences.Count];
        for (int i = 0; i < rows.Length; i++) rows[i] = (sequences[i].PromptIds, sequences[i].ResponseIds);
        return rows;
    }

    private static BatchTensors Fill((int[] Prompt, int[] Response)[] rows, int padTokenId, Device? device)
    {
        int width = 0;
        var lengths = new int[rows.Length];
        for (int r = 0; r < rows.Length; r++)
        {
            lengths[r] = rows[r].Prompt.Length + rows[r].Response.Length;
            if (rows[r].Response.Length == 0) throw new ArgumentException($"row {r} has no response tokens");
            width = Math.Max(width, lengths[r]);
        }
        var shape = new long[] { rows.Length, width };
        var ids = empty(shape, ScalarType.Int64);
        var attention = empty(shape, ScalarType.Int64);
        var response = empty(shape, ScalarType.Int64);
        var idSpan = MemoryMarshal.Cast<byte, long>(ids.bytes);
        var attentionSpan = MemoryMarshal.Cast<byte, long>(attention.bytes);
        var responseSpan = MemoryMarshal.Cast<byte, long>(response.bytes);
        for (int r = 0; r < rows.Length; r++)
        {
            var (prompt, reply) = rows[r];
            int offset = r * width, p = prompt.Length, n = lengths[r];
            for (int t = 0; t < p; t++) idSpan[offset + t] = prompt[t];
            for (int t = 0; t < reply.Length; t++) idSpan[offset + p + t] = reply[t];
            idSpan.Slice(offset + n, width - n).Fill(padTokenId);
            attentionSpan.Slice(offset, n).Fill(1);
            attentionSpan.Slice(offset + n, width - n).Clear();
            responseSpan.Slice(offset, p).Clear();
            responseSpan.Slice(offset + p, reply.Length).Fill(1);
            responseSpan.Slice(offset + n, width - n).Clear();
        }
        // off the CPU, each goes up through the pinned pool asynchronously (HostTransfers.ToDevice); ids and the
        // response mask stay on the host too
        var target = device ?? CPU;
        var onDevice = HostTransfers.ToDevice(attention, target);
        attention.Dispose();
        return new BatchTensors(HostTransfers.ToDevice(ids, target), onDevice, HostTransfers.ToDevice(response, target), ids, response, lengths);
    }
}

/// <summary>A collated batch's tensors: on the batch's device, and the CPU originals of ids and response mask.</summary>
internal sealed record BatchTensors(Tensor Ids, Tensor Attention, Tensor Response, Tensor HostIds, Tensor HostResponse, int[] Lengths);
