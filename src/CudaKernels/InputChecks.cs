using static TorchSharp.torch;

namespace WeakTeacher.CudaKernels;

/// <summary>Argument checks shared by the public entry points: one clear exception naming the input and what is wrong.</summary>
internal static class InputChecks
{
    /// <summary>Device equality by type and index (TorchSharp's Device compares by reference).</summary>
    internal static bool SameDevice(Tensor a, Tensor b) => a.device_type == b.device_type && a.device_index == b.device_index;

    internal static void Logits(string op, Tensor logits, string name = "logits")
    {
        ArgumentNullException.ThrowIfNull(logits, name);
        if (logits.dim() != 2)
            throw new ArgumentException($"{op}: {name} must be 2-D [N, V], got shape [{string.Join(", ", logits.shape)}].", name);
        if (logits.dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float64 or ScalarType.Float16))
            throw new ArgumentException($"{op}: {name} must be float32 or bfloat16 (float16/float64 use the reference path), got {logits.dtype}.", name);
    }

    internal static void Indices(string op, Tensor labels, Tensor seqIndex, long n, int numSequences, Tensor onDevice)
    {
        ArgumentNullException.ThrowIfNull(labels, nameof(labels));
        ArgumentNullException.ThrowIfNull(seqIndex, nameof(seqIndex));
        if (labels.dim() != 1 || labels.shape[0] != n)
            throw new ArgumentException($"{op}: labels must be 1-D of length {n} (one per row), got shape [{string.Join(", ", labels.shape)}].", nameof(labels));
        if (seqIndex.dim() != 1 || seqIndex.shape[0] != n)
            throw new ArgumentException($"{op}: seqIndex must be 1-D of length {n} (one per row), got shape [{string.Join(", ", seqIndex.shape)}].", nameof(seqIndex));
        if (labels.dtype != ScalarType.Int64)
            throw new ArgumentException($"{op}: labels must be int64, got {labels.dtype}.", nameof(labels));
        if (seqIndex.dtype != ScalarType.Int64)
            throw new ArgumentException($"{op}: seqIndex must be int64, got {seqIndex.dtype}.", nameof(seqIndex));
        if (numSequences < 0)
            throw new ArgumentOutOfRangeException(nameof(numSequences), numSequences, $"{op}: numSequences must be >= 0.");
        if (!SameDevice(labels, onDevice) || !SameDevice(seqIndex, onDevice))
            throw new ArgumentException($"{op}: labels ({labels.device}) and seqIndex ({seqIndex.device}) must be on the device of the logits ({onDevice.device}).");
    }

    /// <summary>Labels in [0, V) or equal to the ignore index; sequence indices in [0, numSequences).
    /// One device-to-host read; the details are computed only when something is wrong.</summary>
    internal static void IndexRanges(string op, Tensor labels, Tensor seqIndex, long vocab, int numSequences, long ignoreIndex)
    {
        if (!KernelSettings.ValidateIndices || labels.shape[0] == 0) return;
        using var scope = NewDisposeScope();
        var badLabel = (labels.Lt(0) | labels.Ge(vocab)) & labels.Ne(ignoreIndex);
        var badSeq = seqIndex.Lt(0) | seqIndex.Ge(numSequences);
        if (!(badLabel | badSeq).any().cpu().item<bool>()) return;
        if (badLabel.any().cpu().item<bool>())
        {
            long at = badLabel.nonzero()[0, 0].cpu().item<long>();
            long value = labels[at].cpu().item<long>();
            throw new ArgumentOutOfRangeException(nameof(labels),
                $"{op}: labels[{at}] = {value} is outside [0, {vocab}) and is not the ignore index {ignoreIndex}.");
        }
        long atSeq = badSeq.nonzero()[0, 0].cpu().item<long>();
        long seqValue = seqIndex[atSeq].cpu().item<long>();
        throw new ArgumentOutOfRangeException(nameof(seqIndex),
            $"{op}: seqIndex[{atSeq}] = {seqValue} is outside [0, {numSequences}).");
    }
}
