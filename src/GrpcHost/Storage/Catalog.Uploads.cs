using WeakTeacher.Engine;
using Grpc.Core;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Validation;

namespace WeakTeacher.GrpcHost.Storage;

/// <summary>Uploads: the bytes a client streams are staged under tmp/, checked while they arrive, then published.</summary>
internal sealed partial class Catalog
{
    /// <summary>Stages, checks and publishes an uploaded dataset (<paramref name="data"/>: the payload chunks in order).</summary>
    public async Task<DatasetRecord> UploadDatasetAsync(string name, DatasetMetadata metadata, IAsyncEnumerable<ReadOnlyMemory<byte>> data,
        long maxBytes, CancellationToken ct)
    {
        var temp = Layout.NewTempDir();
        DatasetValidator.Streaming? streaming = null;
        try
        {
            var staged = Path.Combine(temp, "upload");
            FileEncoding encoding = FileEncoding.Unspecified;
            long size = 0;
            var head = new List<byte>(4);
            await using (var file = new FileStream(staged, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true))
            {
                await foreach (var chunk in data.WithCancellation(ct))
                {
                    size += chunk.Length;
                    if (size > maxBytes)
                        throw new RpcException(new Status(StatusCode.ResourceExhausted,
                            $"data: the dataset is larger than {maxBytes} bytes (Limits:MaxDatasetBytes)"));
                    await file.WriteAsync(chunk, ct);
                    if (encoding == FileEncoding.Unspecified)
                    {
                        int taken = Math.Min(chunk.Length, 4 - head.Count);
                        foreach (var b in chunk.Span[..taken]) head.Add(b);
                        if (head.Count < 4) continue;
                        encoding = StartEncoding(metadata, head.ToArray());
                        if (encoding != FileEncoding.Parquet)
                        {
                            streaming = new DatasetValidator.Streaming(metadata.Format, encoding == FileEncoding.JsonlGz, temp, DatasetLimits.From(options.Limits));
                            await FeedValidator(streaming, head.ToArray(), ct);
                            await FeedValidator(streaming, chunk[taken..], ct);
                            head.Clear();
                        }
                        continue;
                    }
                    if (streaming is not null) await FeedValidator(streaming, chunk, ct);
                }
                await file.FlushAsync(ct);
                file.Flush(flushToDisk: true);
            }
            if (size == 0) throw RequestErrors.Invalid("data", "no bytes were sent");
            if (encoding == FileEncoding.Unspecified)
            {
                // Fewer than 4 bytes in all: check what there is.
                encoding = StartEncoding(metadata, head.ToArray());
                streaming = new DatasetValidator.Streaming(metadata.Format, false, temp, DatasetLimits.From(options.Limits));
                await FeedValidator(streaming, head.ToArray(), ct);
            }
            DatasetCheck check;
            try
            {
                check = streaming is not null
                    ? await streaming.CompleteAsync()
                    : await Task.Run(() => DatasetValidator.CheckFile(staged, metadata.Format, temp, DatasetLimits.From(options.Limits)), ct);
                streaming = null;
            }
            catch (BadRowException e)
            {
                streaming = null;
                throw BadRow(e);
            }
            return PublishDataset(DataLayout.NewId("ds"), name, staged, encoding, check, "upload");
        }
        finally
        {
            if (streaming is not null) await streaming.AbandonAsync();
            DataLayout.TryDelete(temp);
        }
    }

    /// <summary>A bad row as the client's error: INVALID_ARGUMENT naming the line and field.</summary>
    public static RpcException BadRow(BadRowException e) =>
        RequestErrors.Invalid("data", e.Field is null ? $"{e.Location}: {e.Problem}" : $"{e.Location}: field '{e.Field}': {e.Problem}");

    private static async Task FeedValidator(DatasetValidator.Streaming streaming, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        if (data.IsEmpty) return;
        try { await streaming.WriteAsync(data, ct); }
        catch (BadRowException e) { throw BadRow(e); }
    }

    /// <summary>The encoding the bytes show; a declared encoding (or a name ending .gz/.parquet) that disagrees is refused.</summary>
    private static FileEncoding StartEncoding(DatasetMetadata metadata, byte[] head)
    {
        var sniffed = DatasetValidator.Sniff(head);
        var declared = metadata.Encoding;
        if (declared == FileEncoding.Unspecified)
        {
            if (metadata.Name.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase)) declared = FileEncoding.Parquet;
            else if (metadata.Name.EndsWith(".gz", StringComparison.OrdinalIgnoreCase)) declared = FileEncoding.JsonlGz;
        }
        if (declared != FileEncoding.Unspecified && declared != sniffed)
            throw RequestErrors.Invalid("metadata.encoding", $"declared {declared} but the data starts like {sniffed}");
        if (sniffed == FileEncoding.Parquet && metadata.Format == DatasetFormat.Prompts)
            throw RequestErrors.Invalid("metadata.format", "prompt files must be JSON lines");
        return sniffed;
    }

    /// <summary>Stages and publishes an uploaded model: each file's chunks in order, ended by eof (and its SHA-256 checked when sent).</summary>
    public async Task<(ModelRecord Record, int Files)> UploadModelAsync(string name, IAsyncEnumerable<FileChunk> chunks, long maxBytes, CancellationToken ct)
    {
        var temp = Layout.NewTempDir();
        try
        {
            var staged = Path.Combine(temp, "model");
            Directory.CreateDirectory(staged);
            var finished = new HashSet<string>(StringComparer.Ordinal);
            string? currentPath = null;
            FileStream? current = null;
            long total = 0;
            try
            {
                await foreach (var chunk in chunks.WithCancellation(ct))
                {
                    var path = Names.CheckRelativeFilePath("chunk.path", chunk.Path);
                    if (path != currentPath)
                    {
                        if (current is not null) throw RequestErrors.Invalid("chunk.path", $"'{RequestErrors.Echo(currentPath)}' was not finished (eof) before '{RequestErrors.Echo(path)}' started");
                        if (finished.Contains(path)) throw RequestErrors.Invalid("chunk.path", $"'{RequestErrors.Echo(path)}' was sent twice");
                        var target = Path.Combine(staged, path.Replace('/', Path.DirectorySeparatorChar));
                        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                        current = new FileStream(target, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true);
                        currentPath = path;
                    }
                    if (chunk.Offset != current!.Length)
                        throw RequestErrors.Invalid("chunk.offset", $"{chunk.Offset} for '{RequestErrors.Echo(path)}', expected {current.Length} (chunks in order)");
                    total += chunk.Data.Length;
                    if (total > maxBytes)
                        throw new RpcException(new Status(StatusCode.ResourceExhausted,
                            $"chunk.data: the model is larger than {maxBytes} bytes (Limits:MaxModelBytes)"));
                    await current.WriteAsync(chunk.Data.Memory, ct);
                    if (chunk.Eof)
                    {
                        await current.FlushAsync(ct);
                        current.Flush(flushToDisk: true);
                        await current.DisposeAsync();
                        current = null;
                        if (!string.IsNullOrEmpty(chunk.Sha256))
                        {
                            var actual = Hashing.FileSha256(Path.Combine(staged, path.Replace('/', Path.DirectorySeparatorChar)));
                            if (!string.Equals(actual, chunk.Sha256, StringComparison.OrdinalIgnoreCase))
                                throw RequestErrors.Invalid("chunk.sha256", $"'{RequestErrors.Echo(path)}' arrived with SHA-256 {actual}, the client said {RequestErrors.Echo(chunk.Sha256)}");
                        }
                        finished.Add(path);
                        currentPath = null;
                    }
                }
            }
            finally
            {
                if (current is not null) await current.DisposeAsync();
            }
            if (currentPath is not null) throw RequestErrors.Invalid("chunk.eof", $"'{RequestErrors.Echo(currentPath)}' never got its last chunk (eof)");
            if (finished.Count == 0) throw RequestErrors.Invalid("chunk", "no files were sent");
            return (PublishModel(DataLayout.NewId("mdl"), name, staged, "upload"), finished.Count);
        }
        finally
        {
            DataLayout.TryDelete(temp);
        }
    }
}
