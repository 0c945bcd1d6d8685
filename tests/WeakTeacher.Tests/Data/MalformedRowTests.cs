using WeakTeacher.Engine.Data;
using Xunit;
using static WeakTeacher.Tests.Data.Fixtures;

namespace WeakTeacher.Tests.Data;

public class MalformedRowTests
{
    private static readonly string[] Lines =
    {
        """{"prompt":"ok 1","chosen":"a","rejected":"b"}""",
        """{"prompt":"broken","chosen":"a",""",
        """{"prompt":"no rejected","chosen":"a"}""",
        """{"prompt":"wrong type","chosen":42,"rejected":"b"}""",
        """{"prompt":"   ","chosen":"a","rejected":"b"}""",
        "",
        """["not", "an", "object"]""",
        """{"prompt":"ok 2","chosen":"c","rejected":"d"}""",
    };

    [Theory]
    [InlineData(Container.Jsonl)]
    [InlineData(Container.JsonlGz)]
    public void FirstBadRowThrowsNamingFileAndLine(Container container)
    {
        using var dir = new TempDir();
        var path = WriteLines(dir, "bad", container, Lines);
        var error = Assert.Throws<DataFormatException>(() => PreferenceDataReader.ReadPreferences(path).ToList());
        Assert.Equal(path, error.FilePath);
        Assert.Equal("line 2", error.Location);
        Assert.Null(error.Field);
        Assert.Contains(path, error.Message);
        Assert.Contains("not valid JSON", error.Message);
    }

    [Theory]
    [InlineData(2, null, "not valid JSON")]
    [InlineData(3, "rejected", "missing")]
    [InlineData(4, "chosen", "expected a string, found a number")]
    [InlineData(5, "prompt", "empty text")]
    [InlineData(7, null, "expected a JSON object")]
    public void EachKindOfBadRowNamesItsLineAndField(int badLine, string? field, string problem)
    {
        using var dir = new TempDir();
        // The good first row fixes the format; the bad row follows it at its own line number.
        var lines = new[] { Lines[0] }.Concat(Enumerable.Repeat("", badLine - 2)).Append(Lines[badLine - 1]);
        var path = WriteLines(dir, "one-bad", Container.Jsonl, lines);
        var error = Assert.Throws<DataFormatException>(() => PreferenceDataReader.ReadPreferences(path).ToList());
        Assert.Equal($"line {badLine}", error.Location);
        Assert.Equal(field, error.Field);
        Assert.Contains(problem, error.Message);
        if (field is not null) Assert.Contains($"field '{field}'", error.Message);
    }

    [Theory]
    [InlineData(Container.Jsonl)]
    [InlineData(Container.JsonlGz)]
    public void SkipOptionCountsEveryBadRow(Container container)
    {
        using var dir = new TempDir();
        var path = WriteLines(dir, "bad", container, Lines);
        var report = new DataReadReport();
        var rows = PreferenceDataReader.ReadPreferences(path, new DataReadOptions { SkipInvalidRows = true, MaxSkippedReasons = 3 }, report).ToList();
        Assert.Equal(new[] { "ok 1", "ok 2" }, rows.Select(r => r.Prompt));
        Assert.Equal(2, report.RowsRead);
        Assert.Equal(5, report.RowsSkipped);
        Assert.Equal(3, report.SkippedReasons.Count);
        Assert.Contains("line 2", report.SkippedReasons[0]);
        Assert.Contains("line 3: field 'rejected'", report.SkippedReasons[1]);
        Assert.Contains("line 4: field 'chosen'", report.SkippedReasons[2]);
    }

    [Fact]
    public void ParquetRowsAreNamedByRowIndex()
    {
        using var dir = new TempDir();
        var path = Write(dir, "bad", Container.Parquet, new List<Dictionary<string, object?>>
        {
            new() { ["prompt"] = "ok", ["chosen"] = "a", ["rejected"] = "b" },
            new() { ["prompt"] = "empty chosen", ["chosen"] = "", ["rejected"] = "b" },
            new() { ["prompt"] = "null rejected", ["chosen"] = "a", ["rejected"] = null },
        });
        var error = Assert.Throws<DataFormatException>(() => PreferenceDataReader.ReadPreferences(path).ToList());
        Assert.Equal(("row 1", "chosen"), (error.Location, error.Field));
        Assert.Contains("empty text", error.Message);

        var report = new DataReadReport();
        Assert.Single(PreferenceDataReader.ReadPreferences(path, new DataReadOptions { SkipInvalidRows = true }, report));
        Assert.Equal(2, report.RowsSkipped);
        Assert.Contains("row 2: field 'rejected'", report.SkippedReasons[1]);
    }

    [Theory]
    [InlineData(Container.Jsonl)]
    [InlineData(Container.Parquet)]
    public void BadMessagesNameTheMessageField(Container container)
    {
        using var dir = new TempDir();
        var path = Write(dir, "bad-messages", container, new List<Dictionary<string, object?>>
        {
            new()
            {
                ["chosen"] = Messages(("user", "Hi"), ("assistant", "Hello")),
                ["rejected"] = Messages(("user", "Hi"), ("assistant", " ")),
            },
            new()
            {
                ["chosen"] = Messages(("user", "Hi"), ("assistant", "Hello"), ("assistant", "again")),
                ["rejected"] = Messages(("user", "Hi"), ("assistant", "Bye")),
            },
        });
        var report = new DataReadReport();
        Assert.Empty(PreferenceDataReader.ReadPreferences(path, new DataReadOptions { SkipInvalidRows = true }, report));
        Assert.Equal(2, report.RowsSkipped);
        Assert.Contains("field 'rejected[1].content': empty text", report.SkippedReasons[0]);
        Assert.Contains("field 'chosen': expected exactly one assistant message after the prompt, found 2", report.SkippedReasons[1]);
    }

    [Fact]
    public void UnknownFieldsCannotBeDetected()
    {
        using var dir = new TempDir();
        var path = WriteLines(dir, "unknown", Container.Jsonl, new[] { """{"question":"q","answer":"a"}""" });
        var error = Assert.Throws<DataFormatException>(() => PreferenceDataReader.ReadPreferences(path).ToList());
        Assert.Contains("cannot tell the format from fields [question, answer]", error.Message);
        Assert.Equal("line 1", error.Location);
    }

    [Fact]
    public void EmptyHhResponseIsAnError()
    {
        using var dir = new TempDir();
        var path = WriteLines(dir, "hh-empty", Container.Jsonl, new[]
        {
            """{"chosen":"\n\nHuman: hi\n\nAssistant: hello","rejected":"\n\nHuman: hi\n\nAssistant:"}""",
        });
        var error = Assert.Throws<DataFormatException>(() => PreferenceDataReader.ReadPreferences(path).ToList());
        Assert.Equal("rejected", error.Field);
    }
}
