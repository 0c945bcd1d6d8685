using static TorchSharp.torch;

namespace WeakTeacher.Engine.Generation;

/// <summary>
/// What <see cref="Generator.Generate(WeakTeacher.Engine.Models.CausalLM, Tensor, Tensor, GenerationOptions)"/>
/// produced. Like Hugging Face's generate(): <see cref="Sequences"/> is the prompt followed by the new tokens,
/// padded after each sequence's EOS, and as long as the longest continuation (generation stops early when
/// every sequence has ended). The tensors are ordinary (not inference-mode) tensors on the prompt's device,
/// so they can feed training directly. Dispose to release them.
/// </summary>
public sealed class GenerationResult : IDisposable
{
    internal GenerationResult(Tensor sequences, Tensor attentionMask, int promptLength,
        IReadOnlyList<long[]> newTokens, IReadOnlyList<bool> stoppedAtEos)
    {
        Sequences = sequences;
        AttentionMask = attentionMask;
        PromptLength = promptLength;
        NewTokens = newTokens;
        StoppedAtEos = stoppedAtEos;
    }

    /// <summary>[B, S + N] int64: the left-padded prompts, then the new tokens (pad after EOS).</summary>
    public Tensor Sequences { get; }

    /// <summary>[B, S + N] int64: the prompt mask, then 1 on each new token up to and including its EOS, 0 after.</summary>
    public Tensor AttentionMask { get; }

    /// <summary>S, the padded prompt length: new tokens start at this column.</summary>
    public int PromptLength { get; }

    /// <summary>N, the number of generated columns.</summary>
    public int NumNewColumns => (int)Sequences.shape[1] - PromptLength;

    /// <summary>Per sequence, the new tokens up to and including EOS (no padding).</summary>
    public IReadOnlyList<long[]> NewTokens { get; }

    /// <summary>Per sequence, whether it ended with an EOS token (else it hit MaxNewTokens).</summary>
    public IReadOnlyList<bool> StoppedAtEos { get; }

    public void Dispose()
    {
        Sequences.Dispose();
        AttentionMask.Dispose();
    }
}
