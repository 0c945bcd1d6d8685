using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Tokenization;
using WeakTeacher.Engine.Training;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Labelling;

/// <summary>A teacher's label for one pair: <see cref="Label"/> 0 = A preferred, 1 = B; margin = reward_a - reward_b.</summary>
public sealed record PairLabel(int Label, double RewardA, double RewardB, double Margin, double Confidence);

/// <summary>How pairs are tokenised and labelled.</summary>
public sealed record LabelingOptions
{
    public int MaxLength { get; init; } = WeakTeacher.Engine.Data.TokenizationOptions.DefaultMaxLength;
    public int MaxPromptLength { get; init; } = WeakTeacher.Engine.Data.TokenizationOptions.DefaultMaxPromptLength;
    /// <summary>Scale of the confidence sigmoid(beta |margin|) (the teacher's DPO beta; 1 for a reward model).</summary>
    public double Beta { get; init; } = 0.1;
    /// <summary>Each batch's sequences packed into rows (<see cref="Data.Collator.Layout"/>, as padding_free training), so the
    /// forwards spend almost nothing on padding, the chosen/rejected length difference inside a pair included; the
    /// rewards equal the padded batch's within float rounding. On by default: labelling's order never matters.</summary>
    public bool PaddingFree { get; init; } = true;
}

/// <summary>The labels of a whole set, in input order, with the pairs a margin filter kept.</summary>
public sealed record LabellingResult(IReadOnlyList<UnlabelledPair> Pairs, IReadOnlyList<PairLabel> Labels, IReadOnlyList<bool> Kept, double MarginThreshold)
{
    public int KeptCount => Kept.Count(k => k);

    /// <summary>teacher_vs_human: the fraction of all labelled pairs with a human label where the teacher agrees with it
    /// (the same meaning as in the report's label table); null when none has one.</summary>
    public double? HumanAgreement => Agreement(keptOnly: false);

    /// <summary>teacher_vs_human_kept: the same over the pairs the margin filter kept (what the student trains on).</summary>
    public double? KeptHumanAgreement => Agreement(keptOnly: true);

    private double? Agreement(bool keptOnly)
    {
        int n = 0, agree = 0;
        for (int i = 0; i < Pairs.Count; i++)
        {
            if ((keptOnly && !Kept[i]) || Pairs[i].HumanLabel is not int human) continue;
            n++;
            if (human == Labels[i].Label) agree++;
        }
        return n == 0 ? null : (double)agree / n;
    }

    /// <summary>The kept pairs as labelled rows with reward_a, reward_b, margin, confidence beside them.</summary>
    public IEnumerable<LabelledRow> Rows()
    {
        for (int i = 0; i < Pairs.Count; i++)
        {
            if (!Kept[i]) continue;
            var l = Labels[i];
            yield return new LabelledRow(Pairs[i], l.Label)
            {
                Extra = new Dictionary<string, object?>
                {
                    ["reward_a"] = l.RewardA,
                    ["reward_b"] = l.RewardB,
                    ["margin"] = l.Margin,
                    ["confidence"] = l.Confidence,
                },
            };
        }
    }

    /// <summary>The kept pairs as preference examples (chosen = the teacher's choice), for training a student.</summary>
    public IReadOnlyList<PreferenceExample> ToPreferences() =>
        Pairs.Select((p, i) => (p, i)).Where(x => Kept[x.i]).Select(x => x.p.ToPreference(Labels[x.i].Label)).ToList();

    /// <summary>Writes the kept pairs to <paramref name="path"/> in the input's own format (or <paramref name="format"/>).</summary>
    public int Write(string path, DataFormat format = DataFormat.Auto) => PreferenceDataWriter.WriteLabelled(path, Rows(), format);
}

/// <summary>
/// Labels unlabelled pairs with a weak teacher (paper Sec. 3.1 step 2): a DPO teacher's implicit reward
/// r(x, y) = log pi(y|x) - log pi_ref(y|x) (summed over response tokens; chosen = larger r, via
/// <see cref="PreferenceScoring.LabelPairs"/>), or a reward model's score (Appendix C). Deterministic: eval mode, and
/// <see cref="LabelAll"/> forms its batches from the pairs' lengths alone (<see cref="LengthBatches"/>). <see cref="LabelBatch"/> is safe to call from several threads (one batch at a time), so a
/// service can keep the models loaded and label streams of pairs.
/// </summary>
public sealed class WeakLabeler : IDisposable
{
    private readonly object _gate = new();
    private readonly CausalLM? _policy;
    private readonly CausalLM? _reference;
    private readonly RewardModel? _rewardModel;
    private readonly bool _ownsModels;
    private readonly PreferenceTokenizer _rules;
    private readonly ITokenizer _tokenizer;

    private WeakLabeler(CausalLM? policy, CausalLM? reference, RewardModel? rewardModel, ITokenizer tokenizer, LabelingOptions options, bool ownsModels)
    {
        _policy = policy;
        _reference = reference;
        _rewardModel = rewardModel;
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Options = options ?? throw new ArgumentNullException(nameof(options));
        _ownsModels = ownsModels;
        _rules = new PreferenceTokenizer(tokenizer, new TokenizationOptions { MaxLength = options.MaxLength, MaxPromptLength = options.MaxPromptLength });
        _policy?.eval();
        _reference?.eval();
        _rewardModel?.eval();
    }

    public LabelingOptions Options { get; }
    public bool IsRewardModelTeacher => _rewardModel is not null;

    /// <summary>A DPO teacher: the trained policy and its reference (the SFT model it was trained from). The caller keeps ownership.</summary>
    public static WeakLabeler FromDpoTeacher(CausalLM policy, CausalLM reference, ITokenizer tokenizer, LabelingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(reference);
        return new WeakLabeler(policy, reference, null, tokenizer, options ?? new LabelingOptions(), ownsModels: false);
    }

    /// <summary>A DPO teacher loaded from two checkpoint folders; the labeler owns (and disposes) the models.</summary>
    public static WeakLabeler FromDpoTeacher(string policyDir, string referenceDir, ITokenizer tokenizer, LabelingOptions? options = null,
        ModelLoadOptions? loadOptions = null)
    {
        var policy = PretrainedModel.Load(policyDir, loadOptions);
        try
        {
            var reference = PretrainedModel.Load(referenceDir, loadOptions);
            return new WeakLabeler(policy, reference, null, tokenizer, options ?? new LabelingOptions(), ownsModels: true);
        }
        catch
        {
            policy.Dispose();
            throw;
        }
    }

    /// <summary>A reward-model teacher: label by score difference; confidence sigmoid(beta |margin|) (beta 1 = the Bradley-Terry probability).</summary>
    public static WeakLabeler FromRewardModel(RewardModel model, ITokenizer tokenizer, LabelingOptions? options = null, bool ownsModel = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        return new WeakLabeler(null, null, model, tokenizer, options ?? new LabelingOptions { Beta = 1.0 }, ownsModel);
    }

    /// <summary>Labels one batch of pairs (all in one forward per model). Thread-safe: concurrent calls run one after another.</summary>
    public IReadOnlyList<PairLabel> LabelBatch(IReadOnlyList<UnlabelledPair> pairs)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        if (pairs.Count == 0) return Array.Empty<PairLabel>();
        return LabelTokenized(pairs.Select(p => _rules.Tokenize(p.Prompt, p.ResponseA, p.ResponseB)).ToList());
    }

    /// <summary>The labels of tokenised pairs, all in one batch per model.</summary>
    private PairLabel[] LabelTokenized(IReadOnlyList<TokenizedPair> tokenized)
    {
        lock (_gate)
        {
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            int b = tokenized.Count;
            ImplicitRewardLabels labels;
            if (_rewardModel is not null)
            {
                using var batch = Collator.CollatePreferences(tokenized, _tokenizer.PadTokenId, _rewardModel.Device, Options.PaddingFree, _rewardModel.Config.HiddenSize);
                var rewards = _rewardModel.Rewards(batch);
                var zero = zeros_like(rewards.narrow(0, 0, b));
                labels = PreferenceScoring.LabelPairs(rewards.narrow(0, 0, b), zero, rewards.narrow(0, b, b), zero, Options.Beta);
            }
            else
            {
                using var batch = Collator.CollatePreferences(tokenized, _tokenizer.PadTokenId, _policy!.Device, Options.PaddingFree, _policy.Config.HiddenSize);
                var policy = ResponseLogProbs.Compute(_policy, batch);
                var reference = ResponseLogProbs.Compute(_reference!, batch).to(policy.device);
                labels = PreferenceScoring.LabelPairs(policy.narrow(0, 0, b), reference.narrow(0, 0, b), policy.narrow(0, b, b), reference.narrow(0, b, b), Options.Beta);
            }
            var rewardA = labels.RewardA.cpu().to(ScalarType.Float64).data<double>().ToArray();
            var rewardB = labels.RewardB.cpu().to(ScalarType.Float64).data<double>().ToArray();
            var margin = labels.Margin.cpu().to(ScalarType.Float64).data<double>().ToArray();
            var label = labels.Label.cpu().data<long>().ToArray();
            var confidence = labels.Confidence.cpu().to(ScalarType.Float64).data<double>().ToArray();
            var result = new PairLabel[b];
            for (int i = 0; i < b; i++) result[i] = new PairLabel((int)label[i], rewardA[i], rewardB[i], margin[i], confidence[i]);
            return result;
        }
    }

    /// <summary>
    /// The teacher's reward of each (prompt, response) on its own, as one side of <see cref="LabelBatch"/> gets it: a DPO
    /// teacher's implicit reward log pi(y|x) - log pi_ref(y|x) of the response tokens, or the reward model's score.
    /// The texts are taken as given (already templated). Thread-safe like <see cref="LabelBatch"/>.
    /// </summary>
    public IReadOnlyList<double> ScoreBatch(IReadOnlyList<(string Prompt, string Response)> sequences)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        if (sequences.Count == 0) return Array.Empty<double>();
        lock (_gate)
        {
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            var tokenized = sequences.Select(s => _rules.TokenizeSequence(s.Prompt, s.Response)).ToList();
            Tensor rewards;
            if (_rewardModel is not null)
            {
                using var batch = Collator.CollateSequences(tokenized, _tokenizer.PadTokenId, _rewardModel.Device, Options.PaddingFree, _rewardModel.Config.HiddenSize);
                rewards = _rewardModel.Rewards(batch);
            }
            else
            {
                using var batch = Collator.CollateSequences(tokenized, _tokenizer.PadTokenId, _policy!.Device, Options.PaddingFree, _policy.Config.HiddenSize);
                var policy = ResponseLogProbs.Compute(_policy, batch);
                var reference = ResponseLogProbs.Compute(_reference!, batch).to(policy.device);
                rewards = policy - reference;
            }
            return rewards.cpu().to(ScalarType.Float64).data<double>().ToArray();
        }
    }

    /// <summary>
    /// Labels every pair, in batches of <paramref name="batchSize"/> pairs of similar length: within each window of
    /// <see cref="LengthBatches.Window"/> pairs the pairs are sorted by their longer side, so a batch pads little; the
    /// labels come back in input order. Windows are aligned runs of the input, so a label shard of whole windows
    /// (<see cref="Pipeline.LabelShards.Slice"/>) forms the very batches of a single run. With
    /// <paramref name="marginQuantile"/> q &gt; 0 only pairs whose |margin| is at or above the q-quantile of all |margins|
    /// are kept (0 keeps all, as the paper).
    /// </summary>
    public LabellingResult LabelAll(IReadOnlyList<UnlabelledPair> pairs, int batchSize = 16, double marginQuantile = 0,
        IProgress<JobProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        if (!(marginQuantile >= 0 && marginQuantile < 1))
            throw new ArgumentOutOfRangeException(nameof(marginQuantile), marginQuantile, "the margin quantile must lie in [0, 1)");
        var tokenized = pairs.Select(p => _rules.Tokenize(p.Prompt, p.ResponseA, p.ResponseB)).ToArray();
        var plan = LengthBatches.Plan(tokenized.Select(t => t.LongerLength).ToArray(), batchSize, LengthBatches.Window(batchSize));
        var labels = new PairLabel[pairs.Count];
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int done = 0;
        for (int k = 0; k < plan.Count; k++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var members = plan[k];
            var batchLabels = LabelTokenized(members.Select(i => tokenized[i]).ToArray());
            for (int j = 0; j < members.Length; j++) labels[members[j]] = batchLabels[j];
            done += members.Length;
            if (progress is not null)
            {
                double elapsed = clock.Elapsed.TotalSeconds;
                TimeSpan? eta = k + 1 < plan.Count ? TimeSpan.FromSeconds(elapsed / (k + 1) * (plan.Count - k - 1)) : TimeSpan.Zero;
                progress.Report(new JobProgress("label", k + 1, plan.Count,
                    new Dictionary<string, double> { ["pairs"] = done }, 0, eta));
            }
        }
        return Filter(pairs, labels, marginQuantile);
    }

    /// <summary>The labels of a whole set with the margin filter applied: with q &gt; 0 a pair is kept when its |margin| is
    /// at or above the q-quantile of all |margins| (so it needs every label of the set, however they were computed).</summary>
    public static LabellingResult Filter(IReadOnlyList<UnlabelledPair> pairs, IReadOnlyList<PairLabel> labels, double marginQuantile)
    {
        if (pairs.Count != labels.Count) throw new ArgumentException($"{labels.Count} labels for {pairs.Count} pairs", nameof(labels));
        if (!(marginQuantile >= 0 && marginQuantile < 1))
            throw new ArgumentOutOfRangeException(nameof(marginQuantile), marginQuantile, "the margin quantile must lie in [0, 1)");
        double threshold = marginQuantile > 0 ? Quantile(labels.Select(l => Math.Abs(l.Margin)).ToArray(), marginQuantile) : 0;
        var kept = labels.Select(l => marginQuantile <= 0 || Math.Abs(l.Margin) >= threshold).ToList();
        return new LabellingResult(pairs, labels, kept, threshold);
    }

    /// <summary>The q-quantile with linear interpolation between order statistics (numpy's default).</summary>
    public static double Quantile(double[] values, double q)
    {
        if (values.Length == 0) return 0;
        var sorted = values.OrderBy(v => v).ToArray();
        double position = q * (sorted.Length - 1);
        int lower = (int)Math.Floor(position);
        int upper = Math.Min(lower + 1, sorted.Length - 1);
        return sorted[lower] + (sorted[upper] - sorted[lower]) * (position - lower);
    }

    public void Dispose()
    {
        if (!_ownsModels) return;
        _policy?.Dispose();
        _reference?.Dispose();
        _rewardModel?.Dispose();
    }
}
