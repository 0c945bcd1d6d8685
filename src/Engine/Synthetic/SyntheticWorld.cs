namespace WeakTeacher.Engine.Synthetic;

/// <summary>
/// The small world the synthetic task talks about: item categories, facts about objects and animals,
/// people to greet, everyday procedures, and the stock phrases responses are built from. Everything the
/// generator can write (except deliberate junk) comes from these tables, so the gold reward can tell a
/// known word from garbage.
/// </summary>
internal static class SyntheticWorld
{
    public static readonly string[] NumberWords = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];

    /// <summary>List categories (plural name -> items). Items are unique across categories.</summary>
    public static readonly (string Name, string[] Items)[] Categories =
    [
        ("animals", ["cat", "dog", "horse", "cow", "sheep", "lion", "rabbit", "mouse", "goat", "bear"]),
        ("fruits", ["apple", "banana", "pear", "grape", "cherry", "lemon", "peach", "plum", "mango", "melon"]),
        ("colours", ["red", "blue", "green", "yellow", "white", "black", "purple", "pink", "brown", "grey"]),
        ("vegetables", ["carrot", "potato", "onion", "pea", "bean", "cabbage", "leek", "pumpkin", "radish", "corn"]),
        ("tools", ["hammer", "saw", "drill", "spade", "rake", "ladder", "wrench", "chisel", "axe", "shovel"]),
        ("drinks", ["water", "milk", "tea", "coffee", "juice", "cocoa", "soda", "lemonade", "cider", "broth"]),
    ];

    /// <summary>Things with one true colour, for "Is a banana yellow?" questions.</summary>
    public static readonly (string Subject, string Colour)[] ColourFacts =
    [
        ("a banana", "yellow"), ("the sky", "blue"), ("snow", "white"), ("grass", "green"), ("coal", "black"),
        ("a cherry", "red"), ("milk", "white"), ("a frog", "green"), ("a crow", "black"), ("a tomato", "red"),
        ("the sea", "blue"), ("a lemon", "yellow"), ("a carrot", "orange"), ("a plum", "purple"), ("a cloud", "white"),
        ("chocolate", "brown"), ("a pig", "pink"), ("an elephant", "grey"),
    ];

    /// <summary>Colours a colour question may ask about.</summary>
    public static readonly string[] FactColours = ["yellow", "blue", "white", "green", "black", "red", "orange", "purple", "brown", "pink", "grey"];

    /// <summary>Animals with what they can do and the body parts they have.</summary>
    public static readonly (string Subject, string[] Abilities, string[] Parts)[] AnimalFacts =
    [
        ("a fish", ["swim"], ["fins", "a tail"]),
        ("a bird", ["fly", "sing", "walk"], ["wings", "feathers", "legs", "a tail"]),
        ("a dog", ["run", "swim", "jump", "walk"], ["legs", "fur", "a tail"]),
        ("a cat", ["run", "climb", "jump", "walk"], ["legs", "fur", "a tail"]),
        ("a horse", ["run", "jump", "walk", "swim"], ["legs", "a tail"]),
        ("a cow", ["walk", "run"], ["legs", "a tail"]),
        ("a duck", ["fly", "swim", "walk"], ["wings", "feathers", "legs"]),
        ("a snake", ["swim", "climb"], ["a tail"]),
        ("a monkey", ["climb", "jump", "run", "walk"], ["legs", "fur", "a tail"]),
        ("a whale", ["swim"], ["fins", "a tail"]),
        ("a turtle", ["swim", "walk"], ["legs", "a tail"]),
        ("a penguin", ["swim", "walk"], ["wings", "feathers", "legs"]),
    ];

    public static readonly string[] Abilities = ["swim", "fly", "sing", "run", "jump", "climb", "walk"];
    public static readonly string[] Parts = ["fins", "wings", "feathers", "legs", "fur", "a tail"];

    public static readonly string[] Addressees = ["teacher", "neighbour", "grandmother", "friend", "doctor", "boss", "uncle", "sister", "team", "guests"];

    /// <summary>Everyday procedures: the request phrase, and three steps in their right order.</summary>
    public static readonly (string Task, string[] Steps)[] Procedures =
    [
        ("make tea", ["boil the water", "put the tea in a cup", "pour the hot water on the tea"]),
        ("wash my hands", ["wet your hands", "rub them with soap", "rinse them with clean water"]),
        ("plant a seed", ["dig a small hole", "drop the seed in the hole", "cover it with soil"]),
        ("brush my teeth", ["put paste on the brush", "brush all your teeth", "rinse your mouth"]),
        ("make toast", ["put the bread in the toaster", "wait until it is brown", "spread butter on the toast"]),
        ("clean my room", ["pick up the toys", "make the bed", "sweep the floor"]),
    ];

    // ---- response phrases -------------------------------------------------------------------------

    public static readonly string[] PoliteOpeners = ["Sure!", "Of course!", "Certainly!", "Happy to help!", "Thank you for asking!"];
    public static readonly string[] PoliteClosers = ["I hope this helps!", "Have a nice day!", "Please ask if you need more help.", "Thank you for your question."];
    public static readonly string[] NeutralOpeners = ["Okay.", "Well.", "Right."];
    public static readonly string[] RudeOpeners = ["Ugh.", "Obviously.", "What a silly question.", "Fine, if you must know.", "Seriously?"];
    public static readonly string[] RudeClosers = ["Now leave me alone.", "Stop asking me such easy things.", "Figure it out yourself next time.", "Whatever."];

    /// <summary>Phrases whose presence the gold reward counts as polite (lower-case word sequences).</summary>
    public static readonly string[] PoliteMarkers =
    [
        "sure", "of course", "certainly", "happy to help", "thank you", "i hope this helps", "have a nice day",
        "please ask", "i hope you are well", "lovely to see you", "i wish you a happy day",
    ];

    /// <summary>Phrases whose presence the gold reward counts as rude.</summary>
    public static readonly string[] RudeMarkers =
    [
        "ugh", "obviously", "silly question", "if you must know", "seriously", "leave me alone", "stop asking",
        "figure it out yourself", "whatever", "what do you want", "it is you again",
    ];

    /// <summary>Needless filler sentences; each carries exactly one key phrase the gold reward detects.</summary>
    public static readonly (string Sentence, string Key)[] Fillers =
    [
        ("Let me think about this for a moment.", "let me think about this"),
        ("Many people ask this question.", "many people ask"),
        ("As you may already know, it depends.", "as you may already know"),
        ("To be honest, I thought about it a lot.", "to be honest"),
        ("In other words, it is what it is.", "it is what it is"),
        ("I will now give you my answer.", "i will now give you my answer"),
        ("It is good to read this answer carefully.", "read this answer carefully"),
        ("Some people say other things.", "some people say"),
    ];

    public static readonly string[] PromptPrefixes =
    [
        "I have a quick question.", "Someone asked me this today.", "I am learning new things.",
        "Here is something I want to know.", "Help me with this.", "I was thinking about this at home.",
    ];

    public static readonly string[] GreetingWords = ["Hello", "Good morning", "Good evening", "Good afternoon", "Hi", "Greetings", "Welcome"];
    public static readonly string[] GreetingMarkers = ["hello", "good morning", "good evening", "good afternoon", "hi", "greetings", "welcome"];
    public static readonly string[] WarmWishes = ["I hope you are well.", "It is lovely to see you.", "I wish you a happy day."];
    public static readonly string[] RudeGreetingTails = ["What do you want?", "Oh, it is you again."];
    public static readonly string[] Farewells = ["Goodbye", "See you later", "Bye"];
    public static readonly string[] EvasiveAnswers = ["I do not know the answer to that.", "That is hard to say.", "Maybe, maybe not."];
    public static readonly string[] ArithmeticDodges = ["Numbers are fun to think about.", "You can work that out on paper.", "You can count it on your fingers."];
    public static readonly string[] JunkWords = ["zq", "blorp", "xkv", "fzz", "qwop", "vrrk", "glx", "pzt"];

    // ---- templates used for prompts and response cores (listed so the lexicon sees every word) -------

    public static readonly string[] ArithmeticPromptTemplates =
    [
        "What is {a} {op} {b}?", "Can you tell me what {a} {op} {b} is?", "Please work out {a} {op} {b} for me.",
        "How much is {a} {op} {b}?",
    ];
    public static readonly string[] ArithmeticAnswerTemplates = ["{a} {op} {b} is {v}.", "The answer is {v}.", "It is {v}.", "{a} {op} {b} equals {v}."];
    public static readonly string[] ListPromptTemplates =
    [
        "Please name {n} {cat}.", "List {n} {cat}.", "Can you name {n} {cat} for me?", "Tell me {n} {cat}, please.",
        "Name {n} {cat} that you know.", "Give me a list of {n} {cat}.",
    ];
    public static readonly string[] ListAnswerTemplates = ["Here are {n} {cat}: {items}.", "{Items}.", "Some {cat} are {items}.", "You could say {items}."];
    public static readonly string[] ColourPromptTemplates = ["Is {s} {c}?", "Is it true that {s} is {c}?", "Tell me, is {s} {c}?"];
    public static readonly string[] AbilityPromptTemplates = ["Can {s} {v}?", "Is it true that {s} can {v}?", "Tell me, can {s} {v}?"];
    public static readonly string[] PartPromptTemplates = ["Does {s} have {p}?", "Is it true that {s} has {p}?", "Tell me, does {s} have {p}?"];
    public static readonly string[] GreetingPromptTemplates =
    [
        "Please write a polite greeting for my {x}.", "Write a short greeting for my {x}.",
        "How should I greet my {x} in the morning?", "Can you write a kind hello to my {x}?",
    ];
    public static readonly string[] ProcedurePromptTemplates =
    [
        "How do I {t}?", "Please tell me how to {t}.", "Give me short steps to {t}.", "What are the steps to {t}?",
    ];
    public static readonly string[] CoreGlue =
    [
        "yes", "no", "is", "not", "can", "cannot", "has", "does", "have", "it", "first", "then", "finally", "next",
        "dear", "and", "my", "answer", "to", "that", "the", "a", "an", "there", "are", "here", "question", "orange",
    ];

    private static readonly System.Text.RegularExpressions.Regex Placeholder = new(@"\{[^}]*\}");

    private static readonly Lazy<HashSet<string>> LexiconLazy = new(BuildLexicon);

    /// <summary>Every word the generator writes (lower case); digits are always known.</summary>
    public static IReadOnlySet<string> Lexicon => LexiconLazy.Value;

    private static HashSet<string> BuildLexicon()
    {
        var words = new HashSet<string>(StringComparer.Ordinal);
        void Add(string text)
        {
            foreach (var w in TextTools.Words(Placeholder.Replace(text, " "))) words.Add(w);
        }
        void AddAll(IEnumerable<string> texts) { foreach (var t in texts) Add(t); }

        AddAll(NumberWords);
        foreach (var (name, items) in Categories) { Add(name); AddAll(items); }
        foreach (var (s, c) in ColourFacts) { Add(s); Add(c); }
        AddAll(FactColours);
        foreach (var (s, a, p) in AnimalFacts) { Add(s); AddAll(a); AddAll(p); }
        AddAll(Abilities); AddAll(Parts); AddAll(Addressees);
        foreach (var (t, steps) in Procedures) { Add(t); AddAll(steps); }
        AddAll(PoliteOpeners); AddAll(PoliteClosers); AddAll(NeutralOpeners); AddAll(RudeOpeners); AddAll(RudeClosers);
        AddAll(PoliteMarkers); AddAll(RudeMarkers);
        foreach (var (s, k) in Fillers) { Add(s); Add(k); }
        AddAll(PromptPrefixes); AddAll(GreetingWords); AddAll(WarmWishes); AddAll(RudeGreetingTails); AddAll(Farewells);
        AddAll(EvasiveAnswers); AddAll(ArithmeticDodges);
        AddAll(ArithmeticPromptTemplates); AddAll(ArithmeticAnswerTemplates); AddAll(ListPromptTemplates); AddAll(ListAnswerTemplates);
        AddAll(ColourPromptTemplates); AddAll(AbilityPromptTemplates); AddAll(PartPromptTemplates);
        AddAll(GreetingPromptTemplates); AddAll(ProcedurePromptTemplates); AddAll(CoreGlue);
        AddAll(["plus", "minus", "times"]);
        return words;
    }
}

/// <summary>The world's phrases pre-split into words, so scoring does not re-tokenise them on every call.</summary>
internal static class SyntheticPhrases
{
    private static string[][] Split(IEnumerable<string> phrases) => phrases.Select(p => TextTools.Words(p).ToArray()).ToArray();

    public static readonly string[][] Polite = Split(SyntheticWorld.PoliteMarkers);
    public static readonly string[][] Rude = Split(SyntheticWorld.RudeMarkers);
    public static readonly string[][] FillerKeys = Split(SyntheticWorld.Fillers.Select(f => f.Key));
    public static readonly string[][] Greetings = Split(SyntheticWorld.GreetingMarkers);
    public static readonly string[][] ProcedureTasks = Split(SyntheticWorld.Procedures.Select(p => p.Task));
    public static readonly string[][][] ProcedureSteps = SyntheticWorld.Procedures.Select(p => Split(p.Steps)).ToArray();
    public static readonly string[][] ColourSubjects = Split(SyntheticWorld.ColourFacts.Select(f => f.Subject));
    public static readonly string[][] AnimalSubjects = Split(SyntheticWorld.AnimalFacts.Select(f => f.Subject));
    /// <summary>The noun of each part ("tail" for "a tail").</summary>
    public static readonly string[] PartNouns = SyntheticWorld.Parts.Select(p => TextTools.Words(p)[^1]).ToArray();

    public const int PoliteGroup = 0, RudeGroup = 1, FillerGroup = 2, GreetingGroup = 3;

    /// <summary>Politeness, rudeness, filler and greeting markers (groups above) in one index.</summary>
    public static readonly PhraseIndex Markers = new PhraseIndex()
        .Add(Polite, PoliteGroup).Add(Rude, RudeGroup).Add(FillerKeys, FillerGroup).Add(Greetings, GreetingGroup);

    /// <summary>Procedure steps; the group is procedure * 3 + step.</summary>
    public static readonly PhraseIndex Steps = BuildSteps();

    private static PhraseIndex BuildSteps()
    {
        var index = new PhraseIndex();
        for (int p = 0; p < ProcedureSteps.Length; p++)
            for (int s = 0; s < ProcedureSteps[p].Length; s++) index.Add([ProcedureSteps[p][s]], p * 3 + s);
        return index;
    }
}
