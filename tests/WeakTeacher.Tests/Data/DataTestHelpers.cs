using System.IO.Compression;
using System.Text;
using System.Text.Json;
using Parquet.Schema;
using Parquet.Serialization;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Tokenization;

namespace WeakTeacher.Tests.Data;

/// <summary>Test-only tokenizer: one id per UTF-16 char (char + 3); 0 = pad, 1 = BOS, 2 = EOS.</summary>
internal sealed class CharTokenizer(bool addsBos = true) : ITokenizer
{
    public const int Pad = 0, Bos = 1, Eos = 2, Offset = 3;
    public int VocabSize => char.MaxValue + 1 + Offset;
    public int? BosTokenId => addsBos ? Bos : null;
    public int EosTokenId => Eos;
    public int PadTokenId => Pad;
    public bool AddsBos => addsBos;
    public IReadOnlyList<int> Encode(string text) => text.Select(c => c + Offset).ToArray();
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) =>
        new(ids.Where(i => i >= Offset || !skipSpecialTokens).Select(i => i >= Offset ? (char)(i - Offset) : '¤').ToArray());
    public static int Id(char c) => c + Offset;
    public static int[] Ids(string text) => text.Select(Id).ToArray();
}

/// <summary>A temporary folder removed after the test.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir() => Directory.CreateDirectory(Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "wt-data-" + Guid.NewGuid().ToString("N")));
    public string Path { get; }
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
}

public enum Container { Jsonl, JsonlGz, Parquet }

/// <summary>Writes fixture rows as JSONL, JSONL.gz or Parquet with Parquet.Net directly (not the engine's writer).</summary>
internal static class Fixtures
{
    public static string Extension(Container container) => container switch
    {
        Container.Jsonl => ".jsonl",
        Container.JsonlGz => ".jsonl.gz",
        _ => ".parquet",
    };

    public static List<Dictionary<string, object?>> Messages(params (string Role, string Content)[] messages) =>
        messages.Select(m => new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList();

    public static string Write(TempDir dir, string name, Container container, IReadOnlyList<Dictionary<string, object?>> rows)
    {
        var path = dir.File(name + Extension(container));
        switch (container)
        {
            case Container.Jsonl:
                System.IO.File.WriteAllLines(path, rows.Select(r => JsonSerializer.Serialize(r)));
                break;
            case Container.JsonlGz:
                WriteGzipLines(path, rows.Select(r => JsonSerializer.Serialize(r)));
                break;
            default:
                WriteParquet(path, rows);
                break;
        }
        return path;
    }

    public static string WriteLines(TempDir dir, string name, Container container, IEnumerable<string> lines)
    {
        var path = dir.File(name + Extension(container));
        if (container == Container.JsonlGz) WriteGzipLines(path, lines);
        else System.IO.File.WriteAllLines(path, lines);
        return path;
    }

    private static void WriteGzipLines(string path, IEnumerable<string> lines)
    {
        using var file = System.IO.File.Create(path);
        using var gzip = new GZipStream(file, CompressionLevel.Fastest);
        using var writer = new StreamWriter(gzip, new UTF8Encoding(false));
        foreach (var line in lines) writer.WriteLine(line);
    }

    private static void WriteParquet(string path, IReadOnlyList<Dictionary<string, object?>> rows)
    {
        var names = rows.SelectMany(r => r.Keys).Distinct().ToList();
        var fields = names.Select(name =>
        {
            var sample = rows.Select(r => r.GetValueOrDefault(name)).FirstOrDefault(v => v is not null);
            return sample switch
            {
                List<Dictionary<string, object?>> => (Field)new ListField(name, new StructField("element", new DataField<string>("role"), new DataField<string>("content"))),
                long or int => new DataField<long?>(name),
                double => new DataField<double?>(name),
                _ => new DataField<string>(name, true),
            };
        }).ToArray();
        var data = rows.Select(r => (IDictionary<string, object?>)names.ToDictionary(n => n, n => r.GetValueOrDefault(n) is int i ? (long)i : r.GetValueOrDefault(n))).ToList();
        using var stream = System.IO.File.Create(path);
        ParquetSerializer.SerializeUntypedAsync(data, new ParquetSchema(fields), stream).GetAwaiter().GetResult();
    }

    /// <summary>The rows of any data file as raw dictionaries (JSON objects), to check what a writer put there.</summary>
    public static List<JsonElement> RawRows(string path)
    {
        var kind = DataFiles.DetectKind(path);
        if (kind == DataFileKind.Parquet)
        {
            using var stream = System.IO.File.OpenRead(path);
            var result = ParquetSerializer.DeserializeUntypedAsync(stream).GetAwaiter().GetResult();
            return result.Data.Select(d => JsonSerializer.SerializeToElement(d)).ToList();
        }
        using var file = System.IO.File.OpenRead(path);
        using Stream body = kind == DataFileKind.JsonlGzip ? new GZipStream(file, CompressionMode.Decompress) : file;
        using var reader = new StreamReader(body);
        var rows = new List<JsonElement>();
        while (reader.ReadLine() is { } line)
            if (line.Length > 0) rows.Add(JsonDocument.Parse(line).RootElement.Clone());
        return rows;
    }
}
