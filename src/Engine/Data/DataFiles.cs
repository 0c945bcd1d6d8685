using System.IO.Compression;
using System.Text.Json;
using Parquet;
using Parquet.Serialization;

namespace WeakTeacher.Engine.Data;

/// <summary>The container of a data file: JSON lines (plain or gzip) or Parquet.</summary>
public enum DataFileKind
{
    Jsonl,
    JsonlGzip,
    Parquet,
}

/// <summary>One row of a data file as a JSON object, or why it could not be read.</summary>
/// <remarks><see cref="Ordinal"/> counts data rows from 0 (blank JSONL lines excluded, bad rows included), the same
/// for a data set in any container, so per-row seeded draws do not depend on the container or on skipped rows.</remarks>
internal readonly record struct RawRow(JsonElement Value, long Row, long Ordinal, string Location, string? ParseError);

/// <summary>Opens data files and streams their rows; the kind comes from the file's magic bytes.</summary>
public static class DataFiles
{
    private static readonly byte[] ParquetMagic = "PAR1"u8.ToArray();

    /// <summary>The kind of an existing file from its first bytes (gzip 1F 8B, Parquet "PAR1"), else JSON lines.</summary>
    public static DataFileKind DetectKind(string path)
    {
        using var stream = File.OpenRead(path);
        Span<byte> head = stackalloc byte[4];
        int read = stream.ReadAtLeast(head, 4, throwOnEndOfStream: false);
        if (read >= 2 && head[0] == 0x1F && head[1] == 0x8B) return DataFileKind.JsonlGzip;
        if (read == 4 && head.SequenceEqual(ParquetMagic)) return DataFileKind.Parquet;
        return DataFileKind.Jsonl;
    }

    /// <summary>The kind a file to be written gets from its name: ".parquet", ".gz", else JSON lines.</summary>
    public static DataFileKind KindFromExtension(string path)
    {
        if (path.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase)) return DataFileKind.Parquet;
        if (path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase)) return DataFileKind.JsonlGzip;
        return DataFileKind.Jsonl;
    }

    /// <summary>
    /// Rows of the file, one at a time. Each JSON document lives until the consumer moves on, so a row must be used
    /// (copied into strings) before the next is requested.
    /// </summary>
    internal static IEnumerable<RawRow> ReadRows(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"data file not found: {path}", path);
        return DetectKind(path) == DataFileKind.Parquet ? ReadParquetRows(path) : ReadJsonLines(path);
    }

    private static IEnumerable<RawRow> ReadJsonLines(string path)
    {
        using var file = File.OpenRead(path);
        using Stream stream = DetectKind(path) == DataFileKind.JsonlGzip ? new GZipStream(file, CompressionMode.Decompress) : file;
        using var reader = new StreamReader(stream, System.Text.Encoding.UTF8, detectEncodingFromByteOrderMarks: true, bufferSize: 1 << 16);
        long lineNumber = 0, ordinal = 0;
        while (true)
        {
            string? line;
            string? ioError = null;
            try { line = reader.ReadLine(); }
            catch (InvalidDataException e) { line = null; ioError = e.Message; }
            if (ioError is not null)
                throw new DataFormatException(path, $"line {lineNumber + 1}", null, $"the gzip stream is corrupt: {ioError}");
            if (line is null) yield break;
            lineNumber++;
            // Blank lines separate nothing in JSONL; a trailing newline must not count as a bad row.
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonDocument? document = null;
            string? error = null;
            try
            {
                document = JsonDocument.Parse(line);
                if (document.RootElement.ValueKind != JsonValueKind.Object)
                    error = $"expected a JSON object, found {document.RootElement.ValueKind}";
            }
            catch (JsonException e)
            {
                error = $"not valid JSON: {e.Message}";
            }
            using (document)
                yield return new RawRow(error is null ? document!.RootElement : default, lineNumber, ordinal++, $"line {lineNumber}", error);
        }
    }

    private static IEnumerable<RawRow> ReadParquetRows(string path)
    {
        int rowGroups;
        using (var probe = File.OpenRead(path))
        {
            ParquetReader reader;
            try { reader = ParquetReader.CreateAsync(probe).GetAwaiter().GetResult(); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new DataFormatException(path, "row 0", null, $"not a readable Parquet file: {e.Message}", e);
            }
            rowGroups = reader.RowGroupCount;
            reader.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        long rowIndex = 0;
        for (int group = 0; group < rowGroups; group++)
        {
            // One row group in memory at a time; the untyped reader also rebuilds list-of-struct (message) columns.
            IList<Dictionary<string, object>> rows;
            using (var stream = File.OpenRead(path))
            {
                try { rows = ParquetSerializer.DeserializeUntypedAsync(stream, rowGroupIndex: group).GetAwaiter().GetResult().Data; }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    throw new DataFormatException(path, $"row {rowIndex}", null,
                        $"row group {group} cannot be read (message columns must be lists of {{role, content}} structs): {e.Message}", e);
                }
            }
            foreach (var row in rows)
            {
                using var document = JsonSerializer.SerializeToDocument(row);
                yield return new RawRow(document.RootElement, rowIndex, rowIndex, $"row {rowIndex}", null);
                rowIndex++;
            }
        }
    }
}
