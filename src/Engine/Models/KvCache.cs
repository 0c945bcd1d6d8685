using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>
/// Per-layer keys and values [B, H_kv, S, D] of the tokens seen so far, for incremental decoding. Each layer's keys and
/// values live in a buffer with spare positions that grows by doubling, so a decoding step writes its new position in
/// place instead of re-allocating and copying the whole cache (which made long generations quadratic in time and
/// memory traffic). A caller that knows how many positions it will feed (a generation: the prompt plus the new tokens
/// but the last) reserves them at the first append, so the buffer is allocated once, with no spare positions and no
/// copy on growth (doubling from the prompt held up to half a cache unused: 8 x (32 + 64) at OPT-125M reserved 128
/// positions for 95). Dispose it when generation ends.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor?[] _keys;
    private readonly Tensor?[] _values;
    private readonly long[] _lengths;
    private readonly long _reserved;

    /// <param name="numLayers">Layers of the model.</param>
    /// <param name="reservedPositions">Positions each layer's buffer holds from its first append (more only if more are
    /// appended, then by doubling); 0: what the first append needs plus 32.</param>
    public KvCache(int numLayers, long reservedPositions = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(reservedPositions);
        _keys = new Tensor?[numLayers];
        _values = new Tensor?[numLayers];
        _lengths = new long[numLayers];
        _reserved = reservedPositions;
    }

    /// <summary>Number of positions already cached (0 before the first forward).</summary>
    public long Length => _lengths[0];

    /// <summary>Positions the first layer's buffer holds (0 before the first append).</summary>
    internal long Capacity => _keys[0]?.shape[2] ?? 0;

    /// <summary>Appends this step's keys/values for <paramref name="layer"/> and returns views of all cached ones.</summary>
    public (Tensor Keys, Tensor Values) Append(int layer, Tensor keys, Tensor values)
    {
        long length = _lengths[layer], added = keys.shape[2], needed = length + added;
        _keys[layer] = Reserve(_keys[layer], keys, length, needed);
        _values[layer] = Reserve(_values[layer], values, length, needed);
        _keys[layer]!.narrow(2, length, added).copy_(keys);
        _values[layer]!.narrow(2, length, added).copy_(values);
        _lengths[layer] = needed;
        return (_keys[layer]!.narrow(2, 0, needed), _values[layer]!.narrow(2, 0, needed));
    }

    private Tensor Reserve(Tensor? buffer, Tensor like, long length, long needed)
    {
        if (buffer is not null && buffer.shape[2] >= needed) return buffer;
        long capacity = Math.Max(needed, buffer is null ? (_reserved > 0 ? _reserved : needed + 32) : buffer.shape[2] * 2);
        var shape = like.shape.ToArray();
        shape[2] = capacity;
        var grown = empty(shape, like.dtype, like.device).DetachFromDisposeScope();
        if (buffer is not null)
        {
            grown.narrow(2, 0, length).copy_(buffer.narrow(2, 0, length));
            buffer.Dispose();
        }
        return grown;
    }

    /// <summary>Keeps only the rows in <paramref name="rows"/> (e.g. drop finished sequences).</summary>
    public void SelectRows(Tensor rows)
    {
        for (int i = 0; i < _keys.Length; i++)
        {
            if (_keys[i] is { } k) { _keys[i] = k.index_select(0, rows).DetachFromDisposeScope(); k.Dispose(); }
            if (_values[i] is { } v) { _values[i] = v.index_select(0, rows).DetachFromDisposeScope(); v.Dispose(); }
        }
    }

    public void Dispose()
    {
        for (int i = 0; i < _keys.Length; i++)
        {
            _keys[i]?.Dispose();
            _values[i]?.Dispose();
            _keys[i] = _values[i] = null;
            _lengths[i] = 0;
        }
    }
}
