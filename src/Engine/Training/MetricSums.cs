using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>Weighted sums of per-item metrics over one optimizer step (mean = sum / count per name).</summary>
public sealed class MetricSums
{
    private readonly Dictionary<string, (double Sum, double Count)> _values = new(StringComparer.Ordinal);
    private readonly List<string> _order = new();

    public void Add(string name, double sum, double count)
    {
        if (!_values.TryGetValue(name, out var v)) { v = (0, 0); _order.Add(name); }
        _values[name] = (v.Sum + sum, v.Count + count);
    }

    /// <summary>Adds every element of a 1-D tensor (one item each).</summary>
    public void AddItems(string name, Tensor values)
    {
        using var cpu = values.detach().to(ScalarType.Float64).cpu();
        Add(name, cpu.sum().item<double>(), values.numel());
    }

    public IEnumerable<(string Name, double Mean)> Means() =>
        _order.Select(n => (n, _values[n].Count > 0 ? _values[n].Sum / _values[n].Count : double.NaN));
}
