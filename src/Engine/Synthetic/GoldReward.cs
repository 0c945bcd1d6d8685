using WeakTeacher.Engine.Evaluation;

namespace WeakTeacher.Engine.Synthetic;

/// <summary>The parts of a gold reward, for reports and debugging. <see cref="Total"/> is the clamped sum.</summary>
public sealed record GoldRewardBreakdown(
    SyntheticPromptKind Kind,
    double Content,
    double Politeness,
    double Padding,
    double Form,
    double Total);

/// <summary>
/// The synthetic task's gold reward. It scores any text, not only what the generator wrote: it parses the
/// request from the prompt, then looks in the response for the answer (the right number, the asked-for count of
/// items of the right category, the right yes/no, a greeting to the right person, the steps in order), for
/// polite and rude phrases, for needless filler and length, and for broken form (empty, unknown words,
/// repetition, a cut-off ending, running on into a new "Question:" turn). Roughly -5 (garbage) to +8 (a right,
/// polite, concise answer), clamped to [-5, 10], like the paper's gold reward scale.
/// </summary>
public sealed class GoldReward : IGoldScorer
{
    public const double Min = -5.0;
    public const double Max = 10.0;

    public string Name => "synthetic-gold";

    public double Score(string prompt, string response) => Explain(prompt, response).Total;

    public IReadOnlyList<double> ScoreBatch(IReadOnlyList<(string Prompt, string Response)> items)
    {
        ArgumentNullException.ThrowIfNull(items);
        var scores = new double[items.Count];
        for (int i = 0; i < items.Count; i++) scores[i] = Score(items[i].Prompt, items[i].Response);
        return scores;
    }

    /// <summary>The reward with its parts.</summary>
    public GoldRewardBreakdown Explain(string prompt, string response)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(response);
        var request = ParsePrompt(prompt);

        double form = 0;
        string text = response;
        // A model that runs on into the next turn has not stopped where it should.
        int leak = text.IndexOf("Question:", StringComparison.Ordinal);
        if (leak >= 0) { text = text[..leak]; form -= 1.0; }
        text = text.Trim();

        var words = TextTools.Words(text);
        if (words.Count == 0) return new GoldRewardBreakdown(request.Kind, 0, 0, 0, Min, Min);

        form += FormScore(text, words);
        var markers = new int[4];
        foreach (var (group, _) in SyntheticPhrases.Markers.Find(words)) markers[group]++;
        double content = request.Kind switch
        {
            SyntheticPromptKind.Arithmetic => ArithmeticContent(request, words),
            SyntheticPromptKind.List => ListContent(request, words),
            SyntheticPromptKind.Fact => FactContent(request, words),
            SyntheticPromptKind.Greeting => GreetingContent(request, words, markers[SyntheticPhrases.GreetingGroup] > 0),
            SyntheticPromptKind.Procedure => ProcedureContent(request, words),
            _ => 0,
        };
        // Politeness helps up to a point (saying "thank you" ten times is not ten times nicer); rudeness hurts more.
        double politeness = Math.Min(2.0, 1.0 * markers[SyntheticPhrases.PoliteGroup]) - Math.Min(4.5, 1.5 * markers[SyntheticPhrases.RudeGroup]);
        double padding = PaddingScore(request.Kind, words.Count, markers[SyntheticPhrases.FillerGroup]);
        double total = Math.Clamp(content + politeness + padding + form, Min, Max);
        return new GoldRewardBreakdown(request.Kind, content, politeness, padding, form, total);
    }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, SyntheticPrompt> _requests = new(StringComparer.Ordinal);

    /// <summary>Parses the request once per distinct prompt: evaluation scores many responses per prompt.</summary>
    private SyntheticPrompt ParsePrompt(string prompt)
    {
        if (_requests.TryGetValue(prompt, out var cached)) return cached;
        var parsed = SyntheticPrompt.Parse(prompt);
        if (_requests.Count >= 65536) _requests.Clear();   // bounded: a scorer may live through many data sets
        _requests[prompt] = parsed;
        return parsed;
    }

    // ---- form ---------------------------------------------------------------------------------------

    private static double FormScore(string text, List<string> words)
    {
        double form = 0;
        // A finished sentence; a cut-off answer loses this.
        char last = text[^1];
        form += last is '.' or '!' or '?' ? 0.5 : -0.5;
        if (words.Count < 2) form -= 2.0;

        // Garbage: words that are not in the task's language (numbers are always words).
        int unknown = words.Count(w => !char.IsDigit(w[0]) && !SyntheticWorld.Lexicon.Contains(w));
        form -= 5.0 * unknown / words.Count;

        // Stuttering ("the the the") and looping (a phrase again and again).
        int stutter = 0;
        for (int i = 1; i < words.Count; i++) if (words[i] == words[i - 1]) stutter++;
        form -= Math.Min(4.0, 0.8 * stutter);
        if (words.Count >= 3)
        {
            // Word ids local to this response make trigrams exact integer keys.
            var ids = new Dictionary<string, int>(StringComparer.Ordinal);
            var seen = new HashSet<long>();
            int repeated = 0, trigrams = words.Count - 2;
            long Id(string w) => ids.TryGetValue(w, out int id) ? id : ids[w] = ids.Count;
            long prev2 = Id(words[0]), prev1 = Id(words[1]);
            for (int i = 2; i < words.Count; i++)
            {
                long current = Id(words[i]);
                if (!seen.Add((prev2 << 42) | (prev1 << 21) | current)) repeated++;
                prev2 = prev1;
                prev1 = current;
            }
            form -= 4.0 * repeated / trigrams;
        }
        return form;
    }

    private static double PaddingScore(SyntheticPromptKind kind, int wordCount, int fillers)
    {
        int allowance = kind switch
        {
            SyntheticPromptKind.Arithmetic => 16,
            SyntheticPromptKind.Fact => 18,
            SyntheticPromptKind.List => 20,
            SyntheticPromptKind.Greeting => 20,
            SyntheticPromptKind.Procedure => 30,
            _ => 24,
        };
        return -Math.Min(4.5, 0.9 * fillers) - 0.07 * Math.Max(0, wordCount - allowance);
    }

    // ---- content per request kind -------------------------------------------------------------------

    private static double ArithmeticContent(SyntheticPrompt p, List<string> words)
    {
        // The answer is the last number stated in digits ("7 plus 5 is 12" answers 12); a number word
        // ("twelve") only when no digits are written, since filler such as "one thing" also has number words.
        int? answer = null, wordAnswer = null;
        foreach (var w in words)
        {
            if (char.IsDigit(w[0])) answer = w.Length <= 6 ? int.Parse(w) : -1;
            else
            {
                int idx = Array.IndexOf(SyntheticWorld.NumberWords, w);
                if (idx >= 0) wordAnswer = idx;
            }
        }
        answer ??= wordAnswer;
        if (answer is null) return -1.0;
        return answer == p.Value ? 5.0 : -1.5;
    }

    private static double ListContent(SyntheticPrompt p, List<string> words)
    {
        var inCategory = SyntheticWorld.Categories[p.Category].Items;
        var itemToCategory = ItemCategories;
        var distinctRight = new HashSet<string>();
        var distinctWrong = new HashSet<string>();
        int duplicates = 0;
        foreach (var w in words)
        {
            if (!itemToCategory.ContainsKey(w)) continue;
            bool fresh = inCategory.Contains(w) ? distinctRight.Add(w) : distinctWrong.Add(w);
            if (!fresh) duplicates++;
        }
        if (distinctRight.Count + distinctWrong.Count == 0) return -1.0;
        double score = 5.0 - 1.5 * Math.Abs(distinctRight.Count - p.Count) - 1.5 * distinctWrong.Count - 1.0 * duplicates;
        return Math.Max(-2.0, score);
    }

    private static readonly Dictionary<string, int> ItemCategories = BuildItemCategories();

    private static Dictionary<string, int> BuildItemCategories()
    {
        var map = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int c = 0; c < SyntheticWorld.Categories.Length; c++)
            foreach (var item in SyntheticWorld.Categories[c].Items) map[item] = c;
        return map;
    }

    private static double FactContent(SyntheticPrompt p, List<string> words)
    {
        int yes = words.IndexOf("yes"), no = words.IndexOf("no");
        if (yes < 0 && no < 0) return -1.0;
        bool saysYes = no < 0 || (yes >= 0 && yes < no);
        double score = saysYes == p.Truth ? 4.0 : -1.5;
        if (saysYes == p.Truth && words.Contains(p.Subject[(p.Subject.LastIndexOf(' ') + 1)..])) score += 1.0;
        if (yes >= 0 && no >= 0) score -= 1.0;   // hedging both ways
        return score;
    }

    private static double GreetingContent(SyntheticPrompt p, List<string> words, bool greets)
    {
        bool right = words.Contains(p.Addressee);
        int wrong = SyntheticWorld.Addressees.Count(a => a != p.Addressee && words.Contains(a));
        if (!greets && !right) return -1.0;
        return (greets ? 2.5 : 0) + (right ? 2.5 : 0) - 1.5 * wrong;
    }

    private static double ProcedureContent(SyntheticPrompt p, List<string> words)
    {
        // Steps of the asked-for procedure in order of first appearance; steps of another procedure count against.
        var found = new List<(int Position, int Step)>();
        var seen = new HashSet<int>();
        int foreign = 0, duplicates = 0;
        foreach (var (group, position) in SyntheticPhrases.Steps.Find(words))
        {
            int proc = group / 3, step = group % 3;
            if (proc != p.Procedure) { if (seen.Add(group)) foreign++; }
            else if (seen.Add(group)) found.Add((position, step));
            else duplicates++;
        }
        if (found.Count == 0 && foreign == 0) return -1.0;
        var order = found.OrderBy(f => f.Position).Select(f => f.Step).ToList();
        int inOrder = LongestIncreasingRun(order);
        double score = 5.0 * inOrder / 3.0 - 1.5 * foreign - 1.0 * duplicates;
        return Math.Max(-2.0, score);
    }

    /// <summary>Length of the longest strictly increasing subsequence (steps done in the right order).</summary>
    private static int LongestIncreasingRun(List<int> xs)
    {
        var best = new int[xs.Count];
        int result = 0;
        for (int i = 0; i < xs.Count; i++)
        {
            best[i] = 1;
            for (int j = 0; j < i; j++) if (xs[j] < xs[i]) best[i] = Math.Max(best[i], best[j] + 1);
            result = Math.Max(result, best[i]);
        }
        return result;
    }
}
