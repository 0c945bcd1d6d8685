using TorchSharp;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Tokenization;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

/// <summary>Tests that use torch's global generator or train run alone (parallel tests would shift its stream).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TrainingCollection
{
    public const string Name = "Training (torch global RNG)";
}

/// <summary>One character per token: BOS 0, PAD 1, EOS 2, characters 3..63.</summary>
public sealed class CharTokenizer : ITokenizer
{
    public int VocabSize => 64;
    public int? BosTokenId => 0;
    public int EosTokenId => 2;
    public int PadTokenId => 1;
    public bool AddsBos => true;

    public IReadOnlyList<int> Encode(string text) => text.Select(c => 3 + c % 61).ToArray();

    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) =>
        new(ids.Where(i => i >= 3 || !skipSpecialTokens).Select(i => (char)('?' + i)).ToArray());
}

public sealed class TempDir : IDisposable
{
    public TempDir() => Path = Directory.CreateTempSubdirectory("wt-train-test-").FullName;
    public string Path { get; }
    public string Sub(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}

/// <summary>Synchronous progress sink (Progress&lt;T&gt; posts to the thread pool).</summary>
public sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}

public static class TrainingTestKit
{
    public static readonly CharTokenizer Tokenizer = new();

    public static ModelConfig OptConfig() => new()
    {
        Family = ModelFamily.Opt,
        ModelType = "opt",
        VocabSize = 64,
        HiddenSize = 16,
        NumHiddenLayers = 2,
        NumAttentionHeads = 2,
        IntermediateSize = 32,
        MaxPositionEmbeddings = 128,
        BosTokenId = 0,
        EosTokenIds = new[] { 2 },
        PadTokenId = 1,
        TieWordEmbeddings = true,
    };

    public static CausalLM Opt(long seed = 1) => CausalLMFactory.Create(OptConfig(), seed: seed);

    /// <summary>Easy synthetic preference: chosen responses contain 'x', rejected ones never do.</summary>
    public static List<PreferenceExample> XPreferences(int count, int seed)
    {
        var random = new Random(seed);
        string Word(int n) => new(Enumerable.Range(0, n).Select(_ => (char)('a' + random.Next(0, 8))).ToArray());
        var list = new List<PreferenceExample>();
        for (int i = 0; i < count; i++)
        {
            var prompt = "Q: " + Word(3) + " A: ";
            var chosen = Word(2) + "xx" + Word(2);
            var rejected = Word(6);
            list.Add(new PreferenceExample(prompt, chosen, rejected));
        }
        return list;
    }

    public static Dictionary<string, Tensor> Snapshot(nn.Module model) =>
        model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());

    public static Tensor Logits(CausalLM model, string text)
    {
        var ids = new long[] { 0 }.Concat(Tokenizer.Encode(text).Select(i => (long)i)).ToArray();
        using var noGrad = no_grad();
        var input = tensor(ids).unsqueeze(0);
        return model.Logits(input, ones_like(input));
    }
}
