using System.Runtime.InteropServices;
using TorchSharp;
using WeakTeacher.CudaKernels.Memory;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Data;

/// <summary>
/// (prompt, response) sequences as int64 tensors [N, T]: <see cref="InputIds"/> (padding = the tokenizer's pad id),
/// <see cref="AttentionMask"/> (0 on padding; on real tokens 1, or in a packed batch the 1-based segment id of the
/// sequence within its row), <see cref="ResponseMask"/> (1 exactly on response tokens, EOS included; 0 on prompt and
/// padding). Mask positions are the tokens themselves: the log-prob of token t comes from the logits at t-1, so a
/// consumer pairs logits[:, :-1] with ResponseMask[:, 1:] (within one sequence).
/// A padded batch holds sequence i right-padded in row i; a packed one (<see cref="IsPacked"/>, padding_free) lays
/// several sequences side by side in a row, each where <see cref="Sequences"/> says.
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
        Sequences = tensors.Sequences;
        IsPacked = tensors.Packed;
    }

    public Tensor InputIds { get; }
    public Tensor AttentionMask { get; }
    public Tensor ResponseMask { get; }
    /// <summary><see cref="InputIds"/> on the CPU.</summary>
    public Tensor HostInputIds { get; }
    /// <summary><see cref="ResponseMask"/> on the CPU.</summary>
    public Tensor HostResponseMask { get; }
    /// <summary>Real (unpadded) tokens of each row, filled from its start; the last real token of row i is at Lengths[i] - 1.</summary>
    public IReadOnlyList<int> Lengths { get; }
    /// <summary>Where each sequence lies, in sequence order (for a padded batch sequence i is row i from column 0).</summary>
    public IReadOnlyList<SequenceSpan> Sequences { get; }
    /// <summary>Sequences share rows (padding-free packing); false for a right-padded batch.</summary>
    public bool IsPacked { get; }
    public int RowCount => Lengths.Count;
    public int SequenceCount => Sequences.Count;
    public int SequenceLength => (int)InputIds.shape[1];
    /// <summary>Share of the batch's [rows x width] cells that are padding.</summary>
    public double PaddingShare => 1.0 - (double)Lengths.Sum() / ((long)RowCount * SequenceLength);

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

/// <summary>Sequence <c>i</c> of a batch: tokens [Start, Start + Length) of row <see cref="Row"/>.</summary>
public readonly record struct SequenceSpan(int Row, int Start, int Length);

/// <summary>
/// A DPO batch laid out for one forward as TRL's concatenated_forward: sequences 0..B-1 are prompt + chosen, sequences
/// B..2B-1 prompt + rejected (rows [2B, T] when padded; when packed the order is by sequence index, not row).
/// </summary>
public sealed class PreferenceBatch : SequenceBatch
{
    internal PreferenceBatch(BatchTensors tensors, int pairCount) : base(tensors) => PairCount = pairCount;

    /// <summary>B: the number of pairs (half the sequences).</summary>
    public int PairCount { get; }
}

/// <summary>
/// Collates tokenised rows into right-padded batches, or with <c>packed</c> into padding-free ones: the sequences go
/// first-fit-decreasing into rows as wide as the longest of them, so padding is only what the rows' ends leave. Each
/// field is one tensor whose values are written straight into its own CPU storage (no intermediate per-token
/// allocation), then moved to <c>device</c> when one is given.
/// </summary>
public static class Collator
{
    public static PreferenceBatch CollatePreferences(IReadOnlyList<TokenizedPair> pairs, int padTokenId, Device? device = null, bool packed = false)
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
        return new PreferenceBatch(Fill(rows, padTokenId, device, packed), b);
    }

    public static SftBatch CollateSft(IReadOnlyList<TokenizedSequence> sequences, int padTokenId, Device? device = null, bool packed = false)
    {
        return new SftBatch(Fill(Rows(sequences), padTokenId, device, packed));
    }

    public static SequenceBatch CollateSequences(IReadOnlyList<TokenizedSequence> sequences, int padTokenId, Device? device = null, bool packed = false)
    {
        return new SequenceBatch(Fill(Rows(sequences), padTokenId, device, packed));
    }

    /// <summary>
    /// Where each sequence of <paramref name="lengths"/> goes. Padded: sequence i in row i. Packed: first-fit decreasing
    /// (longest first, ties by index) into rows of the longest length; within a row the sequences keep that placing
    /// order, so segment ids grow left to right as <see cref="Models.Attention"/> expects.
    /// </summary>
    public static (SequenceSpan[] Spans, int[] RowLengths, int Width) Layout(IReadOnlyList<int> lengths, bool packed)
    {
        int n = lengths.Count;
        var spans = new SequenceSpan[n];
        int width = 0;
        for (int i = 0; i < n; i++) width = Math.Max(width, lengths[i]);
        if (!packed)
        {
            for (int i = 0; i < n; i++) spans[i] = new SequenceSpan(i, 0, lengths[i]);
            return (spans, lengths.ToArray(), width);
        }
        var order = Enumerable.Range(0, n).OrderByDescending(i => lengths[i]).ThenBy(i => i).ToArray();
        var rowLengths = new List<int>();
        foreach (int i in order)
        {
            int row = 0;
            while (row < rowLengths.Count && rowLengths[row] + lengths[i] > width) row++;
            if (row == rowLengths.Count) rowLengths.Add(0);
            spans[i] = new SequenceSpan(row, rowLengths[row], lengths[i]);
            rowLengths[row] += lengths[i];
        }
        return (spans, rowLengths.ToArray(), width);
    }

    private static (int[] Prompt, int[] Response)[] Rows(IReadOnlyList<TokenizedSequence> sequences)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        if (sequences.Count == 0) throw new ArgumentException("cannot collate an empty batch", nameof(sequences));
        var rows = new (int[] Prompt, int[] Response)[sequences.Count];
        for (int i = 0; i < rows.Length; i++) rows[i] = (sequences[i].PromptIds, sequences[i].ResponseIds);
        return rows;
    }

    private static BatchTensors Fill((int[] Prompt, int[] Response)[] rows, int padTokenId, Device? device, bool packed)
    {
        var lengths = new int[rows.Length];
        for (int r = 0; r < rows.Length; r++)
        {
            lengths[r] = rows[r].Prompt.Length + rows[r].Response.Length;
            if (rows[r].Response.Length == 0) throw new ArgumentException($"row {r} has no response tokens");
        }
        var (spans, rowLengths, width) = Layout(lengths, packed);
        var shape = new long[] { rowLengths.Length, width };
        var ids = empty(shape, ScalarType.Int64);
        var attention = zeros(shape, ScalarType.Int64);
        var response = zeros(shape, ScalarType.Int64);
        var idSpan = MemoryMarshal.Cast<byte, long>(ids.bytes);
        var attentionSpan = MemoryMarshal.Cast<byte, long>(attention.bytes);
        var responseSpan = MemoryMarshal.Cast<byte, long>(response.bytes);
        idSpan.Fill(padTokenId);
        // segment id of each sequence within its row: 1, 2, ... left to right (a padded row has one: 1)
        var segmentsInRow = new int[rowLengths.Length];
        foreach (var (i, span) in spans.Index().OrderBy(x => x.Item.Row).ThenBy(x => x.Item.Start))
        {
            var (prompt, reply) = rows[i];
            int offset = span.Row * width + span.Start, p = prompt.Length;
            for (int t = 0; t < p; t++) idSpan[offset + t] = prompt[t];
            for (int t = 0; t < reply.Length; t++) idSpan[offset + p + t] = reply[t];
            attentionSpan.Slice(offset, span.Length).Fill(++segmentsInRow[span.Row]);
            responseSpan.Slice(offset + p, reply.Length).Fill(1);
        }
        // off the CPU, each goes up through the pinned pool asynchronously (HostTransfers.ToDevice); ids and the
        // response mask stay on the host too
        var target = device ?? CPU;
        var onDevice = HostTransfers.ToDevice(attention, target);
        attention.Dispose();
        return new BatchTensors(HostTransfers.ToDevice(ids, target), onDevice, HostTransfers.ToDevice(response, target), ids, response,
            rowLengths, spans, packed);
    }
}

/// <summary>A collated batch's tensors: on the batch's device, and the CPU originals of ids and response mask.</summary>
internal sealed record BatchTensors(Tensor Ids, Tensor Attention, Tensor Response, Tensor HostIds, Tensor HostResponse, int[] Lengths,
    SequenceSpan[] Sequences, bool Packed);
