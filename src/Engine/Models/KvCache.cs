using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>
/// Per-layer keys and values [B, H_kv, S, D] of the tokens seen so far, for incremental decoding.
/// Holds references to tensors it owns; dispose it when generation ends.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor?[] _keys;
    private readonly Tensor?[] _values;

    public KvCache(int numLayers)
    {
        _keys = new Tensor?[numLayers];
        _values = new Tensor?[numLayers];
    }

    /// <summary>Number of positions already cached (0 before the first forward).</summary>
    public long Length => _keys[0] is { } k ? k.shape[2] : 0;

    /// <summary>Appends this step's keys/values for <paramref name="layer"/> and returns the full ones.</summary>
    public (Tensor Keys, Tensor Values) Append(int layer, Tensor keys, Tensor values)
    {
        Tensor k = _keys[layer] is { } pk ? cat(new[] { pk, keys }, 2) : keys.alias();
        Tensor v = _values[layer] is { } pv ? cat(new[] { pv, values }, 2) : values.alias();
        _keys[layer]?.Dispose();
        _values[layer]?.Dispose();
        _keys[layer] = k.DetachFromDisposeScope();
        _values[layer] = v.DetachFromDisposeScope();
        return (k, v);
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
        for (int i = 0; i < _keys.Length; i++) { _keys[i]?.Dispose(); _values[i]?.Dispose(); _keys[i] = _values[i] = null; }
    }
}
