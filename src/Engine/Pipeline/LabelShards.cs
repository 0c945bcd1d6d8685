using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Labelling;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Engine.Training;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>A finished shard's completion record (shards/shard-IIIII-of-NNNNN.json), written after its labels file.</summary>
public sealed record LabelShardManifest
{
    public const string FormatName = "wt-label-shard/1";
    public string Format { get; init; } = FormatName;
    public int ShardIndex { get; init; }
    public int ShardCount { get; init; }
    /// <summary>The shard's rows are [FirstRow, FirstRow + Rows) of the input, in input order.</summary>
    public int FirstRow { get; init; }
    public int Rows { get; init; }
    public int TotalRows { get; init; }
    /// <summary>SHA-256 of the unlabelled input file the shard was cut from.</summary>
    public required string InputSha256 { get; init; }
    /// <summary>Everything the labels depend on (settings, teacher and input identity), as the stage result records it.</summary>
    public required SortedDictionary<string, string> Settings { get; init; }
    /// <summary>The labelling request, so that a merge needs only the folder.</summary>
    public required LabelRequest Request { get; init; }
    public required string DataFile { get; init; }
    public required string DataSha256 { get; init; }
    public double Seconds { get; init; }
}

/// <summary>
/// Labelling split over processes or hosts that share a folder: shard I of N labels a deterministic, contiguous slice of
/// the unlabelled set (whole length-sorting windows of whole batches, so every batch is the one a single run forms and
/// the labels are the same bits) and
/// writes its labels atomically with a completion manifest; <see cref="Merge"/> checks that every shard is there, finished
/// and cut from the same input with the same settings, then writes the labelled set in input order through the writer a
/// single run uses, so the merged files are byte-identical to a single-process run. A shard that is already complete
/// with the same settings is not redone (a scheduler's retry costs nothing).
/// </summary>
public static class LabelShards
{
    public const string FolderName = "shards";

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        WriteIndented = true,
    };

    /// <summary>Rows [Start, Start + Count) of shard <paramref name="index"/> of <paramref name="count"/>: the labeller's
    /// length-sorting windows (<see cref="LengthBatches.Window"/> of <paramref name="batchSize"/>) are split as evenly as
    /// whole windows allow (a shard may be empty), so each shard forms the batches a single run forms.</summary>
    public static (int Start, int Count) Slice(int totalRows, int batchSize, int index, int count)
    {
        CheckShard(index, count);
        ArgumentOutOfRangeException.ThrowIfNegative(totalRows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        long window = LengthBatches.Window(batchSize);
        long windows = (totalRows + window - 1) / window;
        long first = windows * index / count, end = windows * (index + 1) / count;
        int start = (int)Math.Min(first * window, totalRows), stop = (int)Math.Min(end * window, totalRows);
        return (start, stop - start);
    }

    public static string ShardName(int index, int count) => $"shard-{index:D5}-of-{count:D5}";

    /// <summary>Labels shard <paramref name="index"/> of <paramref name="count"/> into <paramref name="workDir"/>/shards.</summary>
    public static LabelShardManifest RunShard(LabelRequest request, string workDir, int index, int count, IProgress<JobProgress>? progress,
        CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        CheckShard(index, count);
        string dir = Path.Combine(workDir, FolderName);
        string manifestPath = Path.Combine(dir, ShardName(index, count) + ".json");
        var settings = PipelineStages.LabelSettings(request);
        if (TryReadManifest(manifestPath) is { } done && RunSettingsText.Fingerprint(done.Settings) == RunSettingsText.Fingerprint(settings)
            && DataIntact(dir, done))
            return done;
        var device = TorchDevice.Initialize(request.Device);
        var pairs = PipelineStages.ReadPairsToLabel(request);
        var (start, rows) = Slice(pairs.Count, request.BatchSize, index, count);
        var clock = Stopwatch.StartNew();
        IReadOnlyList<PairLabel> labels = [];
        if (rows > 0)
        {
            using var labeler = PipelineStages.OpenLabeler(request, device);
            labels = labeler.LabelAll(pairs.GetRange(start, rows), request.BatchSize, 0,
                PipelineStages.Prefix(progress, $"label/{ShardName(index, count)}"), ct).Labels;
        }
        Failpoints.Hit(Failpoints.LabelShardLabelled);
        Directory.CreateDirectory(dir);
        string dataFile = ShardName(index, count) + ".labels.jsonl";
        AtomicFile.WriteAllBytes(Path.Combine(dir, dataFile), LabelLines(labels, start));
        var manifest = new LabelShardManifest
        {
            ShardIndex = index, ShardCount = count, FirstRow = start, Rows = rows, TotalRows = pairs.Count,
            InputSha256 = settings["unlabelled_data_path"], Settings = settings, Request = request,
            DataFile = dataFile, DataSha256 = Hashing.FileSha256(Path.Combine(dir, dataFile)), Seconds = clock.Elapsed.TotalSeconds,
        };
        // the manifest is the completion marker: it names the labels file and its hash, and is written last
        AtomicFile.WriteAllText(manifestPath, JsonSerializer.Serialize(manifest, Json));
        return manifest;
    }

    /// <summary>The finished shards under <paramref name="workDir"/>/shards for a shard count, by index (null = not finished).</summary>
    public static LabelShardManifest?[] Finished(string workDir, int count)
    {
        string dir = Path.Combine(workDir, FolderName);
        var found = new LabelShardManifest?[count];
        for (int i = 0; i < count; i++)
            if (TryReadManifest(Path.Combine(dir, ShardName(i, count) + ".json")) is { } m && DataIntact(dir, m)) found[i] = m;
        return found;
    }

    /// <summary>
    /// Checks the shards under <paramref name="workDir"/>/shards and writes the labelled set, labels.jsonl and the stage
    /// result into <paramref name="workDir"/>, as a single run of the same request would. Throws
    /// <see cref="InvalidDataException"/> naming what is missing, unfinished or inconsistent.
    /// </summary>
    public static StageResult Merge(string workDir)
    {
        string dir = Path.Combine(workDir, FolderName);
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: no shards to merge (run `wt label --shard-index I --shard-count N` first).");
        var manifests = Directory.GetFiles(dir, "shard-*-of-*.json").OrderBy(f => f, StringComparer.Ordinal)
            .Select(f => (Path: f, Manifest: TryReadManifest(f))).ToList();
        if (manifests.Count == 0) throw new InvalidDataException($"{dir}: no finished shard (no shard-*-of-*.json manifest).");
        var counts = manifests.Where(m => m.Manifest is not null).Select(m => m.Manifest!.ShardCount).Distinct().Order().ToList();
        if (counts.Count != 1)
            throw new InvalidDataException($"{dir}: shards of runs with different shard counts ({string.Join(", ", counts)}); label again into a clean folder.");
        int count = counts[0];
        var shards = Finished(workDir, count);
        var missing = Enumerable.Range(0, count).Where(i => shards[i] is null).ToList();
        if (missing.Count > 0)
            throw new InvalidDataException($"{dir}: {missing.Count} of {count} shards missing or unfinished: " +
                string.Join(", ", missing.Take(20).Select(i => ShardName(i, count))) + (missing.Count > 20 ? ", ..." : "") + ".");
        var first = shards[0]!;
        foreach (var s in shards)
        {
            if (StageFingerprint.Mismatch(s!.Settings, first.Settings) is { } why)
                throw new InvalidDataException($"{dir}: {ShardName(s.ShardIndex, count)} was labelled with other settings than {ShardName(0, count)}: {why}.");
        }
        var request = first.Request;
        var settings = PipelineStages.LabelSettings(request);
        if (StageFingerprint.Mismatch(first.Settings, settings) is { } changed)
            throw new InvalidDataException($"{dir}: the input or teacher changed since the shards were labelled: {changed}.");
        if (PipelineStages.TryReadResult(workDir, settings, out string? redo) is { } done) return done;
        var pairs = PipelineStages.ReadPairsToLabel(request);
        if (pairs.Count != first.TotalRows)
            throw new InvalidDataException($"{request.UnlabelledDataPath}: {pairs.Count} pairs, the shards were cut from {first.TotalRows}.");
        var labels = new List<PairLabel>(pairs.Count);
        foreach (var s in shards)
        {
            if (s!.FirstRow != labels.Count || s.TotalRows != first.TotalRows)
                throw new InvalidDataException($"{dir}: {ShardName(s.ShardIndex, count)} covers rows from {s.FirstRow}, expected {labels.Count}.");
            labels.AddRange(ReadLabels(Path.Combine(dir, s.DataFile), s));
        }
        if (labels.Count != pairs.Count)
            throw new InvalidDataException($"{dir}: the shards hold {labels.Count} labels for {pairs.Count} pairs.");
        // wall time of the slowest shard: the shards ran side by side
        double seconds = shards.Max(s => s!.Seconds);
        return PipelineStages.WriteLabelling(request, pairs, labels, workDir, seconds, settings, redo);
    }

    private static void CheckShard(int index, int count)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(count), count, "the shard count must be at least 1");
        if (index < 0 || index >= count)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"the shard index must lie in [0, {count - 1}] for {count} shards");
    }

    private static LabelShardManifest? TryReadManifest(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            var m = JsonSerializer.Deserialize<LabelShardManifest>(File.ReadAllText(path), Json);
            return m?.Format == LabelShardManifest.FormatName ? m : null;
        }
        catch (JsonException) { return null; }
    }

    private static bool DataIntact(string dir, LabelShardManifest m)
    {
        string path = Path.Combine(dir, m.DataFile);
        return File.Exists(path) && Hashing.FileSha256(path) == m.DataSha256;
    }

    // One line per pair: its input row index and the teacher's label; doubles in the round-trip form, so reading them
    // back gives the same bits.
    private static byte[] LabelLines(IReadOnlyList<PairLabel> labels, int firstRow)
    {
        using var stream = new MemoryStream();
        using var writer = new Utf8JsonWriter(stream);
        for (int i = 0; i < labels.Count; i++)
        {
            var l = labels[i];
            writer.WriteStartObject();
            writer.WriteNumber("index", firstRow + i);
            writer.WriteNumber("label", l.Label);
            writer.WriteNumber("reward_a", l.RewardA);
            writer.WriteNumber("reward_b", l.RewardB);
            writer.WriteNumber("margin", l.Margin);
            writer.WriteNumber("confidence", l.Confidence);
            writer.WriteEndObject();
            writer.Flush();
            stream.WriteByte((byte)'\n');
            writer.Reset();
        }
        return stream.ToArray();
    }

    private static IEnumerable<PairLabel> ReadLabels(string path, LabelShardManifest m)
    {
        int expected = m.FirstRow;
        foreach (var line in File.ReadLines(path))
        {
            using var doc = JsonDocument.Parse(line);
            var e = doc.RootElement;
            if (e.GetProperty("index").GetInt32() != expected)
                throw new InvalidDataException($"{path}: row {expected - m.FirstRow + 1} has index {e.GetProperty("index").GetInt32()}, expected {expected}.");
            expected++;
            yield return new PairLabel(e.GetProperty("label").GetInt32(), e.GetProperty("reward_a").GetDouble(), e.GetProperty("reward_b").GetDouble(),
                e.GetProperty("margin").GetDouble(), e.GetProperty("confidence").GetDouble());
        }
        if (expected != m.FirstRow + m.Rows) throw new InvalidDataException($"{path}: {expected - m.FirstRow} rows, the manifest says {m.Rows}.");
    }
}
