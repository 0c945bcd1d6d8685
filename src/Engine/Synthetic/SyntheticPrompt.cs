using System.Text.RegularExpressions;

namespace WeakTeacher.Engine.Synthetic;

/// <summary>The kinds of request in the synthetic task.</summary>
public enum SyntheticPromptKind
{
    /// <summary>Not recognised as one of the task's requests; only generic qualities are scored.</summary>
    Unknown,
    /// <summary>"What is 7 plus 5?"</summary>
    Arithmetic,
    /// <summary>"Please name three animals."</summary>
    List,
    /// <summary>Yes/no question about the small world: "Is a banana yellow?", "Can a fish fly?".</summary>
    Fact,
    /// <summary>"Please write a polite greeting for my teacher."</summary>
    Greeting,
    /// <summary>"How do I make tea?" (three steps in order).</summary>
    Procedure,
}

/// <summary>
/// A parsed synthetic request: its kind and what a right answer needs. Built by the sampler when generating
/// and by <see cref="Parse"/> when the gold reward scores a (prompt, response) it did not generate.
/// </summary>
internal sealed partial record SyntheticPrompt(string Text, SyntheticPromptKind Kind)
{
    // Arithmetic
    public int A { get; init; }
    public int B { get; init; }
    public string Op { get; init; } = "";
    public int Value => Op switch { "plus" => A + B, "minus" => A - B, "times" => A * B, _ => 0 };

    // List
    public int Count { get; init; }
    public int Category { get; init; }

    // Fact
    public string Subject { get; init; } = "";
    public string Predicate { get; init; } = "";   // colour, ability or part asked about
    public char FactType { get; init; }              // 'c' colour, 'a' ability, 'p' part
    public bool Truth { get; init; }

    // Greeting
    public string Addressee { get; init; } = "";

    // Procedure
    public int Procedure { get; init; }

    // ---- sampling ---------------------------------------------------------------------------------

    public static SyntheticPrompt Sample(SyntheticRandom rng, SyntheticPromptKind? kind = null)
    {
        var k = kind ?? (SyntheticPromptKind)(1 + rng.PickWeighted([0.24, 0.2, 0.24, 0.14, 0.18]));
        var prompt = k switch
        {
            SyntheticPromptKind.Arithmetic => SampleArithmetic(rng),
            SyntheticPromptKind.List => SampleList(rng),
            SyntheticPromptKind.Fact => SampleFact(rng),
            SyntheticPromptKind.Greeting => SampleGreeting(rng),
            SyntheticPromptKind.Procedure => SampleProcedure(rng),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), k, "no sampler for this prompt kind"),
        };
        // An optional context sentence, as real users often add one.
        if (rng.Chance(0.4)) prompt = prompt with { Text = rng.Pick(SyntheticWorld.PromptPrefixes) + " " + prompt.Text };
        return prompt;
    }

    private static SyntheticPrompt SampleArithmetic(SyntheticRandom rng)
    {
        string op = rng.Pick(["plus", "plus", "minus", "times"]);
        int a, b;
        if (op == "times") { a = rng.Next(1, 10); b = rng.Next(1, 10); }
        else if (op == "minus") { a = rng.Next(2, 21); b = rng.Next(1, a + 1); }
        else { a = rng.Next(1, 16); b = rng.Next(1, 16); }
        string text = TextTools.Fill(rng.Pick(SyntheticWorld.ArithmeticPromptTemplates), ("a", a.ToString()), ("op", op), ("b", b.ToString()));
        return new SyntheticPrompt(text, SyntheticPromptKind.Arithmetic) { A = a, B = b, Op = op };
    }

    private static SyntheticPrompt SampleList(SyntheticRandom rng)
    {
        int n = rng.Next(2, 6);
        int cat = rng.Next(SyntheticWorld.Categories.Length);
        string text = TextTools.Fill(rng.Pick(SyntheticWorld.ListPromptTemplates), ("n", SyntheticWorld.NumberWords[n]), ("cat", SyntheticWorld.Categories[cat].Name));
        return new SyntheticPrompt(text, SyntheticPromptKind.List) { Count = n, Category = cat };
    }

    private static SyntheticPrompt SampleFact(SyntheticRandom rng)
    {
        int type = rng.Next(3);
        bool wantTrue = rng.Chance(0.5);
        string subject, predicate, template;
        bool truth;
        char factType;
        if (type == 0)
        {
            var (s, colour) = rng.Pick(SyntheticWorld.ColourFacts);
            subject = s;
            predicate = wantTrue ? colour : rng.Pick(SyntheticWorld.FactColours.Where(c => c != colour).ToArray());
            truth = predicate == colour;
            factType = 'c';
            template = rng.Pick(SyntheticWorld.ColourPromptTemplates);
        }
        else if (type == 1)
        {
            var (s, abilities, _) = rng.Pick(SyntheticWorld.AnimalFacts);
            subject = s;
            predicate = wantTrue ? rng.Pick(abilities) : rng.Pick(SyntheticWorld.Abilities.Where(a => !abilities.Contains(a)).ToArray());
            truth = abilities.Contains(predicate);
            factType = 'a';
            template = rng.Pick(SyntheticWorld.AbilityPromptTemplates);
        }
        else
        {
            var (s, _, parts) = rng.Pick(SyntheticWorld.AnimalFacts);
            subject = s;
            predicate = wantTrue ? rng.Pick(parts) : rng.Pick(SyntheticWorld.Parts.Where(p => !parts.Contains(p)).ToArray());
            truth = parts.Contains(predicate);
            factType = 'p';
            template = rng.Pick(SyntheticWorld.PartPromptTemplates);
        }
        string text = TextTools.Fill(template, ("s", subject), ("c", predicate), ("v", predicate), ("p", predicate));
        return new SyntheticPrompt(TextTools.Capitalise(text), SyntheticPromptKind.Fact)
        { Subject = subject, Predicate = predicate, FactType = factType, Truth = truth };
    }

    private static SyntheticPrompt SampleGreeting(SyntheticRandom rng)
    {
        string who = rng.Pick(SyntheticWorld.Addressees);
        string text = TextTools.Fill(rng.Pick(SyntheticWorld.GreetingPromptTemplates), ("x", who));
        return new SyntheticPrompt(text, SyntheticPromptKind.Greeting) { Addressee = who };
    }

    private static SyntheticPrompt SampleProcedure(SyntheticRandom rng)
    {
        int p = rng.Next(SyntheticWorld.Procedures.Length);
        string text = TextTools.Fill(rng.Pick(SyntheticWorld.ProcedurePromptTemplates), ("t", SyntheticWorld.Procedures[p].Task));
        return new SyntheticPrompt(text, SyntheticPromptKind.Procedure) { Procedure = p };
    }

    // ---- parsing ----------------------------------------------------------------------------------

    [GeneratedRegex(@"(\d+)\s+(plus|minus|times)\s+(\d+)")]
    private static partial Regex ArithmeticRegex();

    /// <summary>
    /// Recognises a synthetic request in any prompt text (an optional "Question:" / "Answer:" template around
    /// it is tolerated). Anything unrecognised is <see cref="SyntheticPromptKind.Unknown"/>.
    /// </summary>
    public static SyntheticPrompt Parse(string prompt)
    {
        string text = StripTemplate(prompt);
        string lower = text.ToLowerInvariant();
        var words = TextTools.Words(lower);

        var arith = ArithmeticRegex().Match(lower);
        if (arith.Success)
        {
            return new SyntheticPrompt(text, SyntheticPromptKind.Arithmetic)
            { A = int.Parse(arith.Groups[1].Value), Op = arith.Groups[2].Value, B = int.Parse(arith.Groups[3].Value) };
        }

        int cat = Array.FindIndex(SyntheticWorld.Categories, c => words.Contains(c.Name));
        if (cat >= 0)
        {
            int n = -1;
            foreach (var w in words)
            {
                int idx = Array.IndexOf(SyntheticWorld.NumberWords, w);
                if (idx > 0) { n = idx; break; }
                if (int.TryParse(w, out var d) && d > 0 && d <= 20) { n = d; break; }
            }
            if (n > 0) return new SyntheticPrompt(text, SyntheticPromptKind.List) { Count = n, Category = cat };
        }

        if (words.Contains("greet") || words.Contains("greeting") || words.Contains("hello"))
        {
            // The person to greet is named last ("... greeting for my teacher"); a context sentence may come first.
            string? who = words.LastOrDefault(w => SyntheticWorld.Addressees.Contains(w));
            if (who is not null) return new SyntheticPrompt(text, SyntheticPromptKind.Greeting) { Addressee = who };
        }

        for (int p = 0; p < SyntheticWorld.Procedures.Length; p++)
        {
            if (TextTools.ContainsPhrase(words, SyntheticPhrases.ProcedureTasks[p]))
                return new SyntheticPrompt(text, SyntheticPromptKind.Procedure) { Procedure = p };
        }

        return ParseFact(text, words) ?? new SyntheticPrompt(text, SyntheticPromptKind.Unknown);
    }

    private static SyntheticPrompt? ParseFact(string text, List<string> words)
    {
        for (int f = 0; f < SyntheticWorld.ColourFacts.Length; f++)
        {
            var (subject, colour) = SyntheticWorld.ColourFacts[f];
            var hits = TextTools.FindPhrase(words, SyntheticPhrases.ColourSubjects[f]);
            if (hits.Count == 0) continue;
            string? asked = words.Skip(hits[0]).FirstOrDefault(w => SyntheticWorld.FactColours.Contains(w));
            if (asked is null) continue;
            return new SyntheticPrompt(text, SyntheticPromptKind.Fact) { Subject = subject, Predicate = asked, FactType = 'c', Truth = asked == colour };
        }
        for (int f = 0; f < SyntheticWorld.AnimalFacts.Length; f++)
        {
            var (subject, abilities, parts) = SyntheticWorld.AnimalFacts[f];
            var hits = TextTools.FindPhrase(words, SyntheticPhrases.AnimalSubjects[f]);
            if (hits.Count == 0) continue;
            var after = words.Skip(hits[0]).ToList();
            if (after.Contains("have") || after.Contains("has"))
            {
                int partIndex = Array.FindIndex(SyntheticPhrases.PartNouns, after.Contains);
                string? part = partIndex >= 0 ? SyntheticWorld.Parts[partIndex] : null;
                if (part is not null)
                    return new SyntheticPrompt(text, SyntheticPromptKind.Fact) { Subject = subject, Predicate = part, FactType = 'p', Truth = parts.Contains(part) };
            }
            string? ability = after.FirstOrDefault(w => SyntheticWorld.Abilities.Contains(w));
            if (ability is not null)
                return new SyntheticPrompt(text, SyntheticPromptKind.Fact) { Subject = subject, Predicate = ability, FactType = 'a', Truth = abilities.Contains(ability) };
        }
        return null;
    }

    /// <summary>Removes the paper's "Question: ...\n\nAnswer:" template if the caller passed a templated prompt.</summary>
    internal static string StripTemplate(string prompt)
    {
        string t = prompt.Trim();
        if (t.StartsWith("Question:", StringComparison.Ordinal)) t = t["Question:".Length..];
        int answer = t.LastIndexOf("Answer:", StringComparison.Ordinal);
        if (answer >= 0) t = t[..answer];
        return t.Trim();
    }
}
