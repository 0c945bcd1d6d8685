using System.Text.Json;
using WeakTeacher.Engine.Data;
using Xunit;
using static WeakTeacher.Tests.Data.Fixtures;

namespace WeakTeacher.Tests.Data;

public class WriterTests
{
    public static TheoryData<DataFormat, Container> Cases()
    {
        var data = new TheoryData<DataFormat, Container>();
        foreach (var format in new[] { DataFormat.HhRlhf, DataFormat.Explicit, DataFormat.Conversational, DataFormat.Unlabelled })
            foreach (var container in new[] { Container.Jsonl, Container.JsonlGz, Container.Parquet })
                data.Add(format, container);
        return data;
    }

    private static List<Dictionary<string, object?>> Input(DataFormat format) => format switch
    {
        DataFormat.HhRlhf => ReaderTests.HhRows(),
        DataFormat.Explicit => new()
        {
            new() { ["prompt"] = "What is 2+2?", ["chosen"] = "4", ["rejected"] = "5" },
            new() { ["prompt"] = "Capital of France?", ["chosen"] = "Paris", ["rejected"] = "Lyon" },
        },
        DataFormat.Conversational => new()
        {
            new()
            {
                ["prompt"] = "What is 2+2?", ["prompt_id"] = "a",
                ["chosen"] = Messages(("user", "What is 2+2?"), ("assistant", "4")),
                ["rejected"] = Messages(("user", "What is 2+2?"), ("assistant", "5")),
            },
            new()
            {
                ["prompt"] = "Capital?", ["prompt_id"] = "b",
                ["chosen"] = Messages(("user", "Capital?"), ("assistant", "Paris")),
                ["rejected"] = Messages(("user", "Capital?"), ("assistant", "Lyon")),
            },
        },
        _ => new()
        {
            new() { ["id"] = "p1", ["prompt"] = "Q1", ["response_a"] = "A1", ["response_b"] = "B1" },
            new() { ["id"] = "p2", ["prompt"] = "Q2", ["response_a"] = "A2", ["response_b"] = "B2" },
        },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void LabelledFileRoundTripsInTheInputsOwnFormat(DataFormat format, Container container)
    {
        using var dir = new TempDir();
        var input = Write(dir, "input", container, Input(format));
        var pairs = PreferenceDataReader.ReadUnlabelled(input, new DataReadOptions { Seed = 3 }).ToList();
        // A "teacher" that picks B on the first pair and A on the second, with its rewards beside each row.
        var labelled = pairs.Select((p, i) => new LabelledRow(p, i == 0 ? 1 : 0)
        {
            Extra = new Dictionary<string, object?> { ["reward_a"] = 0.25 + i, ["reward_b"] = -1.5f, ["margin"] = 1.75 + i, ["rank"] = i, ["note"] = i == 0 ? "first" : null },
        }).ToList();
        var output = dir.File("labelled" + Extension(container));
        File.WriteAllText(output, "stale contents");
        Assert.Equal(2, PreferenceDataWriter.WriteLabelled(output, labelled));
        Assert.Equal(new[] { Path.GetFileName(input), Path.GetFileName(output) }.Order(), Directory.GetFiles(dir.Path).Select(Path.GetFileName).Order());

        var report = new DataReadReport();
        var back = PreferenceDataReader.ReadPreferences(output, report: report).ToList();
        Assert.Equal(format, report.Format);
        for (int i = 0; i < pairs.Count; i++)
        {
            var expected = pairs[i].ToPreference(labelled[i].ChosenIndex);
            Assert.Equal((expected.Prompt, expected.Chosen, expected.Rejected), (back[i].Prompt, back[i].Chosen, back[i].Rejected));
            Assert.Equal(expected.PromptMessages, back[i].PromptMessages);
        }

        var raw = RawRows(output);
        Assert.Equal(0.25, raw[0].GetProperty("reward_a").GetDouble());
        Assert.Equal(-1.5, raw[1].GetProperty("reward_b").GetDouble());
        Assert.Equal(2.75, raw[1].GetProperty("margin").GetDouble());
        Assert.Equal(1, raw[1].GetProperty("rank").GetInt64());
        Assert.Equal("first", raw[0].GetProperty("note").GetString());
        Assert.True(!raw[1].TryGetProperty("note", out var note) || note.ValueKind == JsonValueKind.Null);
        if (format == DataFormat.Conversational) Assert.Equal("a", raw[0].GetProperty("id").GetString());
    }

    [Theory]
    [InlineData(Container.Jsonl)]
    [InlineData(Container.Parquet)]
    public void HumanLabelsWrittenBackReproduceTheHhInput(Container container)
    {
        using var dir = new TempDir();
        var rows = ReaderTests.HhRows();
        var input = Write(dir, "hh", container, rows);
        var pairs = PreferenceDataReader.ReadUnlabelled(input, new DataReadOptions { Seed = 5, Template = PromptTemplate.Paper }).ToList();
        var output = dir.File("again" + Extension(container));
        PreferenceDataWriter.WriteLabelled(output, pairs.Select(p => new LabelledRow(p, p.HumanLabel!.Value)));
        var raw = RawRows(output);
        for (int i = 0; i < rows.Count; i++)
        {
            Assert.Equal(rows[i]["chosen"], raw[i].GetProperty("chosen").GetString());
            Assert.Equal(rows[i]["rejected"], raw[i].GetProperty("rejected").GetString());
        }
    }

    [Fact]
    public void PairsMadeInCodeAreWrittenInTheRequestedFormat()
    {
        using var dir = new TempDir();
        var pair = new UnlabelledPair("x", "Why?", "Because.", "No.", null);
        var hh = dir.File("made.jsonl");
        PreferenceDataWriter.WriteLabelled(hh, new[] { new LabelledRow(pair, 0) }, DataFormat.HhRlhf);
        var row = Assert.Single(RawRows(hh));
        Assert.Equal("\n\nHuman: Why?\n\nAssistant: Because.", row.GetProperty("chosen").GetString());
        Assert.Equal("\n\nHuman: Why?\n\nAssistant: No.", row.GetProperty("rejected").GetString());

        var conversational = dir.File("made.parquet");
        PreferenceDataWriter.WriteLabelled(conversational, new[] { new LabelledRow(pair, 1) }, DataFormat.Conversational);
        var back = Assert.Single(PreferenceDataReader.ReadPreferences(conversational));
        Assert.Equal(("Why?", "No.", "Because."), (back.Prompt, back.Chosen, back.Rejected));
    }

    [Fact]
    public void BadExtraValuesAreRefusedAndLeaveNoFileBehind()
    {
        using var dir = new TempDir();
        var pair = new UnlabelledPair(null, "Q", "A", "B", null);
        var path = dir.File("bad.jsonl");
        var error = Assert.Throws<ArgumentException>(() => PreferenceDataWriter.WriteLabelled(path,
            new[] { new LabelledRow(pair, 0) { Extra = new Dictionary<string, object?> { ["margin"] = double.NaN } } }));
        Assert.Contains("margin", error.Message);
        Assert.Empty(Directory.GetFiles(dir.Path));
        Assert.Throws<ArgumentException>(() => PreferenceDataWriter.WriteLabelled(path,
            new[] { new LabelledRow(pair, 0) { Extra = new Dictionary<string, object?> { ["prompt"] = "clash" } } }));
        Assert.Empty(Directory.GetFiles(dir.Path));
    }
}
