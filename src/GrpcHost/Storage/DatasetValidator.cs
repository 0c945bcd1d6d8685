using System.IO.Compression;
using System.IO.Pipelines;
using System.Text;
using System.Text.Json;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Grpc.V1;

namespace WeakTeacher.GrpcHost.Storage;

/// <summary>A row the engine's readers refuse, located in the whole upload (JSONL line 1-based, Parquet row 0-based).</summary>
internal sealed class BadRowException(string location, string? field, string problem)
    : Exception(field is null ? $"{location}: {problem}" : $"{location}: field '{field}': {problem}")
{
    public string Location { get; } = location;
    public string? Field { get; } = field;
    public string Problem { get; } = problem;
}

internal sealed record DatasetCheck(DatasetFormat Format, long Rows);

/// <summary>
/// Checks a dataset with the engine's own readers (<see cref="PreferenceDataReader"/>), so a file accepted here is a
/// file the stages can read. JSON lines (plain or gzip) are checked while they arrive: complete lines are handed to the
/// reader in batches and its line numbers shifted to the line's place in the whole upload. Parquet needs the whole file
/// (its index is at the end) and is checked when the upload completes.
/// </summary>
internal static class DatasetValidator
{
    public static DataFormat ToEngine(DatasetFormat format) => format switch
    {
        DatasetFormat.HhRlhf => DataFormat.HhRlhf,
        DatasetFormat.Explicit => DataFormat.Explicit,
        DatasetFormat.Conversational => DataFormat.Conversational,
        DatasetFormat.Unlabelled or DatasetFormat.Labelled => DataFormat.Unlabelled,
        _ => DataFormat.Auto,
    };

    public static DatasetFormat FromEngine(DataFormat format) => format switch
    {
        DataFormat.HhRlhf => DatasetFormat.HhRlhf,
        DataFormat.Explicit => DatasetFormat.Explicit,
        DataFormat.Conversational => DatasetFormat.Conversational,
        DataFormat.Unlabelled => DatasetFormat.Unlabelled,
        _ => DatasetFormat.Unspecified,
    };

    /// <summary>The encoding the first bytes show: gzip (1F 8B), Parquet ("PAR1"), else JSON lines.</summary>
    public static FileEncoding Sniff(ReadOnlySpan<byte> head)
    {
        if (head.Length >= 2 && head[0] == 0x1F && head[1] == 0x8B) return FileEncoding.JsonlGz;
        if (head.Length >= 4 && head[..4].SequenceEqual("PAR1"u8)) return FileEncoding.Parquet;
        return FileEncoding.Jsonl;
    }

    /// <summary>Checks a complete file (import, Parquet upload, job output).</summary>
    public static DatasetCheck CheckFile(string path, DatasetFormat format, string scratchDir, DatasetLimits limits)
    {
        if (format == DatasetFormat.Prompts)
        {
            if (DataFiles.DetectKind(path) == DataFileKind.Parquet)
                throw new BadRowException("row 0", null, "prompt files must be JSON lines");
            long rows = 0, line = 0;
            foreach (var text in Lines(path, limits))
            {
                line++;
                if (CheckPromptLine(text, line)) rows++;
            }
            if (rows == 0) throw new BadRowException("line 1", null, "the file has no rows");
            return new DatasetCheck(format, rows);
        }
        // JSON lines are held to the row and size bounds before the reader parses them (Parquet rows are bounded by their pages).
        if (DataFiles.DetectKind(path) != DataFileKind.Parquet)
            foreach (var _ in Lines(path, limits)) { }
        try
        {
            var detected = format == DatasetFormat.Unspecified ? FromEngine(PreferenceDataReader.DetectFormat(path)) : format;
            // Labelled: A/B pairs with a label on every row; the other pair formats carry their preference already.
            if (format == DatasetFormat.Labelled && FromEngine(PreferenceDataReader.DetectFormat(path)) is var shape && shape != DatasetFormat.Unlabelled)
                detected = shape;
            var rows = ReadAll(path, detected);
            if (rows == 0) throw new BadRowException("line 1", null, "the file has no rows");
            return new DatasetCheck(detected, rows);
        }
        catch (DataFormatException e)
        {
            throw new BadRowException(e.Location, e.Field, e.Problem);
        }
    }

    private static long ReadAll(string path, DatasetFormat format)
    {
        var options = new DataReadOptions { Format = ToEngine(format) };
        long rows = 0;
        if (format == DatasetFormat.Unlabelled)
            foreach (var _ in PreferenceDataReader.ReadUnlabelled(path, options)) rows++;
        else
            foreach (var _ in PreferenceDataReader.ReadPreferences(path, options)) rows++;
        return rows;
    }

    /// <summary>The lines of a JSON-lines file (gzip or not), held to <paramref name="limits"/>.</summary>
    private static IEnumerable<string> Lines(string path, DatasetLimits limits)
    {
        using var file = File.OpenRead(path);
        using var counted = new CountingStream(DataFiles.DetectKind(path) == DataFileKind.JsonlGzip ? new GZipStream(file, CompressionMode.Decompress) : file);
        using var text = new StreamReader(counted, Encoding.UTF8);
        var reader = new BoundedLineReader(text, () => counted.BytesRead, limits);
        for (string? line; (line = reader.ReadLine()) is not null;) yield return line;
    }

    /// <summary>A prompts file row, checked as evaluation reads it (<see cref="PromptFile.ParseLine"/>). False for a blank line.</summary>
    private static bool CheckPromptLine(string text, long line)
    {
        try { return PromptFile.ParseLine(text, "upload", line) is not null; }
        catch (DataFormatException e) { throw new BadRowException(e.Location, e.Field, e.Problem); }
    }

    /// <summary>Validation of JSON lines while they arrive (see the class summary).</summary>
    public sealed class Streaming
    {
        private const int BatchLines = 256;
        private const int BatchChars = 1 << 20;
        private readonly Pipe pipe = new(new PipeOptions(pauseWriterThreshold: 4 << 20, resumeWriterThreshold: 2 << 20));
        private readonly Task<DatasetCheck> task;
        private readonly string scratchDir;
        private readonly DatasetLimits limits;
        private DatasetFormat format;
        private long rows;
        private long lineOffset;
        private int batchNumber;

        public Streaming(DatasetFormat format, bool gzip, string scratchDir, DatasetLimits limits)
        {
            this.format = format;
            this.limits = limits;
            this.scratchDir = scratchDir;
            task = Task.Factory.StartNew(() => Run(gzip), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        }

        /// <summary>Feeds bytes; throws the first bad row as soon as the reader has seen it.</summary>
        public async ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
        {
            if (task.IsCompleted) await task; // a bad row: rethrows it
            var flush = await pipe.Writer.WriteAsync(data, ct);
            if (flush.IsCompleted) await task;
        }

        public async Task<DatasetCheck> CompleteAsync()
        {
            await pipe.Writer.CompleteAsync();
            return await task;
        }

        public async Task AbandonAsync()
        {
            await pipe.Writer.CompleteAsync(new OperationCanceledException());
            try { await task; } catch { /* the upload is being abandoned; its error was reported already */ }
        }

        private DatasetCheck Run(bool gzip)
        {
            try
            {
                using Stream raw = pipe.Reader.AsStream();
                using var counted = new CountingStream(gzip ? new GZipStream(raw, CompressionMode.Decompress) : raw);
                using var text = new StreamReader(counted, Encoding.UTF8, detectEncodingFromByteOrderMarks: true, bufferSize: 1 << 16);
                var reader = new BoundedLineReader(text, () => counted.BytesRead, limits);
                var batch = new StringBuilder();
                int batchLines = 0;
                for (string? line; (line = reader.ReadLine()) is not null;)
                {
                    batch.Append(line).Append('\n');
                    batchLines++;
                    if (batchLines >= BatchLines || batch.Length >= BatchChars)
                    {
                        CheckBatch(batch, batchLines);
                        batch.Clear();
                        batchLines = 0;
                    }
                }
                if (batchLines > 0) CheckBatch(batch, batchLines);
                if (rows == 0) throw new BadRowException("line 1", null, "the file has no rows");
                pipe.Reader.Complete();
                return new DatasetCheck(format, rows);
            }
            catch (Exception e)
            {
                pipe.Reader.Complete(e);
                throw;
            }
        }

        private void CheckBatch(StringBuilder batch, int lines)
        {
            var path = Path.Combine(scratchDir, $"check-{batchNumber++ % 2}.jsonl");
            File.WriteAllText(path, batch.ToString());
            try
            {
                if (format == DatasetFormat.Prompts)
                {
                    long line = lineOffset;
                    foreach (var text in batch.ToString().Split('\n').Take(lines))
                        if (CheckPromptLine(text, ++line)) rows++;
                }
                else
                {
                    if (format == DatasetFormat.Unspecified && batch.ToString().Any(c => !char.IsWhiteSpace(c)))
                        format = FromEngine(PreferenceDataReader.DetectFormat(path));
                    if (format != DatasetFormat.Unspecified) rows += ReadAll(path, format);
                }
            }
            catch (DataFormatException e)
            {
                throw new BadRowException(Shift(e.Location), e.Field, e.Problem);
            }
            finally
            {
                File.Delete(path);
            }
            lineOffset += lines;
        }

        private string Shift(string location)
        {
            var parts = location.Split(' ');
            return parts.Length == 2 && parts[0] == "line" && long.TryParse(parts[1], out var n) ? $"line {n + lineOffset}" : location;
        }
    }
}
