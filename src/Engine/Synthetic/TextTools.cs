namespace WeakTeacher.Engine.Synthetic;

/// <summary>Word-level helpers shared by the generator and the gold reward.</summary>
internal static class TextTools
{
    /// <summary>Lower-case words (ASCII letter runs and digit runs); punctuation, symbols and other characters separate them.</summary>
    public static List<string> Words(string text)
    {
        var result = new List<string>(text.Length / 4 + 1);
        int i = 0;
        Span<char> buffer = stackalloc char[64];
        while (i < text.Length)
        {
            char c = text[i];
            bool letter = IsAsciiLetter(c);
            if (!letter && !char.IsAsciiDigit(c)) { i++; continue; }
            int start = i;
            while (i < text.Length && (letter ? IsAsciiLetter(text[i]) : char.IsAsciiDigit(text[i]))) i++;
            int length = i - start;
            if (length <= buffer.Length)
            {
                for (int k = 0; k < length; k++) buffer[k] = char.ToLowerInvariant(text[start + k]);
                result.Add(new string(buffer[..length]));
            }
            else result.Add(text.Substring(start, length).ToLowerInvariant());
        }
        return result;
    }

    private static bool IsAsciiLetter(char c) => (uint)((c | 0x20) - 'a') <= 'z' - 'a';

    /// <summary>Start positions of <paramref name="phrase"/> (a word sequence) in <paramref name="words"/>.</summary>
    public static List<int> FindPhrase(IReadOnlyList<string> words, IReadOnlyList<string> phrase)
    {
        var hits = new List<int>();
        if (phrase.Count == 0) return hits;
        for (int i = 0; i + phrase.Count <= words.Count; i++)
        {
            bool match = true;
            for (int j = 0; j < phrase.Count && match; j++) match = words[i + j] == phrase[j];
            if (match) hits.Add(i);
        }
        return hits;
    }

    public static bool ContainsPhrase(IReadOnlyList<string> words, IReadOnlyList<string> phrase) => CountPhrase(words, phrase) > 0;

    /// <summary>Number of (possibly overlapping) occurrences of <paramref name="phrase"/> in <paramref name="words"/>.</summary>
    public static int CountPhrase(IReadOnlyList<string> words, IReadOnlyList<string> phrase)
    {
        if (phrase.Count == 0) return 0;
        int count = 0;
        for (int i = 0; i + phrase.Count <= words.Count; i++)
        {
            bool match = true;
            for (int j = 0; j < phrase.Count && match; j++) match = words[i + j] == phrase[j];
            if (match) count++;
        }
        return count;
    }

    public static string Capitalise(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..];

    /// <summary>"a, b and c" (English list joining).</summary>
    public static string JoinList(IReadOnlyList<string> items) => items.Count switch
    {
        0 => "",
        1 => items[0],
        _ => string.Join(", ", items.Take(items.Count - 1)) + " and " + items[^1],
    };

    public static string Fill(string template, params (string Key, string Value)[] values)
    {
        foreach (var (k, v) in values) template = template.Replace("{" + k + "}", v);
        return template;
    }
}

/// <summary>
/// Many phrases indexed by their first word, so one pass over a response finds every occurrence of every
/// phrase (the gold reward looks for dozens of marker phrases in each response).
/// </summary>
internal sealed class PhraseIndex
{
    private readonly Dictionary<string, List<(string[] Phrase, int Group)>> _byFirstWord = new(StringComparer.Ordinal);

    public PhraseIndex Add(IEnumerable<string[]> phrases, int group)
    {
        foreach (var phrase in phrases)
        {
            if (phrase.Length == 0) continue;
            if (!_byFirstWord.TryGetValue(phrase[0], out var list)) _byFirstWord[phrase[0]] = list = [];
            list.Add((phrase, group));
        }
        return this;
    }

    /// <summary>Every (group, start position) at which a phrase of the index occurs, in order of position.</summary>
    public List<(int Group, int Position)> Find(IReadOnlyList<string> words)
    {
        var hits = new List<(int, int)>();
        for (int i = 0; i < words.Count; i++)
        {
            if (!_byFirstWord.TryGetValue(words[i], out var candidates)) continue;
            foreach (var (phrase, group) in candidates)
            {
                if (i + phrase.Length > words.Count) continue;
                bool match = true;
                for (int j = 1; j < phrase.Length && match; j++) match = words[i + j] == phrase[j];
                if (match) hits.Add((group, i));
            }
        }
        return hits;
    }
}
