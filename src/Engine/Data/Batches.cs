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
/// first-fit-decreasing into the rows of least work for a model of <c>hiddenSize</c> (<see cref="Layout"/>), which leave
/// almost no padding. Each field is one tensor whose values are written straight into its own CPU storage (no
/// intermediate per-token allocation), then moved to <c>device</c> when one is given.
/// </summary>
public static class Collator
{
    public static PreferenceBatch CollatePreferences(IReadOnlyList<TokenizedPair> pairs, int padTokenId, Device? device = null, bool packed = false,
        int hiddenSize = 0)
    {
        return new PreferenceBatch(Fill(PairRows(pairs), padTokenId, device, packed, hiddenSize), pairs.Count);
    }

    /// <summary>The pairs packed into at most <paramref name="rows"/> rows (<see cref="PackInto"/>), for benchmarks that
    /// compare row counts with <see cref="Layout"/>'s choice.</summary>
    internal static PreferenceBatch CollatePreferences(IReadOnlyList<TokenizedPair> pairs, int padTokenId, Device? device, int rows)
    {
        return new PreferenceBatch(Fill(PairRows(pairs), padTokenId, device, true, 0, rows), pairs.Count);
    }

    public static SftBatch CollateSft(IReadOnlyList<TokenizedSequence> sequences, int padTokenId, Device? device = null, bool packed = false,
        int hiddenSize = 0)
    {
        return new SftBatch(Fill(Rows(sequences), padTokenId, device, packed, hiddenSize));
    }

    public static SequenceBatch CollateSequences(IReadOnlyList<TokenizedSequence> sequences, int padTokenId, Device? device = null, bool packed = false,
        int hiddenSize = 0)
    {
        return new SequenceBatch(Fill(Rows(sequences), padTokenId, device, packed, hiddenSize));
    }

    /// <summary>
    /// Where each sequence of <paramref name="lengths"/> goes. Padded: sequence i in row i. Packed: for each row count r
    /// up to what rows as wide as the longest sequence need, the narrowest width that holds all sequences first-fit
    /// decreasing in r rows (<see cref="PackInto"/>); of these the layout of least estimated work. Per token and layer a
    /// row's attention costs 2 d x width multiply-adds on the mask path (scores and their product with the values, all
    /// of the row) against 12 d^2 for the projections and the MLP (d = <paramref name="hiddenSize"/>, 0 for OPT-125M's
    /// 768), so the work is cells x (6 d + width): fewer, wider rows leave less padding but attend over more. Rows of the
    /// longest sequence's width alone leave about 10% padding at their ends on long-tailed lengths, all sequences in one
    /// row none but attention over all of them; on CPU (benchmarks/ModelBench PackingBench) this choice pads 2-5% in
    /// steps as fast as the former within noise, while one row was slower, twice as slow for 32 sequences.
    /// </summary>
    public static (SequenceSpan[] Spans, int[] RowLengths, int Width) Layout(IReadOnlyList<int> lengths, bool packed, int hiddenSize = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(hiddenSize);
        int n = lengths.Count;
        int longest = 0;
        for (int i = 0; i < n; i++) longest = Math.Max(longest, lengths[i]);
        if (!packed)
        {
            var spans = new SequenceSpan[n];
            for (int i = 0; i < n; i++) spans[i] = new SequenceSpan(i, 0, lengths[i]);
            return (spans, lengths.ToArray(), longest);
        }
        double attention = 6.0 * (hiddenSize > 0 ? hiddenSize : 768);
        double Work(double rows, double width) => rows * width * (attention + width);
        var best = PackInto(lengths, int.MaxValue);
        long total = best.RowLengths.Sum(l => (long)l);
        for (int rows = best.RowLengths.Length - 1; rows >= 1; rows--)
        {
            // even without padding this many rows (or fewer, wider) cost at least this: stop
            if (Work(rows, (double)total / rows) >= Work(best.RowLengths.Length, best.Width)) break;
            var candidate = PackInto(lengths, rows);
            if (Work(candidate.RowLengths.Length, candidate.Width) < Work(best.RowLengths.Length, best.Width)) best = candidate;
        }
        return best;
    }

    /// <summary>
    /// The packed layout in at most <paramref name="rows"/> rows (int.MaxValue: as many as rows of the longest
    /// sequence's width need): the narrowest width (at least the longest sequence) at which first-fit decreasing
    /// (longest first, ties by index, each into the first row it fits) places every sequence in that many rows. Within
    /// a row the sequences keep that placing order, so segment ids grow left to right as <see cref="Models.Attention"/>
    /// expects.
    /// </summary>
    internal static (SequenceSpan[] Spans, int[] RowLengths, int Width) PackInto(IReadOnlyList<int> lengths, int rows)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        int n = lengths.Count;
        var order = Enumerable.Range(0, n).OrderByDescending(i => lengths[i]).ThenBy(i => i).ToArray();
        long total = 0;
        foreach (int length in lengths) total += length;
        int longest = n == 0 ? 0 : lengths[order[0]];
        var spans = new SequenceSpan[n];
        var loads = new List<int>();
        // first-fit decreasing at `width`; false if it needs more than `rows` rows
        bool Fits(int width)
        {
            loads.Clear();
            foreach (int i in order)
            {
                int row = 0;
                while (row < loads.Count && loads[row] + lengths[i] > width) row++;
                if (row == rows) return false;
                if (row == loads.Count) loads.Add(0);
                spans[i] = new SequenceSpan(row, loads[row], lengths[i]);
                loads[row] += lengths[i];
            }
            return true;
        }
        if (Fits(longest)) return (spans, loads.ToArray(), longest);
        // any first fit succeeds at ceil(total / rows) + longest (a sequence that fit no row would leave every row
        // fuller than total / rows); between that and the lower bound, bisect (first fit is almost always monotone in
        // the width, and the bisection only ever settles on a width that fits)
        long perRow = (total + rows - 1) / rows;
        int low = (int)Math.Max(longest, perRow), high = checked((int)(perRow + longest));
        while (low < high)
        {
            int middle = low + (high - low) / 2;
            if (Fits(middle)) high = middle;
            else low = middle + 1;
        }
        Fits(high);
        return (spans, loads.ToArray(), high);
    }

    private static (int[] Prompt, int[] Response)[] PairRows(IReadOnlyList<TokenizedPair> pairs)
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
        return rows;
    }

    private static (int[] Prompt, int[] Response)[] Rows(IReadOnlyList<TokenizedSequence> sequences)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        if (sequences.Count == 0) throw new ArgumentException("cannot collate an empty batch", nameof(sequences));
        var rows = new (int[] Prompt, int[] Response)[sequences.Count];
        for (int i = 0; i < rows.Length; i++) rows[i] = (sequences[i].PromptIds, sequences[i].ResponseIds);
        return rows;
    }

    private static BatchTensors Fill((int[] Prompt, int[] Response)[] rows, int padTokenId, Device? device, bool packed, int hiddenSize,
        int? packedRows = null)
    {
        var lengths = new int[rows.Length];
        for (int r = 0; r < rows.Length; r++)
        {
            lengths[r] = rows[r].Prompt.Length + rows[r].Response.Length;
            if (rows[r].Response.Length == 0) throw new ArgumentException($"row {r} has no response tokens");
        }
        var (spans, rowLengths, width) = packedRows is int most ? PackInto(lengths, most) : Layout(lengths, packed, hiddenSize);
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
