using System.Text.RegularExpressions;

namespace WeakTeacher.Engine.Tokenization;

/// <summary>
/// GPT-2's byte-level alphabet: every byte maps to one printable unicode char, so BPE works on bytes
/// while vocab.json/merges.txt stay text (space -> 'Ġ', newline -> 'Ċ'). The tokenizer trainer builds its base
/// vocabulary from it; Microsoft.ML.Tokenizers encodes and decodes through it.
/// </summary>
internal static partial class ByteLevel
{
    /// <summary>GPT-2's pre-tokenisation pattern (the one HF's ByteLevel pre-tokenizer uses with use_regex=true).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    [GeneratedRegex(Gpt2Pattern)]
    public static partial Regex Gpt2Regex();

    /// <summary>Char of byte b.</summary>
    public static readonly char[] ByteToChar = new char[256];

    /// <summary>The 256 bytes in GPT-2's order: printable ones first, then the rest (the order of GPT-2's first vocab ids).</summary>
    public static readonly byte[] AlphabetOrder = new byte[256];

    static ByteLevel()
    {
        int k = 0;
        var printable = new bool[256];
        for (int b = '!'; b <= '~'; b++) printable[b] = true;
        for (int b = 0xA1; b <= 0xAC; b++) printable[b] = true;
        for (int b = 0xAE; b <= 0xFF; b++) printable[b] = true;
        for (int b = 0; b < 256; b++)
            if (printable[b]) { ByteToChar[b] = (char)b; AlphabetOrder[k++] = (byte)b; }
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!printable[b]) { ByteToChar[b] = (char)(256 + n++); AlphabetOrder[k++] = (byte)b; }
    }
}
