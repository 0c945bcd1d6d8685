namespace WeakTeacher.Engine.Tokenization;

/// <summary>
/// What the data, training and generation code needs from a tokenizer. Implemented by
/// <c>HfTokenizer</c> (loaded from a checkpoint's own files).
/// </summary>
public interface ITokenizer
{
    int VocabSize { get; }
    /// <summary>Beginning-of-sequence id, or null where the model has none in front of the text (GPT-2 style).</summary>
    int? BosTokenId { get; }
    int EosTokenId { get; }
    /// <summary>Padding id; falls back to EOS where the checkpoint defines none.</summary>
    int PadTokenId { get; }
    /// <summary>True when <see cref="BosTokenId"/> is prepended to every encoded sequence (OPT, Llama).</summary>
    bool AddsBos { get; }
    /// <summary>Token ids of <paramref name="text"/> with no special tokens added.</summary>
    IReadOnlyList<int> Encode(string text);
    /// <summary>Text of <paramref name="ids"/>; special tokens are dropped when <paramref name="skipSpecialTokens"/>.</summary>
    string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true);
}
