namespace WeakTeacher.Engine.Data;

/// <summary>
/// Length-aware batching for the passes whose order does not matter (the DPO reference pass, labelling, scoring,
/// generation): items of similar length share a batch, so a right-padded batch spends little on padding. Within each
/// window of consecutive items the items are sorted longest first (ties by input index) and cut into batches of at
/// most <c>batchSize</c> items; the caller writes each result back at its input index, so the output is in input order.
/// Windows are fixed runs of the input (aligned at multiples of the window size), so a slice of whole windows (a label
/// shard) forms exactly the batches a run over the whole input forms there.
/// </summary>
public static class LengthBatches
{
    /// <summary>Batches per sorting window where the input is split into slices (labelling shards).</summary>
    public const int WindowBatches = 8;

    /// <summary>The window of <see cref="WindowBatches"/> batches of <paramref name="batchSize"/> items.</summary>
    public static int Window(int batchSize) => checked(batchSize * WindowBatches);

    /// <summary>
    /// The batches (input indices, longest first) of items of <paramref name="lengths"/>, sorted within windows of
    /// <paramref name="window"/> items (0 = one window over everything). With <paramref name="tokenBudget"/> &gt; 0 a batch
    /// also closes before its padded size (items x longest) would pass the budget (a batch has at least one item).
    /// </summary>
    public static IReadOnlyList<int[]> Plan(IReadOnlyList<int> lengths, int batchSize, int window = 0, long tokenBudget = 0)
    {
        ArgumentNullException.ThrowIfNull(lengths);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        ArgumentOutOfRangeException.ThrowIfNegative(window);
        ArgumentOutOfRangeException.ThrowIfNegative(tokenBudget);
        int n = lengths.Count;
        if (window == 0) window = Math.Max(1, n);
        var batches = new List<int[]>();
        var current = new List<int>(batchSize);
        for (int start = 0; start < n; start += window)
        {
            int end = Math.Min(n, start + window);
            var order = Enumerable.Range(start, end - start).OrderByDescending(i => lengths[i]).ThenBy(i => i);
            foreach (int i in order)
            {
                // sorted longest first: the batch's first item is its longest
                bool full = current.Count == batchSize
                    || (tokenBudget > 0 && current.Count > 0 && (long)(current.Count + 1) * lengths[current[0]] > tokenBudget);
                if (full)
                {
                    batches.Add([.. current]);
                    current.Clear();
                }
                current.Add(i);
            }
            // a batch never spans two windows
            if (current.Count > 0)
            {
                batches.Add([.. current]);
                current.Clear();
            }
        }
        return batches;
    }
}
