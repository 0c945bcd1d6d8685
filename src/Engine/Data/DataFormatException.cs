namespace WeakTeacher.Engine.Data;

/// <summary>
/// A row of a data file that cannot be used: it does not parse, lacks a field, has a field of the wrong type or an
/// empty text. The message names the file, the line (JSONL, 1-based) or row (Parquet, 0-based) and the field.
/// </summary>
public sealed class DataFormatException : Exception
{
    public DataFormatException(string file, string location, string? field, string problem, Exception? inner = null)
        : base(Compose(file, location, field, problem), inner)
    {
        FilePath = file;
        Location = location;
        Field = field;
        Problem = problem;
    }

    public string FilePath { get; }
    /// <summary>"line N" (JSONL, 1-based) or "row N" (Parquet, 0-based).</summary>
    public string Location { get; }
    /// <summary>The offending field, or null where the whole row is at fault (for example bad JSON).</summary>
    public string? Field { get; }
    public string Problem { get; }

    private static string Compose(string file, string location, string? field, string problem) =>
        field is null ? $"{file}: {location}: {problem}" : $"{file}: {location}: field '{field}': {problem}";
}

/// <summary>Options for the preference/pair readers.</summary>
public sealed class DataReadOptions
{
    /// <summary>The file's format; <see cref="DataFormat.Auto"/> tells it from the first row.</summary>
    public DataFormat Format { get; init; } = DataFormat.Auto;
    /// <summary>Skip (and count in the <see cref="DataReadReport"/>) rows that cannot be used instead of throwing.</summary>
    public bool SkipInvalidRows { get; init; }
    /// <summary>How many skip reasons the report keeps (the count is always complete).</summary>
    public int MaxSkippedReasons { get; init; } = 20;
    /// <summary>Template that turns the file's prompt into the model's context text. Default: raw (as TRL, no template).</summary>
    public PromptTemplate Template { get; init; } = PromptTemplate.Raw;
    /// <summary>How a labelled file is read as unlabelled pairs.</summary>
    public UnlabelledOrder PairOrder { get; init; } = UnlabelledOrder.SeededSwap;
    /// <summary>Seed of the A/B swap when a labelled file is read as unlabelled.</summary>
    public long Seed { get; init; }
}

/// <summary>What a read did: rows used, rows skipped and why (the first <see cref="DataReadOptions.MaxSkippedReasons"/>).</summary>
public sealed class DataReadReport
{
    private readonly List<string> skippedReasons = new();

    public string? Path { get; internal set; }
    /// <summary>The format used (detected or forced).</summary>
    public DataFormat Format { get; internal set; }
    public int RowsRead { get; internal set; }
    public int RowsSkipped { get; internal set; }
    public IReadOnlyList<string> SkippedReasons => skippedReasons;

    internal void Skip(string reason, int maxReasons)
    {
        RowsSkipped++;
        if (skippedReasons.Count < maxReasons) skippedReasons.Add(reason);
    }

    public override string ToString() =>
        $"{Path}: {RowsRead} rows read, {RowsSkipped} skipped ({Format})";
}
