using WeakTeacher.Engine.Data;
using Xunit;
using static WeakTeacher.Tests.Data.Fixtures;

namespace WeakTeacher.Tests.Data;

public class ReaderTests
{
    public static TheoryData<Container> Containers => new() { Container.Jsonl, Container.JsonlGz, Container.Parquet };

    internal const string HhPrompt = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is 2+2?\n\nAssistant:";

    internal static List<Dictionary<string, object?>> HhRows() => new()
    {
        // Multi-turn; the responses share " It is" after the last Assistant cue, which must stay in the responses.
        new() { ["chosen"] = HhPrompt + " It is 4.", ["rejected"] = HhPrompt + " It is 5." },
        // The transcripts diverge at an earlier assistant turn: the prompt ends at the last cue both share.
        new()
        {
            ["chosen"] = "\n\nHuman: Name a color\n\nAssistant: Blue.\n\nHuman: Another?\n\nAssistant: Red.",
            ["rejected"] = "\n\nHuman: Name a color\n\nAssistant: No.",
        },
    };

    [Theory]
    [MemberData(nameof(Containers))]
    public void HhRlhfSplitsThePromptAtTheLastSharedAssistantTurn(Container container)
    {
        using var dir = new TempDir();
        var path = Write(dir, "hh", container, HhRows());
        var report = new DataReadReport();
        var rows = PreferenceDataReader.ReadPreferences(path, report: report).ToList();

        Assert.Equal(DataFormat.HhRlhf, report.Format);
        Assert.Equal(2, report.RowsRead);
        Assert.Equal(HhPrompt, rows[0].Prompt);
        Assert.Equal(" It is 4.", rows[0].Chosen);
        Assert.Equal(" It is 5.", rows[0].Rejected);
        Assert.Equal("\n\nHuman: Name a color\n\nAssistant:", rows[1].Prompt);
        Assert.Equal(" Blue.\n\nHuman: Another?\n\nAssistant: Red.", rows[1].Chosen);
        Assert.Equal(" No.", rows[1].Rejected);
        Assert.Equal(
            new[] { new ChatMessage("user", "Hi there"), new ChatMessage("assistant", "Hello! How can I help?"), new ChatMessage("user", "What is 2+2?") },
            rows[0].PromptMessages);
    }

    [Theory]
    [MemberData(nameof(Containers))]
    public void ExplicitStringsAreReadAsTheyAre(Container container)
    {
        using var dir = new TempDir();
        var path = Write(dir, "explicit", container, new List<Dictionary<string, object?>>
        {
            new() { ["prompt"] = "What is 2+2?", ["chosen"] = "4", ["rejected"] = "5" },
            new() { ["prompt"] = "Capital of France?", ["chosen"] = "Paris", ["rejected"] = "Lyon", ["id"] = "q2" },
        });
        var report = new DataReadReport();
        var rows = PreferenceDataReader.ReadPreferences(path, report: report).ToList();
        Assert.Equal(DataFormat.Explicit, report.Format);
        Assert.Equal(new PreferenceExample("What is 2+2?", "4", "5"), rows[0] with { Source = null });
        Assert.Equal(new PreferenceExample("Capital of France?", "Paris", "Lyon"), rows[1] with { Source = null });

        // The paper's template on the same file.
        var paper = PreferenceDataReader.ReadPreferences(path, new DataReadOptions { Template = PromptTemplate.Paper }).ToList();
        Assert.Equal("Question: What is 2+2?\n\nAnswer: ", paper[0].Prompt);
        Assert.Equal("4", paper[0].Chosen);
        // HH's template on plain prompts: one space between the cue and the reply.
        var hh = PreferenceDataReader.ReadPreferences(path, new DataReadOptions { Template = PromptTemplate.Hh }).ToList();
        Assert.Equal("\n\nHuman: What is 2+2?\n\nAssistant:", hh[0].Prompt);
        Assert.Equal(" 4", hh[0].Chosen);
    }

    [Theory]
    [MemberData(nameof(Containers))]
    public void ConversationalLayoutsStripTheSharedPrompt(Container container)
    {
        using var dir = new TempDir();
        var ultra = Write(dir, "ultra", container, new List<Dictionary<string, object?>>
        {
            // UltraFeedback-binarized: prompt string, chosen/rejected full conversations.
            new()
            {
                ["prompt"] = "What is 2+2?", ["prompt_id"] = "abc",
                ["chosen"] = Messages(("user", "What is 2+2?"), ("assistant", "4")),
                ["rejected"] = Messages(("user", "What is 2+2?"), ("assistant", "5")),
            },
        });
        var implicitPrompt = Write(dir, "implicit", container, new List<Dictionary<string, object?>>
        {
            new()
            {
                ["chosen"] = Messages(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?"), ("assistant", "4")),
                ["rejected"] = Messages(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?"), ("assistant", "Five")),
            },
        });
        var explicitPrompt = Write(dir, "trl", container, new List<Dictionary<string, object?>>
        {
            new()
            {
                ["prompt"] = Messages(("user", "2+2?")),
                ["chosen"] = Messages(("assistant", "4")),
                ["rejected"] = Messages(("assistant", "5")),
            },
        });

        var report = new DataReadReport();
        var u = Assert.Single(PreferenceDataReader.ReadPreferences(ultra, new DataReadOptions { Template = PromptTemplate.Paper }, report));
        Assert.Equal(DataFormat.Conversational, report.Format);
        Assert.Equal(("Question: What is 2+2?\n\nAnswer: ", "4", "5"), (u.Prompt, u.Chosen, u.Rejected));
        Assert.Equal(ConversationLayout.PromptTextWithFullConversation, u.Source!.Layout);
        Assert.Equal("abc", Assert.Single(PreferenceDataReader.ReadUnlabelled(ultra)).Id);

        var i = Assert.Single(PreferenceDataReader.ReadPreferences(implicitPrompt, new DataReadOptions { Template = PromptTemplate.Hh }));
        Assert.Equal("Be brief.\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2+2?\n\nAssistant:", i.Prompt);
        Assert.Equal((" 4", " Five"), (i.Chosen, i.Rejected));
        Assert.Equal(4, i.PromptMessages!.Count);
        var iPaper = Assert.Single(PreferenceDataReader.ReadPreferences(implicitPrompt, new DataReadOptions { Template = PromptTemplate.Paper }));
        Assert.Equal("Be brief.\n\nQuestion: Hi\n\nAnswer: Hello\n\nQuestion: 2+2?\n\nAnswer: ", iPaper.Prompt);

        var e = Assert.Single(PreferenceDataReader.ReadPreferences(explicitPrompt));
        Assert.Equal(("2+2?", "4", "5"), (e.Prompt, e.Chosen, e.Rejected));
        Assert.Equal(ConversationLayout.Replies, e.Source!.Layout);
    }

    [Theory]
    [MemberData(nameof(Containers))]
    public void UnlabelledPairsKeepTheirHumanLabel(Container container)
    {
        using var dir = new TempDir();
        var path = Write(dir, "pairs", container, new List<Dictionary<string, object?>>
        {
            new() { ["id"] = "p1", ["prompt"] = "Q1", ["response_a"] = "A1", ["response_b"] = "B1", ["label"] = 1L },
            new() { ["id"] = "p2", ["prompt"] = "Q2", ["response_a"] = "A2", ["response_b"] = "B2", ["label"] = null },
            new() { ["id"] = "p3", ["prompt"] = "Q3", ["response_a"] = "A3", ["response_b"] = "B3", ["label"] = 0L },
        });
        var report = new DataReadReport();
        var pairs = PreferenceDataReader.ReadUnlabelled(path, report: report).ToList();
        Assert.Equal(DataFormat.Unlabelled, report.Format);
        Assert.Equal(
            new[] { new UnlabelledPair("p1", "Q1", "A1", "B1", 1), new UnlabelledPair("p2", "Q2", "A2", "B2", null), new UnlabelledPair("p3", "Q3", "A3", "B3", 0) },
            pairs.Select(p => p with { Source = null }));

        // As preferences, a row without a label is an error naming the field, never dropped.
        var error = Assert.Throws<DataFormatException>(() => PreferenceDataReader.ReadPreferences(path).ToList());
        Assert.Equal("label", error.Field);
        Assert.Contains(container == Container.Parquet ? "row 1" : "line 2", error.Message);
        var skipped = new DataReadReport();
        var labelled = PreferenceDataReader.ReadPreferences(path, new DataReadOptions { SkipInvalidRows = true }, skipped).ToList();
        Assert.Equal(("B1", "A1"), (labelled[0].Chosen, labelled[0].Rejected));
        Assert.Equal(("A3", "B3"), (labelled[1].Chosen, labelled[1].Rejected));
        Assert.Equal((2, 1), (skipped.RowsRead, skipped.RowsSkipped));
    }

    [Fact]
    public void PreferredAcceptsLettersAndRejectsNonsense()
    {
        using var dir = new TempDir();
        var path = WriteLines(dir, "preferred", Container.Jsonl, new[]
        {
            """{"prompt":"Q","response_a":"A","response_b":"B","preferred":"b"}""",
            """{"prompt":"Q","response_a":"A","response_b":"B","preferred":"response_a"}""",
            """{"prompt":"Q","response_a":"A","response_b":"B","label":2}""",
        });
        var report = new DataReadReport();
        var pairs = PreferenceDataReader.ReadUnlabelled(path, new DataReadOptions { SkipInvalidRows = true }, report).ToList();
        Assert.Equal(new int?[] { 1, 0 }, pairs.Select(p => p.HumanLabel));
        Assert.Equal(1, report.RowsSkipped);
        Assert.Contains("line 3", report.SkippedReasons[0]);
        Assert.Contains("'label'", report.SkippedReasons[0]);
    }

    [Theory]
    [MemberData(nameof(Containers))]
    public void LabelledFileReadAsUnlabelledSwapsBySeedAndKeepsTheLabelAside(Container container)
    {
        using var dir = new TempDir();
        var rows = Enumerable.Range(0, 64).Select(i => new Dictionary<string, object?>
        {
            ["prompt"] = $"question {i}", ["chosen"] = $"good {i}", ["rejected"] = $"bad {i}",
        }).ToList();
        var path = Write(dir, "labelled", container, rows);

        var first = PreferenceDataReader.ReadUnlabelled(path, new DataReadOptions { Seed = 11 }).ToList();
        var again = PreferenceDataReader.ReadUnlabelled(path, new DataReadOptions { Seed = 11 }).ToList();
        var other = PreferenceDataReader.ReadUnlabelled(path, new DataReadOptions { Seed = 12 }).ToList();
        Assert.Equal(first.Select(p => (p.ResponseA, p.HumanLabel)), again.Select(p => (p.ResponseA, p.HumanLabel)));
        Assert.NotEqual(first.Select(p => p.HumanLabel), other.Select(p => p.HumanLabel));
        Assert.Contains(first, p => p.HumanLabel == 0);
        Assert.Contains(first, p => p.HumanLabel == 1);
        for (int i = 0; i < first.Count; i++)
        {
            var pair = first[i];
            var humanChosen = pair.HumanLabel == 0 ? pair.ResponseA : pair.ResponseB;
            Assert.Equal($"good {i}", humanChosen);
            Assert.Equal(rows[i]["chosen"], pair.ToPreference(pair.HumanLabel!.Value).Chosen);
        }

        var ordered = PreferenceDataReader.ReadUnlabelled(path, new DataReadOptions { PairOrder = UnlabelledOrder.ChosenFirst }).ToList();
        Assert.All(ordered, p => Assert.Equal(0, p.HumanLabel));
        Assert.All(ordered, p => Assert.StartsWith("good", p.ResponseA));
    }

    [Fact]
    public void SeededSwapIsTheSameInEveryContainer()
    {
        using var dir = new TempDir();
        var rows = Enumerable.Range(0, 32).Select(i => new Dictionary<string, object?>
        {
            ["prompt"] = $"question {i}", ["chosen"] = $"good {i}", ["rejected"] = $"bad {i}",
        }).ToList();
        var labels = new[] { Container.Jsonl, Container.JsonlGz, Container.Parquet }
            .Select(c => PreferenceDataReader.ReadUnlabelled(Write(dir, "same-" + c, c, rows), new DataReadOptions { Seed = 9 })
                .Select(p => p.HumanLabel).ToArray())
            .ToList();
        Assert.Equal(labels[0], labels[1]);
        Assert.Equal(labels[0], labels[2]);
    }

    [Fact]
    public void ForcedFormatOverridesDetection()
    {
        using var dir = new TempDir();
        var path = WriteLines(dir, "forced", Container.Jsonl, new[] { """{"prompt":"Q","chosen":"a","rejected":"b"}""" });
        Assert.Equal(DataFormat.Explicit, PreferenceDataReader.DetectFormat(path));
        // Forcing HH on explicit strings finds no shared Assistant turn: an error naming the field.
        var error = Assert.Throws<DataFormatException>(() =>
            PreferenceDataReader.ReadPreferences(path, new DataReadOptions { Format = DataFormat.HhRlhf }).ToList());
        Assert.Equal("chosen", error.Field);
    }

    [Fact]
    public void HhTranscriptsParseIntoTurnsAndRenderBack()
    {
        var messages = PromptTemplate.ParseHhTranscript(HhPrompt);
        Assert.Equal(3, messages.Count);
        Assert.Equal(HhPrompt, PromptTemplate.Hh.Render(messages));
        Assert.Equal("Question: Hi there\n\nAnswer: Hello! How can I help?\n\nQuestion: What is 2+2?\n\nAnswer: ", PromptTemplate.Paper.Render(messages));
        Assert.Same(PromptTemplate.Paper, PromptTemplate.Get("Paper"));
        Assert.Throws<ArgumentException>(() => PromptTemplate.Get("jinja"));
        // The paper's template drops HH's leading space from a reply; raw keeps it.
        Assert.Equal("Sure.", PromptTemplate.Paper.FormatResponse("Question: q\n\nAnswer: ", " Sure."));
        Assert.Equal(" Sure.", PromptTemplate.Raw.FormatResponse("q", " Sure."));
    }

    [Fact]
    public void PairsReadOnceCanBeTemplatedPerModel()
    {
        using var dir = new TempDir();
        var path = Write(dir, "hh", Container.Jsonl, HhRows());
        var pair = PreferenceDataReader.ReadUnlabelled(path, new DataReadOptions { PairOrder = UnlabelledOrder.ChosenFirst }).First();
        Assert.Equal(HhPrompt, pair.Prompt);
        var paper = PromptTemplate.Paper.Apply(pair);
        Assert.Equal(("Question: Hi there\n\nAnswer: Hello! How can I help?\n\nQuestion: What is 2+2?\n\nAnswer: ", "It is 4.", "It is 5."),
            (paper.Prompt, paper.ResponseA, paper.ResponseB));
        Assert.Equal(pair with { Source = null }, PromptTemplate.Hh.Apply(paper) with { Source = null });
        var custom = new PromptTemplate("chat", "<|user|>{content}<|assistant|>", "{content}<|end|>", "<|system|>{content}");
        var chat = custom.Apply(new PreferenceExample("Q", "a", "b"));
        Assert.Equal(("<|user|>Q<|assistant|>", "a"), (chat.Prompt, chat.Chosen));
    }
}
