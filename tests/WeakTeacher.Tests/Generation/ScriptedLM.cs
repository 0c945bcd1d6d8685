using TorchSharp;
using TorchSharp.Modules;
using WeakTeacher.Engine.Models;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Generation;

/// <summary>
/// A language model whose next-token scores follow a fixed rule, so generation tests know the answer:
/// after token x the best token is (x + stride) mod V (score 10) and the runner-up (x + stride + 1) mod V
/// (score 5), where stride = 1 + (first real token of the row) mod 3. The first real token is read from the
/// key/value cache when one is used, so a cache that loses, mixes or misorders rows gives wrong tokens.
/// With <see cref="Flat"/> every token gets a similar score (for sampling tests).
/// It also checks the contract that the attention mask covers cached plus new tokens.
/// </summary>
internal sealed class ScriptedLM : CausalLM
{
    private readonly Parameter weight;

    public ScriptedLM(int vocab = 16, IReadOnlyList<int>? eos = null, int? pad = 0, bool flat = false)
        : base("ScriptedLM", new ModelConfig
        {
            Family = ModelFamily.Llama,
            ModelType = "scripted",
            VocabSize = vocab,
            HiddenSize = vocab,
            NumHiddenLayers = 1,
            NumAttentionHeads = 1,
            EosTokenIds = eos ?? Array.Empty<int>(),
            PadTokenId = pad,
        })
    {
        Flat = flat;
        weight = new Parameter(eye(vocab)); // logits = hidden: the output projection is the identity
        RegisterComponents();
    }

    public bool Flat { get; }
    public int Calls { get; private set; }

    public override Tensor OutputWeight => weight;

    public override Tensor ForwardHidden(Tensor inputIds, Tensor attentionMask, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        Calls++;
        long cached = cache?.Length ?? 0;
        if (attentionMask.shape[1] != cached + inputIds.shape[1] || attentionMask.shape[0] != inputIds.shape[0])
            throw new InvalidOperationException(
                $"attention mask [{string.Join(",", attentionMask.shape)}] does not cover {cached} cached + {inputIds.shape[1]} new tokens");
        long vocab = Config.VocabSize;
        var asKeys = inputIds.to(ScalarType.Float32).unsqueeze(1).unsqueeze(-1); // [b, 1, T, 1]
        var all = cache is null ? asKeys : cache.Append(0, asKeys, asKeys).Keys;
        var tokens = all.squeeze(-1).squeeze(1).to(ScalarType.Int64);           // [b, P + T]
        var firstReal = attentionMask.argmax(1, keepdim: true);                 // first 1 of each row
        var stride = tokens.gather(1, firstReal).remainder(3) + 1;              // [b, 1]
        Tensor hidden;
        if (Flat)
        {
            // scores 0, 0.1, 0.2, ... shifted by the input token: a broad distribution to sample from
            var ramp = arange(vocab, dtype: ScalarType.Float32) * 0.1f;
            hidden = (ramp.view(1, 1, vocab) + inputIds.to(ScalarType.Float32).unsqueeze(-1) * 0.01f);
        }
        else
        {
            var best = (inputIds + stride).remainder(vocab);
            var second = (inputIds + stride + 1).remainder(vocab);
            hidden = nn.functional.one_hot(best, vocab).to(ScalarType.Float32) * 10
                     + nn.functional.one_hot(second, vocab).to(ScalarType.Float32) * 5;
        }
        return hidden.MoveToOuterDisposeScope();
    }
}
