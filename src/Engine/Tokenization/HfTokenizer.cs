using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace WeakTeacher.Engine.Tokenization;

/// <summary>Which tokenizer model a checkpoint carries.</summary>
public enum TokenizerKind
{
    /// <summary>GPT-2/OPT style byte-level BPE (vocab.json + merges.txt, or tokenizer.json with a BPE model).</summary>
    ByteLevelBpe,
    /// <summary>SentencePiece tokenizer.model (Llama).</summary>
    SentencePiece,
}

/// <summary>
/// A Hugging Face checkpoint's own tokenizer, loaded from its files with Microsoft.ML.Tokenizers and never fetched.
/// Encoding and special-token semantics follow transformers: <see cref="Encode(string)"/> adds no special tokens;
/// callers prepend <see cref="BosTokenId"/> when <see cref="AddsBos"/> (OPT: &lt;/s&gt;=2, Llama: &lt;s&gt;, GPT-2: nothing).
/// </summary>
public sealed class HfTokenizer : ITokenizer
{
    public const string TokenizerJsonFile = "tokenizer.json";
    public const string VocabFile = "vocab.json";
    public const string MergesFile = "merges.txt";
    public const string SentencePieceFile = "tokenizer.model";

    /// <summary>Every tokenizer file a checkpoint folder may hold; those present are carried by <see cref="Save"/>.</summary>
    public static readonly IReadOnlyList<string> TokenizerFileNames =
    [
        TokenizerJsonFile, VocabFile, MergesFile, SentencePieceFile,
        TokenizerSettings.TokenizerConfigFile, TokenizerSettings.SpecialTokensMapFile, TokenizerSettings.AddedTokensFile,
    ];

    private readonly Tokenizer _inner;
    private readonly string?[] _idToToken;
    /// <summary>Ids dropped by Decode(skipSpecialTokens: true): bos/eos/unk/pad, additional and added special tokens.</summary>
    private readonly bool[] _isSpecial;
    /// <summary>Added tokens are written as they are, not decoded through the byte-level alphabet.</summary>
    private readonly bool[] _isAdded;
    private readonly Dictionary<string, int> _tokenToId;
    private readonly Dictionary<string, byte[]> _files;
    private readonly bool _addPrefixSpace;
    private readonly bool _cleanUpSpaces;

    public TokenizerKind Kind { get; }
    public int VocabSize { get; }
    public int? BosTokenId { get; }
    public int EosTokenId { get; }
    public int PadTokenId { get; }
    public int? UnkTokenId { get; }
    public bool AddsBos { get; }
    /// <summary>The checkpoint's bos token text even where it is not prepended (GPT-2's &lt;|endoftext|&gt;), or null.</summary>
    public string? BosToken { get; }
    public string EosToken { get; }
    public string PadToken { get; }
    /// <summary>The folder the tokenizer was loaded from.</summary>
    public string SourceDirectory { get; }
    /// <summary>Names of the tokenizer files read at load (and written by <see cref="Save"/>).</summary>
    public IReadOnlyCollection<string> FileNames => _files.Keys;

    private HfTokenizer(TokenizerKind kind, Tokenizer inner, Dictionary<string, int> tokenToId, ResolvedSpecials specials,
        Dictionary<string, byte[]> files, bool addPrefixSpace, bool cleanUpSpaces, string sourceDirectory)
    {
        Kind = kind;
        _inner = inner;
        _tokenToId = tokenToId;
        _files = files;
        _addPrefixSpace = addPrefixSpace;
        _cleanUpSpaces = cleanUpSpaces;
        SourceDirectory = sourceDirectory;
        VocabSize = tokenToId.Count == 0 ? 0 : tokenToId.Values.Max() + 1;
        _idToToken = new string?[VocabSize];
        foreach (var (token, id) in tokenToId)
            if (_idToToken[id] is null || string.CompareOrdinal(token, _idToToken[id]) < 0) _idToToken[id] = token;
        _isSpecial = new bool[VocabSize];
        foreach (var id in specials.SpecialIds) _isSpecial[id] = true;
        _isAdded = new bool[VocabSize];
        foreach (var id in specials.AddedIds) _isAdded[id] = true;
        AddsBos = specials.AddsBos;
        BosTokenId = specials.AddsBos ? specials.BosId : null;
        BosToken = specials.BosId is int b ? _idToToken[b] : null;
        EosTokenId = specials.EosId;
        EosToken = _idToToken[specials.EosId] ?? "";
        PadTokenId = specials.PadId;
        PadToken = _idToToken[specials.PadId] ?? "";
        UnkTokenId = specials.UnkId;
    }

    /// <summary>Id of a token string (as written in the vocabulary, e.g. "Ġthe"), or null.</summary>
    public int? TokenToId(string token) => _tokenToId.TryGetValue(token, out int id) ? id : null;

    /// <summary>Token string of an id (as written in the vocabulary), or null when the id is unused.</summary>
    public string? IdToToken(int id) => (uint)id < (uint)_idToToken.Length ? _idToToken[id] : null;

    /// <summary>True for ids that Decode drops with skipSpecialTokens.</summary>
    public bool IsSpecial(int id) => (uint)id < (uint)_isSpecial.Length && _isSpecial[id];

    /// <inheritdoc />
    public IReadOnlyList<int> Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (_addPrefixSpace && text.Length > 0 && text[0] != ' ') text = " " + text;
        return _inner.EncodeToIds(text, considerPreTokenization: true, considerNormalization: true);
    }

    /// <summary>Token ids of a span of text with no special tokens added (no string is made from the span).</summary>
    public IReadOnlyList<int> Encode(ReadOnlySpan<char> text)
    {
        if (_addPrefixSpace && text.Length > 0 && text[0] != ' ') return Encode(text.ToString());
        return _inner.EncodeToIds(text, considerPreTokenization: true, considerNormalization: true);
    }

    /// <inheritdoc />
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        string text = Kind == TokenizerKind.ByteLevelBpe
            ? DecodeByteLevel(ids, skipSpecialTokens)
            : DecodeSentencePiece(ids, skipSpecialTokens);
        return _cleanUpSpaces ? CleanUpTokenizationSpaces(text) : text;
    }

    private string DecodeByteLevel(IEnumerable<int> ids, bool skipSpecialTokens) =>
        // The library maps the byte-level alphabet back to bytes, writes added tokens as they are and turns invalid
        // UTF-8 (a generation cut inside a character) into U+FFFD, as HF's errors="replace" does.
        ((BpeTokenizer)_inner).Decode(Kept(ids, skipSpecialTokens), considerSpecialTokens: true);

    /// <summary>The ids Decode writes: those of the tokenizer's vocabulary (a model's padded embedding rows decode to
    /// nothing, as in transformers), without the special ones when asked.</summary>
    private List<int> Kept(IEnumerable<int> ids, bool skipSpecialTokens)
    {
        var kept = new List<int>();
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)_idToToken.Length || _idToToken[id] is null) continue;
            if (skipSpecialTokens && _isSpecial[id]) continue;
            kept.Add(id);
        }
        return kept;
    }

    private string DecodeSentencePiece(IEnumerable<int> ids, bool skipSpecialTokens) =>
        ((SentencePieceTokenizer)_inner).Decode(Kept(ids, skipSpecialTokens), considerSpecialTokens: true);

    /// <summary>transformers' clean_up_tokenization (applied only where tokenizer_config.json asks for it).</summary>
    private static string CleanUpTokenizationSpaces(string s) =>
        s.Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",").Replace(" ' ", "'")
         .Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");

    /// <summary>
    /// Writes the tokenizer files this tokenizer was loaded from into <paramref name="dir"/> (created when missing), so that a
    /// saved checkpoint folder carries its tokenizer and loads here and in transformers alike.
    /// </summary>
    public void Save(string dir)
    {
        ArgumentException.ThrowIfNullOrEmpty(dir);
        Directory.CreateDirectory(dir);
        foreach (var (name, bytes) in _files)
            AtomicFile.WriteAllBytes(Path.Combine(dir, name), bytes);
    }

    // ------------------------------------------------------------------------------------------------ loading

    /// <summary>
    /// Loads the tokenizer of a Hugging Face checkpoint folder: tokenizer.json (byte-level BPE), else vocab.json + merges.txt,
    /// else tokenizer.model (SentencePiece). Special tokens come from tokenizer_config.json / special_tokens_map.json, with
    /// generation_config.json / config.json ids as the fallback.
    /// </summary>
    /// <exception cref="TokenizerLoadException">A file is missing, unreadable or malformed (the message names it).</exception>
    public static HfTokenizer Load(string checkpointDir)
    {
        ArgumentException.ThrowIfNullOrEmpty(checkpointDir);
        if (!Directory.Exists(checkpointDir))
            throw new TokenizerLoadException(checkpointDir, "the checkpoint folder does not exist");

        var files = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        var settings = TokenizerSettings.Read(checkpointDir, files);
        string tokenizerJson = Path.Combine(checkpointDir, TokenizerJsonFile);
        string vocabJson = Path.Combine(checkpointDir, VocabFile);
        string mergesTxt = Path.Combine(checkpointDir, MergesFile);
        string spModel = Path.Combine(checkpointDir, SentencePieceFile);

        if (File.Exists(tokenizerJson))
        {
            var bytes = TokenizerSettings.ReadBytes(tokenizerJson);
            using var doc = TokenizerSettings.ParseJson(bytes, tokenizerJson);
            var parsed = TokenizerJson.Parse(TokenizerSettings.RequireObject(doc, tokenizerJson), tokenizerJson, fallbackAvailable: File.Exists(spModel));
            if (parsed is not null)
            {
                files[TokenizerJsonFile] = bytes;
                KeepIfPresent(files, checkpointDir, VocabFile, MergesFile);
                return CreateByteLevel(checkpointDir, parsed, settings, files);
            }
            // A SentencePiece-style tokenizer.json (Llama's fast tokenizer) next to tokenizer.model: the model file is the source.
        }
        else if (File.Exists(vocabJson) || File.Exists(mergesTxt))
        {
            if (!File.Exists(vocabJson)) throw new TokenizerLoadException(vocabJson, $"missing: {MergesFile} needs its {VocabFile}");
            if (!File.Exists(mergesTxt)) throw new TokenizerLoadException(mergesTxt, $"missing: {VocabFile} needs its {MergesFile}");
            var vocabBytes = TokenizerSettings.ReadBytes(vocabJson);
            var mergesBytes = TokenizerSettings.ReadBytes(mergesTxt);
            var model = new ByteLevelModel
            {
                Vocab = ReadVocabJson(vocabBytes, vocabJson),
                Merges = ReadMergesTxt(mergesBytes, mergesTxt),
                PreTokenizerPattern = ByteLevel.Gpt2Pattern,
                AddPrefixSpace = settings.AddPrefixSpace,
                SourceFile = vocabJson,
            };
            files[VocabFile] = vocabBytes;
            files[MergesFile] = mergesBytes;
            return CreateByteLevel(checkpointDir, model, settings, files);
        }

        if (File.Exists(spModel))
        {
            files[SentencePieceFile] = TokenizerSettings.ReadBytes(spModel);
            KeepIfPresent(files, checkpointDir, TokenizerJsonFile);
            return CreateSentencePiece(checkpointDir, spModel, files[SentencePieceFile], settings, files);
        }

        throw new TokenizerLoadException(checkpointDir,
            $"no tokenizer files found; looked for {TokenizerJsonFile}, {VocabFile} + {MergesFile}, and {SentencePieceFile}");
    }

    private static void KeepIfPresent(Dictionary<string, byte[]> files, string dir, params string[] names)
    {
        foreach (var name in names)
        {
            var path = Path.Combine(dir, name);
            if (File.Exists(path)) files[name] = TokenizerSettings.ReadBytes(path);
        }
    }

    internal static Dictionary<string, int> ReadVocabJson(byte[] bytes, string path)
    {
        using var doc = TokenizerSettings.ParseJson(bytes, path);
        return TokenizerJson.ReadVocab(TokenizerSettings.RequireObject(doc, path), path, "");
    }

    internal static List<(string Left, string Right)> ReadMergesTxt(byte[] bytes, string path)
    {
        string text;
        try { text = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes); }
        catch (DecoderFallbackException e) { throw new TokenizerLoadException(path, "not valid UTF-8 text", e); }
        if (text.Length > 0 && text[0] == '\uFEFF') text = text[1..];
        var merges = new List<(string, string)>();
        int lineNo = 0;
        foreach (var raw in text.Split('\n'))
        {
            lineNo++;
            var line = raw.TrimEnd('\r');
            // "#version: 0.2" header (GPT-2's files and everything HF writes); blank lines carry no merge.
            if (line.Length == 0 || line.StartsWith("#version", StringComparison.Ordinal)) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new TokenizerLoadException(path, $"line {lineNo}: expected two tokens separated by one space, found \"{Truncate(line)}\"");
            merges.Add((parts[0], parts[1]));
        }
        return merges;
    }

    internal static string Truncate(string s) => s.Length <= 60 ? s : s[..60] + "…";

    private static HfTokenizer CreateByteLevel(string dir, ByteLevelModel model, TokenizerSettings settings, Dictionary<string, byte[]> files)
    {
        var vocab = model.Vocab;
        // HF refuses a merge whose parts or result are not in the vocabulary; so do we, with the line/index.
        var mergeStrings = new List<string>(model.Merges.Count);
        for (int i = 0; i < model.Merges.Count; i++)
        {
            var (left, right) = model.Merges[i];
            string? missing = !vocab.ContainsKey(left) ? left : !vocab.ContainsKey(right) ? right : !vocab.ContainsKey(left + right) ? left + right : null;
            if (missing is not null)
                throw new TokenizerLoadException(model.MergesSource ?? Path.Combine(dir, MergesFile),
                    $"merge {i + 1} (\"{left} {right}\") uses \"{missing}\", which is not in the vocabulary");
            mergeStrings.Add(left + " " + right);
        }

        var tokenToId = new Dictionary<string, int>(vocab, StringComparer.Ordinal);
        var specials = ResolvedSpecials.Resolve(dir, tokenToId, settings, model.AddedTokens, model.TemplateBosId,
            defaultAddsBos: string.Equals(settings.ModelType, "opt", StringComparison.OrdinalIgnoreCase),
            defaultBos: null, defaultEos: FirstPresent(tokenToId, "</s>", "<|endoftext|>", "<eos>"), defaultUnk: model.UnkToken is string u && tokenToId.TryGetValue(u, out int uid) ? uid : null);

        Regex regex;
        if (model.PreTokenizerPattern == ByteLevel.Gpt2Pattern)
            regex = ByteLevel.Gpt2Regex();
        else
        {
            try
            {
                // Text between matches is kept as one piece, as HF's Split(behavior: Isolated) does.
                string p = model.PreTokenizerPattern;
                regex = new Regex($"(?:{p})|(?:(?!(?:{p}))[\\s\\S])+", RegexOptions.Compiled);
            }
            catch (ArgumentException e)
            {
                throw new TokenizerLoadException(model.SourceFile, $"pre-tokenizer regex does not compile in .NET: {e.Message}", e);
            }
        }

        var splitTokens = specials.SplitTokens(tokenToId);
        Tokenizer inner;
        try
        {
            inner = BpeTokenizer.Create(new BpeOptions(vocab)
            {
                Merges = mergeStrings,
                ByteLevel = true,
                PreTokenizer = new RegexPreTokenizer(regex, splitTokens.Count > 0 ? splitTokens : null),
                SpecialTokens = splitTokens.Count > 0 ? splitTokens : null,
            });
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new TokenizerLoadException(model.SourceFile, $"the BPE model is not usable: {e.Message}", e);
        }
        return new HfTokenizer(TokenizerKind.ByteLevelBpe, inner, tokenToId, specials, files, model.AddPrefixSpace,
            settings.CleanUpTokenizationSpaces, dir);
    }

    private static HfTokenizer CreateSentencePiece(string dir, string path, byte[] bytes, TokenizerSettings settings, Dictionary<string, byte[]> files)
    {
        SentencePieceTokenizer Create(IReadOnlyDictionary<string, int>? extra)
        {
            try
            {
                return SentencePieceTokenizer.Create(new MemoryStream(bytes, writable: false), false, false, extra);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // The protobuf reader throws many types on a damaged file; one clear error names it.
                throw new TokenizerLoadException(path, $"not a valid SentencePiece model ({e.GetType().Name}: {e.Message})", e);
            }
        }

        var plain = Create(null);
        var tokenToId = new Dictionary<string, int>(plain.Vocabulary, StringComparer.Ordinal);
        if (tokenToId.Count == 0) throw new TokenizerLoadException(path, "the SentencePiece model has no pieces");
        int? Valid(int id) => id >= 0 && id < plain.Vocabulary.Count ? id : null;
        var specials = ResolvedSpecials.Resolve(dir, tokenToId, settings, [], templateBosId: null, defaultAddsBos: true,
            defaultBos: Valid(plain.BeginningOfSentenceId), defaultEos: Valid(plain.EndOfSentenceId), defaultUnk: Valid(plain.UnknownId));
        var split = specials.SplitTokens(tokenToId);
        var inner = split.Count > 0 ? Create(split) : plain;
        return new HfTokenizer(TokenizerKind.SentencePiece, inner, tokenToId, specials, files, addPrefixSpace: false,
            settings.CleanUpTokenizationSpaces, dir);
    }

    private static int? FirstPresent(Dictionary<string, int> vocab, params string[] tokens)
    {
        foreach (var t in tokens)
            if (vocab.TryGetValue(t, out int id)) return id;
        return null;
    }

    /// <summary>Special-token ids of a checkpoint, resolved against its vocabulary.</summary>
    private sealed class ResolvedSpecials
    {
        public int? BosId;
        public int EosId;
        public int PadId;
        public int? UnkId;
        public bool AddsBos;
        public readonly HashSet<int> SpecialIds = new();
        public readonly HashSet<int> AddedIds = new();

        /// <summary>Tokens split out of the text before BPE (added tokens and the named special tokens), as transformers does.</summary>
        public Dictionary<string, int> SplitTokens(Dictionary<string, int> tokenToId)
        {
            var split = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var (token, id) in tokenToId)
                if (AddedIds.Contains(id)) split[token] = id;
            return split;
        }

        public static ResolvedSpecials Resolve(string dir, Dictionary<string, int> tokenToId, TokenizerSettings settings,
            IReadOnlyList<Sourced<AddedToken>> modelAddedTokens, int? templateBosId, bool defaultAddsBos,
            int? defaultBos, int? defaultEos, int? defaultUnk)
        {
            var r = new ResolvedSpecials();
            // Added tokens: tokenizer.json's list, then tokenizer_config.json's added_tokens_decoder / added_tokens.json.
            foreach (var (added, file) in modelAddedTokens.Concat(settings.AddedTokens))
            {
                if (tokenToId.TryGetValue(added.Content, out int existing) && existing != added.Id && file.EndsWith(TokenizerJsonFile, StringComparison.Ordinal))
                    throw new TokenizerLoadException(file, $"added token \"{added.Content}\" has id {added.Id} but the vocabulary gives it id {existing}");
                tokenToId[added.Content] = added.Id;
                r.AddedIds.Add(added.Id);
                if (added.Special) r.SpecialIds.Add(added.Id);
            }

            int? Named(Sourced<string>? token)
            {
                if (token is not { } t) return null;
                if (!tokenToId.TryGetValue(t.Value, out int id))
                    throw new TokenizerLoadException(t.File, $"special token \"{t.Value}\" is not in the vocabulary");
                // A named special token is matched whole in the text and dropped by skip_special_tokens.
                r.AddedIds.Add(id);
                r.SpecialIds.Add(id);
                return id;
            }
            int? ById(Sourced<int>? source, string key)
            {
                if (source is not { } s) return null;
                if (s.Value < 0 || !tokenToId.ContainsValue(s.Value))
                    throw new TokenizerLoadException(s.File, $"\"{key}\" {s.Value} is not an id of the tokenizer's vocabulary");
                r.SpecialIds.Add(s.Value);
                return s.Value;
            }

            // The family's own tokens (SentencePiece's <s>/</s>/<unk>, GPT-2's <|endoftext|>) are special tokens of the
            // tokenizer class in transformers even without a tokenizer_config.json: matched whole, skipped on decode.
            int? Default(int? id)
            {
                if (id is int i) { r.AddedIds.Add(i); r.SpecialIds.Add(i); }
                return id;
            }
            int? bos = Named(settings.BosToken) ?? ById(settings.BosTokenId, "bos_token_id") ?? templateBosId ?? Default(defaultBos);
            int? eos = Named(settings.EosToken) ?? ById(settings.EosTokenId, "eos_token_id") ?? Default(defaultEos);
            int? unk = Named(settings.UnkToken) ?? Default(defaultUnk);
            int? pad = Named(settings.PadToken) ?? ById(settings.PadTokenId, "pad_token_id");
            foreach (var extra in settings.AdditionalSpecialTokens) Named(extra);

            r.EosId = eos ?? throw new TokenizerLoadException(dir,
                $"no eos token: none named in {TokenizerSettings.TokenizerConfigFile} or {TokenizerSettings.SpecialTokensMapFile}, " +
                $"no eos_token_id in {TokenizerSettings.GenerationConfigFile} or {TokenizerSettings.ConfigFile}, and no </s> or <|endoftext|> in the vocabulary");
            r.PadId = pad ?? r.EosId;
            r.UnkId = unk;
            r.BosId = bos;
            foreach (var id in new[] { bos, eos, unk, pad })
                if (id is int i) r.SpecialIds.Add(i);

            // add_bos_token in tokenizer_config.json wins; else tokenizer.json's post-processor template; else the family's default.
            r.AddsBos = settings.AddBosToken?.Value ?? (templateBosId is not null || defaultAddsBos);
            if (r.AddsBos && r.BosId is null)
                throw new TokenizerLoadException(settings.AddBosToken?.File ?? dir,
                    "the tokenizer prepends a bos token but none is defined (bos_token / bos_token_id)");
            return r;
        }
    }
}
