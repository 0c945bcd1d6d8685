using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace WeakTeacher.Engine.Tokenization;

/// <summary>
/// Trains a GPT-2/OPT style byte-level BPE tokenizer and writes it in Hugging Face's slow-tokenizer layout
/// (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json), which <see cref="HfTokenizer.Load"/>
/// and transformers' AutoTokenizer both read.
/// </summary>
/// <remarks>
/// Vocabulary layout: the special tokens first (OPT: &lt;s&gt;=0, &lt;pad&gt;=1, &lt;/s&gt;=2, &lt;unk&gt;=3), then the 256 byte
/// symbols in GPT-2's order, then one token per merge. Merges are learnt over the unique GPT-2 pre-tokens with their
/// counts; pair counts are updated incrementally for the words a merge touches only. Ties in pair count go to the
/// pair with the smaller (left id, right id), so the same corpus always gives the same tokenizer.
/// </remarks>
public static class ByteLevelBpeTrainer
{
    /// <summary>OPT's special tokens in OPT's id order.</summary>
    public static readonly IReadOnlyList<string> OptSpecialTokens = ["<s>", "<pad>", "</s>", "<unk>"];

    /// <summary>
    /// Learns merges from <paramref name="corpus"/> until the vocabulary (special tokens + 256 bytes + merges) holds
    /// <paramref name="vocabSize"/> tokens or no pair occurs <paramref name="minPairFrequency"/> times, writes the
    /// tokenizer files into <paramref name="outputDir"/> and loads them back.
    /// </summary>
    /// <param name="specialTokens">Tokens given the first ids, in order; must contain the bos/eos/pad (and unk, when set) tokens.</param>
    /// <param name="bosToken">OPT uses &lt;/s&gt; as its bos token.</param>
    /// <param name="addBosToken">Whether the tokenizer prepends <paramref name="bosToken"/> (OPT: yes).</param>
    public static HfTokenizer Train(IEnumerable<string> corpus, int vocabSize, IReadOnlyList<string> specialTokens, string outputDir,
        string bosToken = "</s>", string eosToken = "</s>", string padToken = "<pad>", string? unkToken = "<unk>",
        bool addBosToken = true, int minPairFrequency = 2)
    {
        ArgumentNullException.ThrowIfNull(corpus);
        ArgumentNullException.ThrowIfNull(specialTokens);
        ArgumentException.ThrowIfNullOrEmpty(outputDir);
        if (specialTokens.Distinct(StringComparer.Ordinal).Count() != specialTokens.Count)
            throw new ArgumentException("special tokens must be distinct", nameof(specialTokens));
        foreach (var (role, token) in new[] { ("bosToken", bosToken), ("eosToken", eosToken), ("padToken", padToken), ("unkToken", unkToken) })
            if (token is not null && !specialTokens.Contains(token))
                throw new ArgumentException($"{role} \"{token}\" is not one of the special tokens", role);
        int baseSize = specialTokens.Count + 256;
        if (vocabSize < baseSize)
            throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, $"must be at least {baseSize} (special tokens + 256 byte symbols)");
        ArgumentOutOfRangeException.ThrowIfLessThan(minPairFrequency, 1);

        var (vocab, merges) = LearnMerges(corpus, vocabSize, specialTokens, minPairFrequency);
        Directory.CreateDirectory(outputDir);
        WriteFiles(outputDir, vocab, merges, specialTokens, bosToken, eosToken, padToken, unkToken, addBosToken);
        return HfTokenizer.Load(outputDir);
    }

    /// <summary>The vocabulary (in id order) and merges (in rank order) learnt from the corpus.</summary>
    internal static (List<string> Vocab, List<(int Left, int Right)> Merges) LearnMerges(
        IEnumerable<string> corpus, int vocabSize, IReadOnlyList<string> specialTokens, int minPairFrequency)
    {
        // Id layout: special tokens, then the byte alphabet in GPT-2's order.
        var vocab = new List<string>(vocabSize);
        var tokenIds = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var s in specialTokens) { tokenIds[s] = vocab.Count; vocab.Add(s); }
        var byteId = new int[256];
        foreach (byte b in ByteLevel.AlphabetOrder)
        {
            string symbol = ByteLevel.ByteToChar[b].ToString();
            // A special token that equals a byte symbol (e.g. "!") keeps its id; the byte shares it.
            if (!tokenIds.TryGetValue(symbol, out int id)) { id = vocab.Count; tokenIds[symbol] = id; vocab.Add(symbol); }
            byteId[b] = id;
        }

        // Unique pre-tokens with their counts; sorted so that word indices (and all that follows) are input-order free.
        var wordCounts = new Dictionary<string, int>(StringComparer.Ordinal);
        var regex = ByteLevel.Gpt2Regex();
        foreach (var text in corpus)
        {
            if (string.IsNullOrEmpty(text)) continue;
            var lookup = wordCounts.GetAlternateLookup<ReadOnlySpan<char>>();
            foreach (var m in regex.EnumerateMatches(text))
            {
                var piece = text.AsSpan(m.Index, m.Length);
                if (lookup.TryGetValue(piece, out int c)) lookup[piece] = c + 1;
                else lookup[piece] = 1;
            }
        }
        var uniqueWords = wordCounts.Keys.ToArray();
        Array.Sort(uniqueWords, StringComparer.Ordinal);
        var words = new List<int>[uniqueWords.Length];
        var counts = new long[uniqueWords.Length];
        var utf8 = new byte[256];
        for (int w = 0; w < uniqueWords.Length; w++)
        {
            int n = Encoding.UTF8.GetByteCount(uniqueWords[w]);
            if (n > utf8.Length) utf8 = new byte[n * 2];
            Encoding.UTF8.GetBytes(uniqueWords[w], utf8);
            var symbols = new List<int>(n);
            for (int i = 0; i < n; i++) symbols.Add(byteId[utf8[i]]);
            words[w] = symbols;
            counts[w] = wordCounts[uniqueWords[w]];
        }

        // Pair counts and, per pair, the words that (may) contain it. Stale word entries are harmless: a merge in a
        // word without the pair changes nothing.
        var pairCounts = new Dictionary<long, long>();
        var pairWords = new Dictionary<long, HashSet<int>>();
        for (int w = 0; w < words.Length; w++)
        {
            var s = words[w];
            for (int i = 0; i + 1 < s.Count; i++)
            {
                long key = Key(s[i], s[i + 1]);
                pairCounts[key] = pairCounts.GetValueOrDefault(key) + counts[w];
                if (!pairWords.TryGetValue(key, out var set)) pairWords[key] = set = new HashSet<int>();
                set.Add(w);
            }
        }
        // Max-count first, then the smaller (left, right) ids: the key order. Entries go stale as counts change and are
        // re-queued with their current count when popped.
        var queue = new PriorityQueue<long, (long NegCount, long Pair)>();
        foreach (var (key, c) in pairCounts)
            if (c >= minPairFrequency) queue.Enqueue(key, (-c, key));

        var merges = new List<(int, int)>();
        var touched = new Dictionary<long, long>();
        while (vocab.Count < vocabSize && queue.TryDequeue(out long pair, out var priority))
        {
            long current = pairCounts.GetValueOrDefault(pair);
            if (current != -priority.NegCount)
            {
                if (current >= minPairFrequency) queue.Enqueue(pair, (-current, pair));
                continue;
            }
            int left = (int)(pair >> 32), right = (int)(pair & 0xFFFFFFFF);
            string merged = vocab[left] + vocab[right];
            // Two different pairs can spell the same token ("ab"+"c", "a"+"bc"); it keeps one id, as in HF's trainer.
            if (!tokenIds.TryGetValue(merged, out int newId)) { newId = vocab.Count; tokenIds[merged] = newId; vocab.Add(merged); }
            merges.Add((left, right));

            touched.Clear();
            var affected = pairWords.TryGetValue(pair, out var where) ? where.ToArray() : [];
            Array.Sort(affected);
            foreach (int w in affected)
            {
                var s = words[w];
                if (!Contains(s, left, right)) continue;
                long c = counts[w];
                // Remove the word's old pairs, merge left to right, add its new pairs: exact for overlaps like "a a a".
                for (int i = 0; i + 1 < s.Count; i++) Add(pairCounts, touched, Key(s[i], s[i + 1]), -c);
                int write = 0;
                for (int read = 0; read < s.Count; read++)
                {
                    if (read + 1 < s.Count && s[read] == left && s[read + 1] == right) { s[write++] = newId; read++; }
                    else s[write++] = s[read];
                }
                s.RemoveRange(write, s.Count - write);
                for (int i = 0; i + 1 < s.Count; i++)
                {
                    long key = Key(s[i], s[i + 1]);
                    Add(pairCounts, touched, key, c);
                    if (s[i] == newId || s[i + 1] == newId)
                    {
                        if (!pairWords.TryGetValue(key, out var set)) pairWords[key] = set = new HashSet<int>();
                        set.Add(w);
                    }
                }
            }
            pairWords.Remove(pair);
            // Pairs whose count rose need a fresh queue entry; those that fell are fixed lazily when popped.
            foreach (var (key, delta) in touched)
            {
                long c = pairCounts.GetValueOrDefault(key);
                if (delta > 0 && c >= minPairFrequency) queue.Enqueue(key, (-c, key));
                if (c == 0) pairCounts.Remove(key);
            }
        }
        return (vocab, merges);

        static long Key(int a, int b) => ((long)a << 32) | (uint)b;

        static void Add(Dictionary<long, long> pairCounts, Dictionary<long, long> touched, long key, long delta)
        {
            pairCounts[key] = pairCounts.GetValueOrDefault(key) + delta;
            touched[key] = touched.GetValueOrDefault(key) + delta;
        }

        static bool Contains(List<int> s, int a, int b)
        {
            for (int i = 0; i + 1 < s.Count; i++)
                if (s[i] == a && s[i + 1] == b) return true;
            return false;
        }
    }

    private static void WriteFiles(string dir, List<string> vocab, List<(int Left, int Right)> merges, IReadOnlyList<string> specialTokens,
        string bosToken, string eosToken, string padToken, string? unkToken, bool addBosToken)
    {
        var jsonOptions = new JsonSerializerOptions { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        var utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false);

        var vocabJson = new JsonObject();
        for (int id = 0; id < vocab.Count; id++)
            if (!vocabJson.ContainsKey(vocab[id])) vocabJson[vocab[id]] = id;
        File.WriteAllText(Path.Combine(dir, HfTokenizer.VocabFile), vocabJson.ToJsonString(jsonOptions), utf8);

        // transformers' slow GPT2Tokenizer drops the first line of merges.txt and the text after the last newline: keep both.
        var mergesText = new StringBuilder("#version: 0.2\n");
        foreach (var (l, r) in merges) mergesText.Append(vocab[l]).Append(' ').Append(vocab[r]).Append('\n');
        File.WriteAllText(Path.Combine(dir, HfTokenizer.MergesFile), mergesText.ToString(), utf8);

        var named = new JsonObject
        {
            ["bos_token"] = bosToken,
            ["eos_token"] = eosToken,
            ["pad_token"] = padToken,
        };
        if (unkToken is not null) named["unk_token"] = unkToken;
        var roles = new HashSet<string?>([bosToken, eosToken, padToken, unkToken], StringComparer.Ordinal);
        var additional = specialTokens.Where(t => !roles.Contains(t)).ToList();
        if (additional.Count > 0) named["additional_special_tokens"] = new JsonArray(additional.Select(t => (JsonNode)JsonValue.Create(t)).ToArray());
        File.WriteAllText(Path.Combine(dir, TokenizerSettings.SpecialTokensMapFile), named.ToJsonString(jsonOptions), utf8);

        var decoder = new JsonObject();
        for (int id = 0; id < specialTokens.Count; id++)
        {
            decoder[id.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject
            {
                ["content"] = specialTokens[id],
                ["lstrip"] = false,
                ["normalized"] = false,
                ["rstrip"] = false,
                ["single_word"] = false,
                ["special"] = true,
            };
        }
        var config = new JsonObject
        {
            ["add_bos_token"] = addBosToken,
            ["add_prefix_space"] = false,
            ["added_tokens_decoder"] = decoder,
            ["clean_up_tokenization_spaces"] = false,
            ["errors"] = "replace",
            // transformers' "no limit" value (VERY_LARGE_INTEGER), written as the integer it writes.
            ["model_max_length"] = JsonNode.Parse("1000000000000000019884624838656"),
            ["tokenizer_class"] = "GPT2Tokenizer",
        };
        foreach (var (key, value) in named) config[key] = value?.DeepClone();
        File.WriteAllText(Path.Combine(dir, TokenizerSettings.TokenizerConfigFile), config.ToJsonString(jsonOptions), utf8);
    }
}
