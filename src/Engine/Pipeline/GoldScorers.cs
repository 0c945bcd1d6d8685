using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Evaluation;
using WeakTeacher.Engine.Synthetic;
using WeakTeacher.Engine.Tokenization;
using WeakTeacher.Engine.Training;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>
/// Opens the gold scorer an evaluation names: "synthetic" (the embedded task's gold reward) or the folder of a reward
/// model (trained here, or a Hugging Face *ForSequenceClassification checkpoint of a supported family).
/// </summary>
public static class GoldScorers
{
    public const string Synthetic = "synthetic";

    public static OpenedScorer Open(string spec, Device device)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(spec);
        if (spec == Synthetic) return new OpenedScorer(new GoldReward(), null);
        if (!Directory.Exists(spec))
            throw new ArgumentException($"gold scorer '{spec}' is neither \"{Synthetic}\" nor a reward-model folder", nameof(spec));
        var model = RewardModel.Load(spec, new ModelLoadOptions { Device = device });
        return new OpenedScorer(new RewardModelScorer(model, HfTokenizer.Load(spec), Path.GetFileName(spec.TrimEnd('/'))), model);
    }

    /// <summary>A scorer and the model it owns (disposed with it).</summary>
    public sealed class OpenedScorer(IGoldScorer scorer, IDisposable? owned) : IDisposable
    {
        public IGoldScorer Scorer { get; } = scorer;
        public void Dispose() => owned?.Dispose();
    }

    /// <summary>A reward model as gold scorer: its scalar reward of the prompt (in the paper's template) and response.</summary>
    private sealed class RewardModelScorer(RewardModel model, ITokenizer tokenizer, string name) : IGoldScorer
    {
        private readonly Data.PromptTemplate _template = Data.PromptTemplate.Paper;
        public string Name => $"reward-model:{name}";
        public double Score(string prompt, string response) => ScoreBatch(new[] { (prompt, response) })[0];
        public IReadOnlyList<double> ScoreBatch(IReadOnlyList<(string Prompt, string Response)> items)
            => model.Score(items.Select(i => (_template.Render(i.Prompt), i.Response)).ToList(), tokenizer).Select(s => (double)s).ToArray();
    }
}
