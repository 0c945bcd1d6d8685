namespace WeakTeacher.Engine.Synthetic;

/// <summary>How a generated response is phrased.</summary>
internal enum Politeness { Polite, Neutral, Rude }

/// <summary>Ways a generated response is broken, as a weak model's output is.</summary>
internal enum Malformation { None, Truncated, Repeated, Junk }

/// <summary>The aspects a synthetic response varies along; the gold reward scores each of them.</summary>
internal sealed record ResponseAspects(bool Correct, bool Follows, Politeness Politeness, int Padding, Malformation Malformation)
{
    /// <summary>Independent draw of every aspect (the mix of a not yet aligned model's answers).</summary>
    public static ResponseAspects Sample(SyntheticRandom rng, double pCorrect = 0.6, double pFollows = 0.8, double pMalformed = 0.08)
    {
        var politeness = (Politeness)rng.PickWeighted([0.4, 0.35, 0.25]);
        int padding = rng.PickWeighted([0.5, 0.3, 0.14, 0.06]);
        var malformation = rng.Chance(pMalformed) ? (Malformation)(1 + rng.Next(3)) : Malformation.None;
        return new ResponseAspects(rng.Chance(pCorrect), rng.Chance(pFollows), politeness, padding, malformation);
    }

    /// <summary>A copy differing in <paramref name="changes"/> aspects: pairs from one policy differ in a few ways, not all.</summary>
    public ResponseAspects Perturb(SyntheticRandom rng, int changes)
    {
        var result = this;
        var order = new List<int> { 0, 1, 2, 3, 4 };
        var weights = new List<double> { 0.25, 0.15, 0.25, 0.25, 0.10 };
        for (int c = 0; c < changes && order.Count > 0; c++)
        {
            int pick = rng.PickWeighted(weights);
            int aspect = order[pick];
            order.RemoveAt(pick);
            weights.RemoveAt(pick);
            result = aspect switch
            {
                0 => result with { Correct = !result.Correct },
                1 => result with { Follows = !result.Follows },
                2 => result with { Politeness = (Politeness)(((int)result.Politeness + 1 + rng.Next(2)) % 3) },
                3 => result with { Padding = (result.Padding + 1 + rng.Next(3)) % 4 },
                _ => result with
                {
                    Malformation = result.Malformation == Malformation.None ? (Malformation)(1 + rng.Next(3)) : Malformation.None,
                },
            };
        }
        return result;
    }
}

/// <summary>Writes a response to a synthetic prompt with the requested aspects.</summary>
internal static class ResponseGenerator
{
    public static string Generate(SyntheticPrompt prompt, ResponseAspects aspects, SyntheticRandom rng)
    {
        var sentences = new List<string>();

        // Opener: the politeness aspect, made explicit at least once per response.
        bool rudeCloser = false, politeCloser = false;
        switch (aspects.Politeness)
        {
            case Politeness.Polite:
                if (rng.Chance(0.75)) sentences.Add(rng.Pick(SyntheticWorld.PoliteOpeners));
                politeCloser = sentences.Count == 0 || rng.Chance(0.5);
                break;
            case Politeness.Rude:
                if (rng.Chance(0.75)) sentences.Add(rng.Pick(SyntheticWorld.RudeOpeners));
                rudeCloser = sentences.Count == 0 || rng.Chance(0.4);
                break;
            default:
                if (rng.Chance(0.4)) sentences.Add(rng.Pick(SyntheticWorld.NeutralOpeners));
                break;
        }

        // Needless filler sentences, before and after the answer.
        var fillers = SyntheticWorld.Fillers.Select(f => f.Sentence).ToList();
        rng.Shuffle(fillers);
        int before = aspects.Padding == 0 ? 0 : rng.Next(aspects.Padding + 1);
        for (int i = 0; i < before; i++) sentences.Add(fillers[i]);
        sentences.Add(Core(prompt, aspects, rng));
        for (int i = before; i < aspects.Padding; i++) sentences.Add(fillers[i]);

        if (politeCloser) sentences.Add(rng.Pick(SyntheticWorld.PoliteClosers));
        if (rudeCloser) sentences.Add(rng.Pick(SyntheticWorld.RudeClosers));

        string text = string.Join(" ", sentences);
        return Malform(text, aspects.Malformation, rng);
    }

    /// <summary>The answer itself: right or wrong, on the request or beside it.</summary>
    private static string Core(SyntheticPrompt prompt, ResponseAspects aspects, SyntheticRandom rng)
    {
        if (!aspects.Follows && rng.Chance(0.4))
        {
            // Off-topic: a (correct) answer to some other request.
            SyntheticPrompt other;
            do other = SyntheticPrompt.Sample(rng); while (other.Kind == prompt.Kind);
            return Core(other, aspects with { Follows = true, Correct = true }, rng);
        }
        return prompt.Kind switch
        {
            SyntheticPromptKind.Arithmetic => ArithmeticCore(prompt, aspects, rng),
            SyntheticPromptKind.List => ListCore(prompt, aspects, rng),
            SyntheticPromptKind.Fact => FactCore(prompt, aspects, rng),
            SyntheticPromptKind.Greeting => GreetingCore(prompt, aspects, rng),
            SyntheticPromptKind.Procedure => ProcedureCore(prompt, aspects, rng),
            _ => throw new ArgumentOutOfRangeException(nameof(prompt), prompt.Kind, "cannot answer an unknown prompt kind"),
        };
    }

    private static string ArithmeticCore(SyntheticPrompt p, ResponseAspects a, SyntheticRandom rng)
    {
        if (!a.Follows) return rng.Pick(SyntheticWorld.ArithmeticDodges);
        int v = p.Value;
        if (!a.Correct)
        {
            int delta = (1 + rng.Next(3)) * (rng.Chance(0.5) ? 1 : -1);
            v = v + delta < 0 ? v - delta : v + delta;
            if (v == p.Value) v = p.Value + 1;
        }
        string template = rng.Pick(SyntheticWorld.ArithmeticAnswerTemplates);
        return TextTools.Capitalise(TextTools.Fill(template, ("a", p.A.ToString()), ("op", p.Op), ("b", p.B.ToString()), ("v", v.ToString())));
    }

    private static string ListCore(SyntheticPrompt p, ResponseAspects a, SyntheticRandom rng)
    {
        var (catName, catItems) = SyntheticWorld.Categories[p.Category];
        int n = p.Count;
        if (!a.Follows)
        {
            // Not the number asked for.
            int delta = 1 + rng.Next(2);
            n = rng.Chance(0.5) && p.Count - delta >= 1 ? p.Count - delta : Math.Min(p.Count + delta, catItems.Length);
        }
        var pool = catItems.ToList();
        rng.Shuffle(pool);
        var items = pool.Take(n).ToList();
        if (!a.Correct && items.Count > 0)
        {
            int slot = rng.Next(items.Count);
            if (rng.Chance(0.3) && items.Count > 1)
            {
                items[slot] = items[(slot + 1) % items.Count];   // a repeated item
            }
            else
            {
                int other = (p.Category + 1 + rng.Next(SyntheticWorld.Categories.Length - 1)) % SyntheticWorld.Categories.Length;
                items[slot] = rng.Pick(SyntheticWorld.Categories[other].Items);   // an item of the wrong kind
            }
        }
        // The header states the requested number even when the list has another length, as models do.
        string template = rng.Pick(SyntheticWorld.ListAnswerTemplates);
        string joined = TextTools.JoinList(items);
        string core = TextTools.Fill(template, ("n", SyntheticWorld.NumberWords[Math.Min(p.Count, 10)]), ("cat", catName), ("items", joined), ("Items", TextTools.Capitalise(joined)));
        return TextTools.Capitalise(core);
    }

    private static string FactCore(SyntheticPrompt p, ResponseAspects a, SyntheticRandom rng)
    {
        if (!a.Follows) return rng.Pick(SyntheticWorld.EvasiveAnswers);
        bool say = a.Correct ? p.Truth : !p.Truth;
        string s = p.Subject;
        string statement = p.FactType switch
        {
            'c' => say ? $"{s} is {p.Predicate}" : $"{s} is not {p.Predicate}",
            'a' => say ? $"{s} can {p.Predicate}" : $"{s} cannot {p.Predicate}",
            _ => say ? $"{s} has {p.Predicate}" : $"{s} does not have {p.Predicate}",
        };
        string core = (say ? "Yes, " : "No, ") + statement + ".";
        if (rng.Chance(0.3)) core = say ? "Yes." : "No.";
        // A right "no" about a colour may add the true colour.
        if (p.FactType == 'c' && !say && a.Correct && rng.Chance(0.4))
        {
            string colour = SyntheticWorld.ColourFacts.First(f => f.Subject == p.Subject).Colour;
            core += $" It is {colour}.";
        }
        return core;
    }

    private static string GreetingCore(SyntheticPrompt p, ResponseAspects a, SyntheticRandom rng)
    {
        string who = p.Addressee;
        if (!a.Correct) who = rng.Pick(SyntheticWorld.Addressees.Where(x => x != p.Addressee).ToArray());
        string tail = a.Politeness switch
        {
            Politeness.Polite => rng.Pick(SyntheticWorld.WarmWishes),
            Politeness.Rude => rng.Pick(SyntheticWorld.RudeGreetingTails),
            _ => rng.Chance(0.5) ? rng.Pick(SyntheticWorld.WarmWishes) : "",
        };
        string line = a.Follows
            ? $"{rng.Pick(SyntheticWorld.GreetingWords)}{(rng.Chance(0.5) ? ", dear " : ", ")}{who}!"
            : $"{rng.Pick(SyntheticWorld.Farewells)}, {who}.";
        return tail.Length == 0 ? line : line + " " + tail;
    }

    private static string ProcedureCore(SyntheticPrompt p, ResponseAspects a, SyntheticRandom rng)
    {
        int proc = p.Procedure;
        if (!a.Follows) proc = (p.Procedure + 1 + rng.Next(SyntheticWorld.Procedures.Length - 1)) % SyntheticWorld.Procedures.Length;
        var steps = SyntheticWorld.Procedures[proc].Steps.ToList();
        if (!a.Correct)
        {
            if (rng.Chance(0.5)) steps.RemoveAt(rng.Next(steps.Count));
            else
            {
                int i = rng.Next(steps.Count - 1);
                (steps[i], steps[i + 1]) = (steps[i + 1], steps[i]);
            }
        }
        var connectives = steps.Count == 3 ? new[] { "First", "Then", "Finally" } : ["First", "Then"];
        if (rng.Chance(0.3)) connectives = steps.Count == 3 ? ["First", "Next", "Then"] : ["First", "Next"];
        return string.Join(" ", steps.Select((s, i) => $"{connectives[i]}, {s}."));
    }

    /// <summary>Breaks a response the way a weak model does: cut off, looping, or with junk tokens.</summary>
    private static string Malform(string text, Malformation kind, SyntheticRandom rng)
    {
        var words = text.Split(' ', StringSplitOptions.RemoveEmptyEntries).ToList();
        switch (kind)
        {
            case Malformation.Truncated:
            {
                int keep = Math.Max(1, (int)(words.Count * (0.3 + 0.5 * rng.NextDouble())));
                var kept = words.Take(Math.Min(keep, words.Count - 1 > 0 ? words.Count - 1 : 1)).ToList();
                string last = kept[^1].TrimEnd('.', '!', '?', ',', ':');
                kept[^1] = last.Length > 0 ? last : kept[^1];
                return string.Join(" ", kept);
            }
            case Malformation.Repeated:
            {
                int at = rng.Next(words.Count);
                string w = words[at].TrimEnd('.', '!', '?', ',', ':');
                if (w.Length == 0) w = words[at];
                int times = 3 + rng.Next(4);
                if (rng.Chance(0.4) && words.Count >= 3)
                {
                    // Loops over a short phrase rather than one word.
                    int start = rng.Next(words.Count - 2);
                    string phrase = string.Join(" ", words.Skip(start).Take(3));
                    return string.Join(" ", words.Take(start + 3)) + " " + string.Join(" ", Enumerable.Repeat(phrase, times - 1)) +
                           (start + 3 < words.Count ? " " + string.Join(" ", words.Skip(start + 3)) : "");
                }
                words.InsertRange(at + 1, Enumerable.Repeat(w, times - 1));
                return string.Join(" ", words);
            }
            case Malformation.Junk:
            {
                int n = 2 + rng.Next(3);
                for (int i = 0; i < n; i++) words.Insert(rng.Next(words.Count + 1), rng.Pick(SyntheticWorld.JunkWords));
                return string.Join(" ", words);
            }
            default:
                return text;
        }
    }
}
