using Spectre.Console;
using WeakTeacher.Engine.Evaluation;

namespace WeakTeacher.Cli;

/// <summary>The evaluation report's tables (the same cells report.md shows) as Spectre.Console tables.</summary>
public static class ReportTables
{
    public static void Write(EvaluationReport report)
    {
        foreach (var t in report.Tables())
        {
            var table = new Table { Title = new TableTitle(Markup.Escape(t.Title), new Style(decoration: Decoration.Bold)) }.Border(TableBorder.Rounded);
            for (int i = 0; i < t.Header.Length; i++)
                table.AddColumn(new TableColumn(Markup.Escape(t.Header[i])) { Alignment = i == 0 ? Justify.Left : Justify.Right });
            foreach (var row in t.Rows) table.AddRow(row.Select(Markup.Escape).ToArray());
            if (t.Note is not null) table.Caption = new TableTitle(Markup.Escape(t.Note));
            AnsiConsole.Write(table);
            AnsiConsole.WriteLine();
        }
    }
}
