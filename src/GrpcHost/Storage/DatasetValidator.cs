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
    public static DatasetCheck CheckFile(string path, DatasetFormat format, string scratchDir)
    {
        if (format == DatasetFormat.Prompts)
        {
            if (DataFiles.DetectKind(path) == DataFileKind.Parquet)
                throw new BadRowException("row 0", null, "prompt files must be JSON lines");
            using var file = File.OpenRead(path);
            using Stream stream = DataFiles.DetectKind(path) == DataFileKind.JsonlGzip ? new GZipStream(file, CompressionMode.Decompress) : file;
            using var reader = new StreamReader(stream, Encoding.UTF8);
            long rows = 0, line = 0;
            for (string? text; (text = ReadLine(reader, line)) is not null;)
            {
                line++;
                if (CheckPromptLine(text, line)) rows++;
            }
            if (rows == 0) throw new BadRowException("line 1", null, "the file has no rows");
            return new DatasetCheck(format, rows);
        }
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

    private static string? ReadLine(StreamReader reader, long lineBefore)
    {
        try { return reader.ReadLine(); }
        catch (InvalidDataException e) { throw new BadRowException($"line {lineBefore + 1}", null, $"the gzip stream is corrupt: {e.Message}"); }
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
        private DatasetFormat format;
        private long rows;
        private long lineOffset;
        private int batchNumber;

        public Streaming(DatasetFormat format, bool gzip, string scratchDir)
        {
            this.format = format;
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
                using Stream stream = gzip ? new GZipStream(raw, CompressionMode.Decompress) : raw;
                using var reader = new StreamReader(stream, Encoding.UTF8, detectEncodingFromByteOrderMarks: true, bufferSize: 1 << 16);
                var batch = new StringBuilder();
                int batchLines = 0;
                for (string? line; (line = ReadLine(reader, lineOffset + batchLines)) is not null;)
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
