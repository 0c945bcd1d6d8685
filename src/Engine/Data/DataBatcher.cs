namespace WeakTeacher.Engine.Data;

/// <summary>Where a <see cref="DataBatcher{T}"/> stands: the epoch and the index of the next batch within it.</summary>
public readonly record struct BatcherPosition(int Epoch, int BatchIndex)
{
    public override string ToString() => $"epoch {Epoch}, batch {BatchIndex}";
}

/// <summary>
/// Yields batches of <c>batchSize</c> items, shuffled per epoch by a seeded generator (the order of epoch e depends
/// only on the seed and e), so a saved <see cref="Position"/> restored later gives exactly the same following batches.
/// The last batch of an epoch is smaller unless <c>dropLast</c>.
/// </summary>
public sealed class DataBatcher<T>
{
    private readonly IReadOnlyList<T> items;
    private int[]? order;
    private int orderEpoch = -1;

    public DataBatcher(IReadOnlyList<T> items, int batchSize, long seed, bool shuffle = true, bool dropLast = false)
    {
        this.items = items ?? throw new ArgumentNullException(nameof(items));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        if (items.Count == 0) throw new ArgumentException("cannot batch an empty data set", nameof(items));
        if (dropLast && items.Count < batchSize)
            throw new ArgumentException($"{items.Count} items make no full batch of {batchSize} with dropLast", nameof(items));
        BatchSize = batchSize;
        Seed = seed;
        Shuffle = shuffle;
        DropLast = dropLast;
        BatchesPerEpoch = dropLast ? items.Count / batchSize : (items.Count + batchSize - 1) / batchSize;
    }

    public int BatchSize { get; }
    public long Seed { get; }
    public bool Shuffle { get; }
    public bool DropLast { get; }
    public int ItemCount => items.Count;
    public int BatchesPerEpoch { get; }

    /// <summary>The next batch to be yielded; save it with a checkpoint and <see cref="Restore"/> it on resume.</summary>
    public BatcherPosition Position { get; private set; }

    public void Restore(BatcherPosition position)
    {
        if (position.Epoch < 0 || position.BatchIndex < 0 || position.BatchIndex > BatchesPerEpoch)
            throw new ArgumentOutOfRangeException(nameof(position), position,
                $"not a position of this batcher ({BatchesPerEpoch} batches per epoch)");
        Position = position;
    }

    /// <summary>The next batch, moving into the next epoch after the last batch of one.</summary>
    public IReadOnlyList<T> Next()
    {
        if (Position.BatchIndex >= BatchesPerEpoch) Position = new BatcherPosition(Position.Epoch + 1, 0);
        var indices = Order(Position.Epoch);
        int start = Position.BatchIndex * BatchSize;
        int count = Math.Min(BatchSize, items.Count - start);
        var batch = new T[count];
        for (int i = 0; i < count; i++) batch[i] = items[indices[start + i]];
        Position = Position with { BatchIndex = Position.BatchIndex + 1 };
        return batch;
    }

    private int[] Order(int epoch)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        if (orderEpoch == epoch && order is not null) return order;
        order ??= new int[items.Count];
        for (int i = 0; i < order.Length; i++) order[i] = i;
        if (Shuffle) new SeededRandom(Seed, epoch).Shuffle(order.AsSpan());
        orderEpoch = epoch;
        return order;
    }
}
