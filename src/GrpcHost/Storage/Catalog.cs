using WeakTeacher.Engine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf.WellKnownTypes;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Models;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Validation;

namespace WeakTeacher.GrpcHost.Storage;

/// <summary>Datasets and models: registration (always staged under tmp/ then renamed into place), lookup, deletion.</summary>
internal sealed partial class Catalog(DataLayout layout, Store store, ServiceOptions options)
{
    public DataLayout Layout => layout;

    // ---- datasets

    public static string FileNameFor(FileEncoding encoding) => encoding switch
    {
        FileEncoding.JsonlGz => "data.jsonl.gz",
        FileEncoding.Parquet => "data.parquet",
        _ => "data.jsonl",
    };

    /// <summary>Publishes a checked dataset file that sits in a staging folder under tmp/ and lists it.</summary>
    public DatasetRecord PublishDataset(string id, string name, string stagedFile, FileEncoding encoding, DatasetCheck check, string source)
    {
        var record = PublishDatasetFile(id, name, stagedFile, encoding, check, source);
        store.InsertDataset(record);
        return record;
    }

    /// <summary>The files of <see cref="PublishDataset"/>, not listed (a folder an earlier attempt published is kept).</summary>
    private DatasetRecord PublishDatasetFile(string id, string name, string stagedFile, FileEncoding encoding, DatasetCheck check, string source)
    {
        var stagedDir = Path.GetDirectoryName(stagedFile)!;
        var fileName = FileNameFor(encoding);
        var size = new FileInfo(stagedFile).Length;
        var sha = Hashing.FileSha256(stagedFile);
        var dir = Path.Combine(stagedDir, "publish");
        Directory.CreateDirectory(dir);
        File.Move(stagedFile, Path.Combine(dir, fileName));
        DataLayout.PublishDirectory(dir, layout.DatasetDir(id));
        return new DatasetRecord(id, name, (int)check.Format, (int)encoding, check.Rows, size, sha, DateTimeOffset.UtcNow, source, fileName);
    }

    /// <summary>Copies, checks and registers a complete file from elsewhere (import folder, default task).</summary>
    public DatasetRecord RegisterDatasetFile(string id, string name, string path, DatasetFormat format, string source, bool check = true)
    {
        var record = CopyDatasetFile(id, name, path, format, source, check);
        store.InsertDataset(record);
        return record;
    }

    /// <summary>Copies and checks a complete file (a job's output) into datasets/&lt;id&gt; and returns its record without
    /// listing it: the job lists its outputs when it succeeds (<see cref="Store.FinishJob"/>).</summary>
    public DatasetRecord CopyDatasetFile(string id, string name, string path, DatasetFormat format, string source, bool check = true)
    {
        var temp = layout.NewTempDir();
        try
        {
            var staged = Path.Combine(temp, "upload");
            DataLayout.CopyFileDurably(path, staged);
            Span<byte> head = stackalloc byte[4];
            int read;
            using (var s = File.OpenRead(staged)) read = s.ReadAtLeast(head, 4, throwOnEndOfStream: false);
            var encoding = DatasetValidator.Sniff(head[..read]);
            var result = check || format == DatasetFormat.Unspecified
                ? DatasetValidator.CheckFile(staged, format, temp, DatasetLimits.From(options.Limits))
                : new DatasetCheck(format, 0);
            return PublishDatasetFile(id, name, staged, encoding, result, source);
        }
        finally
        {
            DataLayout.TryDelete(temp);
        }
    }

    public DatasetRecord GetDataset(string field, string? id)
    {
        RequestErrors.Required(field, id);
        return store.GetDataset(id!) ?? throw RequestErrors.NotFound(field, "dataset", id!);
    }

    public DatasetRecord? GetDatasetOrNull(string id) => store.GetDataset(id);

    public string DatasetPath(DatasetRecord d) => Path.Combine(layout.DatasetDir(d.Id), d.FileName);

    public void DeleteDataset(string field, string? id)
    {
        var record = GetDataset(field, id);
        store.DeleteDataset(record.Id);
        DataLayout.TryDelete(layout.DatasetDir(record.Id));
    }

    public static Dataset ToProto(DatasetRecord d) => new()
    {
        Id = d.Id, Name = d.Name, Format = (DatasetFormat)d.Format, Encoding = (FileEncoding)d.Encoding, Rows = d.Rows,
        SizeBytes = d.SizeBytes, Sha256 = d.Sha256, CreatedAt = Timestamp.FromDateTimeOffset(d.CreatedAt), Source = d.Source,
    };

    // ---- models

    /// <summary>
    /// What kind of model folder this is: config.json at the top (checked with the engine's parser; its model_type),
    /// a PEFT adapter ("peft"), or a folder whose sub-folders hold checkpoints (a trained teacher: "composite").
    /// </summary>
    public static string InspectModel(string dir)
    {
        var config = Path.Combine(dir, "config.json");
        if (File.Exists(config))
        {
            try { return ModelConfig.Load(config).ModelType; }
            catch (CheckpointException e) { throw RequestErrors.Invalid("config.json", e.Problem); }
            catch (NotSupportedException e) { throw RequestErrors.Invalid("config.json", e.Message); }
        }
        if (File.Exists(Path.Combine(dir, "adapter_config.json")))
        {
            try { JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json"))); }
            catch (JsonException e) { throw RequestErrors.Invalid("adapter_config.json", $"malformed JSON: {e.Message}"); }
            return "peft";
        }
        if (Directory.EnumerateFiles(dir, "config.json", SearchOption.AllDirectories).Any() ||
            Directory.EnumerateFiles(dir, "adapter_config.json", SearchOption.AllDirectories).Any())
            return "composite";
        throw RequestErrors.Invalid("files", "no config.json (or PEFT adapter_config.json) in the model");
    }

    /// <summary>Publishes a complete staged model folder under tmp/ as models/&lt;id&gt; and lists it.</summary>
    public ModelRecord PublishModel(string id, string name, string stagedDir, string source)
    {
        var record = PublishModelFiles(id, name, stagedDir, source);
        store.InsertModel(record);
        return record;
    }

    /// <summary>The files of <see cref="PublishModel"/>, not listed (a folder an earlier attempt published is kept).</summary>
    private ModelRecord PublishModelFiles(string id, string name, string stagedDir, string source)
    {
        var modelType = InspectModel(stagedDir);
        var files = ListFiles(stagedDir);
        DataLayout.PublishDirectory(stagedDir, layout.ModelDir(id));
        return new ModelRecord(id, name, modelType, files.Sum(f => f.Size), DateTimeOffset.UtcNow, source,
            JsonSerializer.Serialize(files.Select(f => new ModelFileEntry(f.Path, f.Size, f.Sha256)).ToList()));
    }

    /// <summary>Copies a model folder from elsewhere (import folder, default task) and registers it.</summary>
    public ModelRecord RegisterModelDir(string id, string name, string dir, string source)
    {
        var record = CopyModelDir(id, name, dir, source);
        store.InsertModel(record);
        return record;
    }

    /// <summary>Copies a model folder (a job's output) to models/&lt;id&gt; and returns its record without listing it: the
    /// job lists its outputs when it succeeds (<see cref="Store.FinishJob"/>).</summary>
    public ModelRecord CopyModelDir(string id, string name, string dir, string source)
    {
        var temp = layout.NewTempDir();
        try
        {
            var staged = Path.Combine(temp, "model");
            DataLayout.CopyDirectory(dir, staged);
            return PublishModelFiles(id, name, staged, source);
        }
        finally
        {
            DataLayout.TryDelete(temp);
        }
    }

    internal sealed record ModelFileEntry(string Path, long Size, string Sha256);

    private static List<ModelFileEntry> ListFiles(string dir) =>
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
            .Select(f => new ModelFileEntry(Path.GetRelativePath(dir, f).Replace(Path.DirectorySeparatorChar, '/'),
                new FileInfo(f).Length, Hashing.FileSha256(f)))
            .OrderBy(f => f.Path, StringComparer.Ordinal)
            .ToList();

    public ModelRecord GetModel(string field, string? id)
    {
        RequestErrors.Required(field, id);
        return store.GetModel(id!) ?? throw RequestErrors.NotFound(field, "model", id!);
    }

    public ModelRecord? GetModelOrNull(string id) => store.GetModel(id);

    /// <summary>
    /// The fewest positions any network of the model takes (max_position_embeddings / n_positions of each config.json in
    /// its folder: a base model has one, a teacher one per policy, reference or reward model); null when none is readable.
    /// </summary>
    public int? MaxPositions(ModelRecord m)
    {
        int? fewest = null;
        foreach (var config in Directory.EnumerateFiles(ModelPath(m), "config.json", SearchOption.AllDirectories))
        {
            try { int n = ModelConfig.Load(config).MaxPositionEmbeddings; fewest = fewest is { } f ? Math.Min(f, n) : n; }
            catch (Exception e) when (e is CheckpointException or NotSupportedException or IOException or JsonException) { }
        }
        return fewest;
    }

    /// <summary>
    /// Refuses a max_length the client set that the model cannot take: a request-time INVALID_ARGUMENT, not a job that
    /// fails later. (An unset one keeps the trainers' default, which truncates; the data decide whether it is reached.)
    /// </summary>
    public void CheckLength(string modelField, ModelRecord m, params (string Field, int? MaxLength)[] lengths)
    {
        if (lengths.All(l => l.MaxLength is null) || MaxPositions(m) is not { } positions) return;
        foreach (var (field, maxLength) in lengths)
            if (maxLength > positions)
                throw RequestErrors.Invalid(field, $"{maxLength} is more than the {positions} positions of {modelField} '{m.Id}'");
    }

    /// <summary>A model that a Train job made into a teacher (it has the teacher manifest); any other model is the caller's mistake.</summary>
    public ModelRecord GetTeacher(string field, string? id)
    {
        var model = GetModel(field, id);
        if (!File.Exists(Path.Combine(ModelPath(model), WeakTeacher.Engine.Pipeline.TeacherManifest.FileName)))
            throw new global::Grpc.Core.RpcException(new global::Grpc.Core.Status(global::Grpc.Core.StatusCode.FailedPrecondition,
                $"{field}: model '{model.Id}' is not a trained teacher (a base or aligned model); train one with Jobs.Train and use its 'teacher' artifact"));
        return model;
    }

    public string ModelPath(ModelRecord m) => layout.ModelDir(m.Id);

    public void DeleteModel(string field, string? id)
    {
        var record = GetModel(field, id);
        store.DeleteModel(record.Id);
        DataLayout.TryDelete(layout.ModelDir(record.Id));
    }

    public static Model ToProto(ModelRecord m)
    {
        var model = new Model
        {
            Id = m.Id, Name = m.Name, ModelType = m.ModelType, SizeBytes = m.SizeBytes,
            CreatedAt = Timestamp.FromDateTimeOffset(m.CreatedAt), Source = m.Source,
        };
        foreach (var f in JsonSerializer.Deserialize<List<ModelFileEntry>>(m.FilesJson) ?? [])
            model.Files.Add(new ModelFile { Path = f.Path, Size = f.Size, Sha256 = f.Sha256 });
        return model;
    }

    public static IReadOnlyList<ModelFileEntry> Files(ModelRecord m) =>
        JsonSerializer.Deserialize<List<ModelFileEntry>>(m.FilesJson) ?? [];
}
