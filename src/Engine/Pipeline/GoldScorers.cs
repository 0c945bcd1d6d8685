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

    /// <param name="template">The run's prompt template: a reward model scores (prompt, response) formatted as it was
    /// trained, with the one set of tokenisation defaults (<see cref="Data.TokenizationOptions"/>).</param>
    public static OpenedScorer Open(string spec, Device device, string template = "paper")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(spec);
        if (spec == Synthetic) return new OpenedScorer(new GoldReward(), null);
        if (!Directory.Exists(spec))
            throw new ArgumentException($"gold scorer '{spec}' is neither \"{Synthetic}\" nor a reward-model folder", nameof(spec));
        var model = RewardModel.Load(spec, new ModelLoadOptions { Device = device });
        return new OpenedScorer(new RewardModelScorer(model, HfTokenizer.Load(spec), Path.GetFileName(spec.TrimEnd('/')),
            Data.PromptTemplate.Get(template)), model);
    }

    /// <summary>A scorer and the model it owns (disposed with it).</summary>
    public sealed class OpenedScorer(IGoldScorer scorer, IDisposable? owned) : IDisposable
    {
        public IGoldScorer Scorer { get; } = scorer;
        public void Dispose() => owned?.Dispose();
    }

    /// <summary>A reward model as gold scorer: its scalar reward of the prompt and response, templated and tokenised as
    /// its training data was (prompt rendered by the template, HH transcripts as they are; the response spaced as after
    /// that prompt).</summary>
    private sealed class RewardModelScorer(RewardModel model, ITokenizer tokenizer, string name, Data.PromptTemplate template) : IGoldScorer
    {
        public string Name => $"reward-model:{name}";
        public double Score(string prompt, string response) => ScoreBatch(new[] { (prompt, response) })[0];
        public IReadOnlyList<double> ScoreBatch(IReadOnlyList<(string Prompt, string Response)> items)
            => model.Score(Format(template, items), tokenizer).Select(s => (double)s).ToArray();
    }

    /// <summary>(prompt, response) as the trainers see them: the prompt rendered by <paramref name="template"/>, the
    /// response formatted to follow it.</summary>
    internal static IReadOnlyList<(string Prompt, string Response)> Format(Data.PromptTemplate template, IReadOnlyList<(string Prompt, string Response)> items)
        => items.Select(i =>
        {
            var rendered = template.RenderText(i.Prompt);
            return (rendered, template.FormatResponse(rendered, i.Response));
        }).ToList();
}
