using WeakTeacher.Engine.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>One prepared micro-batch of a trainer.</summary>
internal sealed class MicroBatch(object payload, int[] exampleIndices, double normaliser, long tokens) : IDisposable
{
    public object Payload { get; } = payload;
    public int[] ExampleIndices { get; } = exampleIndices;
    /// <summary>Items the loss is averaged over (pairs for DPO / reward, response tokens for SFT).</summary>
    public double Normaliser { get; } = normaliser;
    /// <summary>Real tokens in the batch (tokens/s).</summary>
    public long Tokens { get; } = tokens;
    public void Dispose() => (Payload as IDisposable)?.Dispose();

    /// <summary>The pairs at <paramref name="exampleIndices"/> collated for <paramref name="model"/> (its device, and its
    /// width for a packed layout); the loss is averaged over pairs (DPO and reward training).</summary>
    public static MicroBatch OfPairs(TokenizedPair[] pairs, IReadOnlyList<int> exampleIndices, int padTokenId, Models.CausalLM model, bool packed)
    {
        var rows = exampleIndices.Select(i => pairs[i]).ToList();
        var batch = Collator.CollatePreferences(rows, padTokenId, model.Device, packed, model.Config.HiddenSize);
        return new MicroBatch(batch, exampleIndices.ToArray(), rows.Count, rows.Sum(r => (long)r.ChosenLength + r.RejectedLength));
    }
}
