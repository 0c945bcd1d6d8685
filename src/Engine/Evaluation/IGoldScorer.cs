namespace WeakTeacher.Engine.Evaluation;

/// <summary>
/// A gold reward: the judge that evaluation trusts (the paper's gold reward model). Implementations score a raw
/// prompt (no chat template) and a response; higher is better.
/// </summary>
public interface IGoldScorer
{
    /// <summary>Short name shown in reports.</summary>
    string Name { get; }

    /// <summary>Gold reward of <paramref name="response"/> as an answer to <paramref name="prompt"/>.</summary>
    double Score(string prompt, string response);

    /// <summary>Scores many pairs; model-backed scorers override this to batch their forward passes.</summary>
    IReadOnlyList<double> ScoreBatch(IReadOnlyList<(string Prompt, string Response)> items)
    {
        ArgumentNullException.ThrowIfNull(items);
        var scores = new double[items.Count];
        for (int i = 0; i < items.Count; i++) scores[i] = Score(items[i].Prompt, items[i].Response);
        return scores;
    }
}
