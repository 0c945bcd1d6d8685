using WeakTeacher.Engine.Data;
using Xunit;
using static TorchSharp.torch;
using static WeakTeacher.Tests.Data.CharTokenizer;

namespace WeakTeacher.Tests.Data;

public class TokenizationTests
{
    private static long[][] Rows(Tensor tensor)
    {
        var values = tensor.data<long>().ToArray();
        int width = (int)tensor.shape[1];
        return Enumerable.Range(0, (int)tensor.shape[0]).Select(r => values.Skip(r * width).Take(width).ToArray()).ToArray();
    }

    private static long[] L(params int[] values) => values.Select(v => (long)v).ToArray();

    [Fact]
    public void BatchPutsChosenThenRejectedWithAnExactResponseMask()
    {
        var tokenizer = new PreferenceTokenizer(new CharTokenizer());
        var pair = tokenizer.Tokenize(new PreferenceExample("abc", "de", "f"));
        Assert.Equal(new[] { Bos, Id('a'), Id('b'), Id('c') }, pair.PromptIds);
        Assert.Equal(new[] { Id('d'), Id('e'), Eos }, pair.ChosenIds);
        Assert.Equal(new[] { Id('f'), Eos }, pair.RejectedIds);

        var second = tokenizer.Tokenize(new PreferenceExample("x", "yz", "w"));
        using var batch = Collator.CollatePreferences(new[] { pair, second }, Pad);
        Assert.Equal(2, batch.PairCount);
        Assert.Equal(new long[] { 4, 7 }, batch.InputIds.shape);
        Assert.Equal(ScalarType.Int64, batch.InputIds.dtype);
        Assert.Equal(ScalarType.Int64, batch.ResponseMask.dtype);

        var ids = Rows(batch.InputIds);
        var attention = Rows(batch.AttentionMask);
        var response = Rows(batch.ResponseMask);
        // Row 0: pair 0 chosen; row 1: pair 1 chosen; row 2: pair 0 rejected; row 3: pair 1 rejected.
        Assert.Equal(L(Bos, Id('a'), Id('b'), Id('c'), Id('d'), Id('e'), Eos), ids[0]);
        Assert.Equal(L(1, 1, 1, 1, 1, 1, 1), attention[0]);
        Assert.Equal(L(0, 0, 0, 0, 1, 1, 1), response[0]);
        Assert.Equal(L(Bos, Id('x'), Id('y'), Id('z'), Eos, Pad, Pad), ids[1]);
        Assert.Equal(L(1, 1, 1, 1, 1, 0, 0), attention[1]);
        Assert.Equal(L(0, 0, 1, 1, 1, 0, 0), response[1]);
        Assert.Equal(L(Bos, Id('a'), Id('b'), Id('c'), Id('f'), Eos, Pad), ids[2]);
        Assert.Equal(L(0, 0, 0, 0, 1, 1, 0), response[2]);
        Assert.Equal(L(Bos, Id('x'), Id('w'), Eos, Pad, Pad, Pad), ids[3]);
        Assert.Equal(L(1, 1, 1, 1, 0, 0, 0), attention[3]);
        Assert.Equal(L(0, 0, 1, 1, 0, 0, 0), response[3]);
        Assert.Equal(new[] { 7, 5, 6, 4 }, batch.Lengths);
    }

    [Fact]
    public void LongPromptKeepsItsEndAsTrl()
    {
        var tokenizer = new PreferenceTokenizer(new CharTokenizer(), new TokenizationOptions { MaxLength = 8, MaxPromptLength = 4 });
        // BOS + 8 prompt ids + 3 chosen ids = 12 > 8: the prompt keeps its last 4 ids (BOS goes, as in TRL).
        var pair = tokenizer.Tokenize("abcdefgh", "xy", "z");
        Assert.Equal(Ids("efgh"), pair.PromptIds);
        Assert.Equal(new[] { Id('x'), Id('y'), Eos }, pair.ChosenIds);
        Assert.Equal(new[] { Id('z'), Eos }, pair.RejectedIds);
        using var batch = Collator.CollatePreferences(new[] { pair }, Pad);
        Assert.Equal(L(0, 0, 0, 0, 1, 1, 1), Rows(batch.ResponseMask)[0]);
        Assert.Equal(L(0, 0, 0, 0, 1, 1, 0), Rows(batch.ResponseMask)[1]);

        var start = new PreferenceTokenizer(new CharTokenizer(), new TokenizationOptions { MaxLength = 8, MaxPromptLength = 4, TruncationMode = TruncationMode.KeepStart });
        Assert.Equal(new[] { Bos, Id('a'), Id('b'), Id('c') }, start.Tokenize("abcdefgh", "xy", "z").PromptIds);

        // A prompt that fits with the longer response is not cut, even when longer than MaxPromptLength.
        var roomy = new PreferenceTokenizer(new CharTokenizer(), new TokenizationOptions { MaxLength = 12, MaxPromptLength = 4 });
        Assert.Equal(9, roomy.Tokenize("abcdefgh", "xy", "z").PromptIds.Length);
    }

    [Fact]
    public void LongResponsesAreCutToMaxLengthMinusMaxPromptLength()
    {
        var tokenizer = new PreferenceTokenizer(new CharTokenizer(), new TokenizationOptions { MaxLength = 6, MaxPromptLength = 3 });
        // Prompt BOS+ab fits its limit; 3 + 7 > 6 so both responses are cut to 6 - 3 = 3 ids (the chosen loses its EOS).
        var pair = tokenizer.Tokenize("ab", "uvwxyz", "q");
        Assert.Equal(new[] { Bos, Id('a'), Id('b') }, pair.PromptIds);
        Assert.Equal(Ids("uvw"), pair.ChosenIds);
        Assert.Equal(new[] { Id('q'), Eos }, pair.RejectedIds);
        using var batch = Collator.CollatePreferences(new[] { pair }, Pad);
        Assert.Equal(new long[] { 2, 6 }, batch.InputIds.shape);
        Assert.Equal(L(0, 0, 0, 1, 1, 1), Rows(batch.ResponseMask)[0]);
        Assert.Equal(L(0, 0, 0, 1, 1, 0), Rows(batch.ResponseMask)[1]);
        Assert.Equal(L(1, 1, 1, 1, 1, 0), Rows(batch.AttentionMask)[1]);

        // Both cuts at once: prompt to its last 3, responses to 3.
        var both = tokenizer.Tokenize("abcdef", "uvwxyz", "q");
        Assert.Equal(Ids("def"), both.PromptIds);
        Assert.Equal(Ids("uvw"), both.ChosenIds);
    }

    [Fact]
    public void NoBosWhenTheTokenizerAddsNone()
    {
        var tokenizer = new PreferenceTokenizer(new CharTokenizer(addsBos: false));
        var sequence = tokenizer.TokenizeSequence("ab", "c");
        Assert.Equal(Ids("ab"), sequence.PromptIds);
        Assert.Equal(new[] { Id('c'), Eos }, sequence.ResponseIds);
        Assert.Throws<ArgumentOutOfRangeException>(() => new PreferenceTokenizer(new CharTokenizer(), new TokenizationOptions { MaxLength = 4, MaxPromptLength = 4 }));
    }

    [Fact]
    public void SftAndScoringBatchesMaskOnlyTheResponse()
    {
        var tokenizer = new PreferenceTokenizer(new CharTokenizer());
        var sequences = new[] { tokenizer.Tokenize(new SftExample("Q: a", "yes")), tokenizer.TokenizeSequence("Q", "no") };
        using var sft = Collator.CollateSft(sequences, Pad);
        Assert.Equal(new long[] { 2, 9 }, sft.InputIds.shape);
        Assert.Equal(L(0, 0, 0, 0, 0, 1, 1, 1, 1), Rows(sft.ResponseMask)[0]);
        Assert.Equal(L(0, 0, 1, 1, 1, 0, 0, 0, 0), Rows(sft.ResponseMask)[1]);
        Assert.Equal(L(1, 1, 1, 1, 1, 0, 0, 0, 0), Rows(sft.AttentionMask)[1]);
        Assert.Equal(L(Bos, Id('Q'), Id('n'), Id('o'), Eos, Pad, Pad, Pad, Pad), Rows(sft.InputIds)[1]);

        using var scoring = Collator.CollateSequences(sequences, padTokenId: 7);
        Assert.Equal(new[] { 9, 5 }, scoring.Lengths);
        Assert.Equal(7, Rows(scoring.InputIds)[1][8]);
        Assert.Equal(sft.ResponseMask.sum().item<long>(), scoring.ResponseMask.sum().item<long>());
    }

    [Fact]
    public void ReadThenTokenizeTheHhFileEndToEnd()
    {
        using var dir = new TempDir();
        var path = Fixtures.Write(dir, "hh", Container.Jsonl, ReaderTests.HhRows());
        var tokenizer = new PreferenceTokenizer(new CharTokenizer(), new TokenizationOptions { MaxLength = 256, MaxPromptLength = 200 });
        var pairs = PreferenceDataReader.ReadPreferences(path).Select(tokenizer.Tokenize).ToList();
        using var batch = Collator.CollatePreferences(pairs, Pad);
        var ids = Rows(batch.InputIds);
        var mask = Rows(batch.ResponseMask);
        var chosen = new CharTokenizer().Decode(ids[0].Where((_, t) => mask[0][t] == 1).Select(v => (int)v));
        Assert.Equal(" It is 4.", chosen);
        var rejected = new CharTokenizer().Decode(ids[2].Where((_, t) => mask[2][t] == 1).Select(v => (int)v));
        Assert.Equal(" It is 5.", rejected);
    }
}
