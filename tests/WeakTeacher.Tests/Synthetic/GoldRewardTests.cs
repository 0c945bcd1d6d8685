using WeakTeacher.Engine.Evaluation;
using WeakTeacher.Engine.Synthetic;
using Xunit;

namespace WeakTeacher.Tests.Synthetic;

public sealed class GoldRewardTests
{
    private readonly GoldReward _gold = new();

    private double S(string prompt, string response) => _gold.Score(prompt, response);

    [Theory]
    [InlineData("What is 7 plus 5?", "7 plus 5 is 12.", "7 plus 5 is 13.")]
    [InlineData("I have a quick question. How much is 6 times 3?", "The answer is 18.", "The answer is 16.")]
    [InlineData("Please name three animals.", "Here are three animals: cat, dog and horse.", "Here are three animals: cat, dog and apple.")]
    [InlineData("Please name three animals.", "Here are three animals: cat, dog and horse.", "Here are three animals: cat, cat and dog.")]
    [InlineData("Can a fish fly?", "No, a fish cannot fly.", "Yes, a fish can fly.")]
    [InlineData("Is a banana yellow?", "Yes, a banana is yellow.", "No, a banana is not yellow.")]
    [InlineData("Does a snake have legs?", "No, a snake does not have legs.", "Yes, a snake has legs.")]
    [InlineData("Please write a polite greeting for my teacher.", "Good morning, dear teacher! I hope you are well.", "Good morning, dear doctor! I hope you are well.")]
    [InlineData("How do I make tea?", "First, boil the water. Then, put the tea in a cup. Finally, pour the hot water on the tea.",
        "First, put the tea in a cup. Then, boil the water. Finally, pour the hot water on the tea.")]
    public void CorrectBeatsWrong(string prompt, string correct, string wrong) => Assert.True(S(prompt, correct) > S(prompt, wrong));

    [Theory]
    [InlineData("Please name three animals.", "Here are three animals: cat, dog and horse.", "Here are three animals: cat and dog.")]
    [InlineData("Please name two fruits.", "Apple and pear.", "Apple, pear, plum and grape.")]
    [InlineData("What is 7 plus 5?", "7 plus 5 is 12.", "Here are three animals: cat, dog and horse.")]
    [InlineData("What is 7 plus 5?", "7 plus 5 is 12.", "Numbers are fun to think about.")]
    [InlineData("Can a fish fly?", "No, a fish cannot fly.", "I do not know the answer to that.")]
    [InlineData("Write a short greeting for my boss.", "Hello, boss!", "Goodbye, boss.")]
    [InlineData("How do I make tea?", "First, boil the water. Then, put the tea in a cup. Finally, pour the hot water on the tea.",
        "First, pick up the toys. Then, make the bed. Finally, sweep the floor.")]
    public void FollowingTheRequestBeatsNotFollowing(string prompt, string follows, string ignores) => Assert.True(S(prompt, follows) > S(prompt, ignores));

    [Fact]
    public void PoliteBeatsNeutralBeatsRude()
    {
        const string p = "What is 9 minus 4?";
        double polite = S(p, "Sure! 9 minus 4 is 5. I hope this helps!");
        double neutral = S(p, "9 minus 4 is 5.");
        double rude = S(p, "Ugh. 9 minus 4 is 5. Now leave me alone.");
        Assert.True(polite > neutral && neutral > rude, $"{polite} {neutral} {rude}");
        // Politeness is capped: thanking again and again does not keep paying.
        double gushing = S(p, "Sure! Of course! Certainly! Thank you for asking! 9 minus 4 is 5. Have a nice day!");
        Assert.True(gushing <= polite + 0.01);
    }

    [Fact]
    public void PaddingAndRamblingCost()
    {
        const string p = "Can a bird fly?";
        double concise = S(p, "Yes, a bird can fly.");
        double padded = S(p, "Let me think about this for a moment. Yes, a bird can fly. Many people ask this question.");
        double rambling = S(p, "Let me think about this for a moment. Many people ask this question. To be honest, I thought about it a lot. " +
                               "Yes, a bird can fly. Some people say other things. In other words, it is what it is.");
        Assert.True(concise > padded && padded > rambling, $"{concise} {padded} {rambling}");
    }

    [Fact]
    public void GarbageEmptyAndRepetitionScoreLowest()
    {
        const string p = "What is 7 plus 5?";
        double good = S(p, "Sure! 7 plus 5 is 12.");
        double wrong = S(p, "7 plus 5 is 13.");
        Assert.Equal(GoldReward.Min, S(p, ""));
        Assert.Equal(GoldReward.Min, S(p, "   \n "));
        Assert.Equal(GoldReward.Min, S(p, "?!..,"));
        double junk = S(p, "zq blorp xkv fzz qwop");
        double loop = S(p, "the the the the the the the the the the");
        double phraseLoop = S(p, "I hope this helps! I hope this helps! I hope this helps! I hope this helps!");
        Assert.True(junk <= -4.5, $"junk scored {junk}");
        Assert.True(loop <= -4.5, $"loop scored {loop}");
        Assert.True(phraseLoop < wrong, $"looping politeness {phraseLoop} vs a wrong answer {wrong}");
        // Repetition inside an otherwise right answer is penalised.
        Assert.True(S(p, "7 plus 5 is 12 12 12 12 12.") < S(p, "7 plus 5 is 12."));
        // A cut-off answer and junk tokens cost.
        Assert.True(S(p, "Sure! 7 plus 5 is") < good);
        Assert.True(S(p, "Sure! 7 plus zq 5 is blorp 12.") < good);
        // Running on into a new turn costs.
        Assert.True(S(p, "Sure! 7 plus 5 is 12.\n\nQuestion: What is 2 plus 2?") < good);
    }

    [Fact]
    public void ScoresAnyTextWithinBounds()
    {
        var rng = new Random(1);
        const string alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?\n\u00e9\u4e2d";
        string[] prompts = ["What is 7 plus 5?", "Please name three animals.", "Can a fish fly?", "How do I make tea?", "Write a poem.", ""];
        for (int i = 0; i < 300; i++)
        {
            var chars = new char[rng.Next(0, 120)];
            for (int j = 0; j < chars.Length; j++) chars[j] = alphabet[rng.Next(alphabet.Length)];
            double s = S(prompts[i % prompts.Length], new string(chars));
            Assert.InRange(s, GoldReward.Min, GoldReward.Max);
        }
        // An unknown request still scores form, politeness and length.
        Assert.True(S("Write a poem.", "Sure! Have a nice day!") > S("Write a poem.", "Ugh. Whatever."));
        Assert.Equal(SyntheticPromptKind.Unknown, _gold.Explain("Write a poem.", "Sure!").Kind);
    }

    [Fact]
    public void TemplatedPromptScoresLikeTheRawQuestion()
    {
        const string raw = "Please name two colours.";
        const string response = "Red and blue.";
        Assert.Equal(S(raw, response), S("Question: " + raw + "\n\nAnswer: ", response));
        Assert.Equal(SyntheticPromptKind.List, _gold.Explain(raw, response).Kind);
    }

    [Fact]
    public void BatchScoringMatchesSingleScoring()
    {
        IGoldScorer scorer = _gold;
        var items = new List<(string, string)> { ("What is 7 plus 5?", "12."), ("Can a fish fly?", "No."), ("x", "") };
        var batch = scorer.ScoreBatch(items);
        Assert.Equal(items.Select(i => _gold.Score(i.Item1, i.Item2)), batch);
        Assert.Equal("synthetic-gold", scorer.Name);
    }

    [Fact]
    public void EachAspectMovesTheGoldRewardTheRightWay()
    {
        // Same prompt and same random draws; only one aspect differs.
        int better = 0, total = 0;
        for (int seed = 0; seed < 200; seed++)
        {
            var rng = new SyntheticRandom((ulong)seed);
            var prompt = SyntheticPrompt.Sample(rng);
            var good = new ResponseAspects(true, true, Politeness.Polite, 0, Malformation.None);
            foreach (var worse in new[]
            {
                good with { Correct = false }, good with { Follows = false }, good with { Politeness = Politeness.Rude },
                good with { Padding = 2 }, good with { Malformation = Malformation.Junk }, good with { Malformation = Malformation.Repeated },
            })
            {
                ulong drawSeed = (ulong)(seed * 31 + total);
                string a = ResponseGenerator.Generate(prompt, good, new SyntheticRandom(drawSeed));
                string b = ResponseGenerator.Generate(prompt, worse, new SyntheticRandom(drawSeed));
                total++;
                if (S(prompt.Text, a) > S(prompt.Text, b)) better++;
            }
        }
        Assert.True(better >= 0.97 * total, $"the better aspect scored higher in {better} of {total} cases");
    }
}
