using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Storage;
using WeakTeacher.GrpcHost.Validation;

namespace WeakTeacher.GrpcHost.Services;

internal sealed class ModelsServiceImpl(Catalog catalog, Store store, ServiceOptions options, ILogger<ModelsServiceImpl> logger)
    : ModelsService.ModelsServiceBase
{
    public override async Task<Model> UploadModel(IAsyncStreamReader<UploadModelRequest> requestStream, ServerCallContext context)
    {
        var ct = context.CancellationToken;
        if (!await requestStream.MoveNext(ct)) throw RequestErrors.Invalid("metadata", "the stream is empty; send metadata first");
        if (requestStream.Current.PayloadCase != UploadModelRequest.PayloadOneofCase.Metadata)
            throw RequestErrors.Invalid("metadata", "the first message must carry metadata, not a file chunk");
        var name = Names.CheckName("metadata.name", requestStream.Current.Metadata.Name);
        var temp = catalog.Layout.NewTempDir();
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
                while (await requestStream.MoveNext(ct))
                {
                    var message = requestStream.Current;
                    if (message.PayloadCase != UploadModelRequest.PayloadOneofCase.Chunk)
                        throw RequestErrors.Invalid("metadata", "sent twice; after the first message only file chunks may follow");
                    var chunk = message.Chunk;
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
                    if (total > options.Limits.MaxModelBytes)
                        throw new RpcException(new Status(StatusCode.ResourceExhausted,
                            $"chunk.data: the model is larger than {options.Limits.MaxModelBytes} bytes (Limits:MaxModelBytes)"));
                    await current.WriteAsync(chunk.Data.Memory, ct);
                    if (chunk.Eof)
                    {
                        await current.FlushAsync(ct);
                        current.Flush(flushToDisk: true);
                        await current.DisposeAsync();
                        current = null;
                        if (!string.IsNullOrEmpty(chunk.Sha256))
                        {
                            var actual = DataLayout.Sha256Of(Path.Combine(staged, path.Replace('/', Path.DirectorySeparatorChar)));
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
            var record = catalog.PublishModel(DataLayout.NewId("mdl"), name, staged, "upload");
            logger.LogInformation("Model {ModelId} '{Name}' uploaded: {Files} files, {Bytes} bytes", record.Id, name, finished.Count, record.SizeBytes);
            return Catalog.ToProto(record);
        }
        finally
        {
            DataLayout.TryDelete(temp);
        }
    }

    public override async Task<Model> ImportModel(ImportModelRequest request, ServerCallContext context)
    {
        if (string.IsNullOrEmpty(options.ImportDir))
            throw new RpcException(new Status(StatusCode.FailedPrecondition, "path: imports are disabled (ImportDir is not configured)"));
        var path = Names.ResolveInside("path", options.ImportDir, request.Path);
        if (!Directory.Exists(path)) throw new RpcException(new Status(StatusCode.NotFound, $"path: '{RequestErrors.Echo(request.Path)}' is not a folder in the import folder"));
        if (Directory.EnumerateFileSystemEntries(path, "*", SearchOption.AllDirectories).Any(e => new FileInfo(e).LinkTarget is not null))
            throw RequestErrors.Invalid("path", "the folder contains symbolic links, which imports do not follow");
        var name = Names.CheckName("metadata.name", string.IsNullOrEmpty(request.Metadata?.Name) ? Path.GetFileName(path) : request.Metadata.Name);
        var record = await Task.Run(() => catalog.RegisterModelDir(DataLayout.NewId("mdl"), name, path, "import"), context.CancellationToken);
        logger.LogInformation("Model {ModelId} '{Name}' imported from {Path}", record.Id, name, request.Path);
        return Catalog.ToProto(record);
    }

    public override Task<ListModelsResponse> ListModels(ListModelsRequest request, ServerCallContext context)
    {
        var response = new ListModelsResponse();
        response.Models.AddRange(store.ListModels().Select(Catalog.ToProto));
        return Task.FromResult(response);
    }

    public override Task<Model> GetModel(GetModelRequest request, ServerCallContext context) =>
        Task.FromResult(Catalog.ToProto(catalog.GetModel("model_id", request.ModelId)));

    public override Task<DeleteModelResponse> DeleteModel(DeleteModelRequest request, ServerCallContext context)
    {
        catalog.DeleteModel("model_id", request.ModelId);
        logger.LogInformation("Model {ModelId} deleted", request.ModelId);
        return Task.FromResult(new DeleteModelResponse());
    }

    public override async Task DownloadModel(DownloadModelRequest request, IServerStreamWriter<FileChunk> responseStream, ServerCallContext context)
    {
        var model = catalog.GetModel("model_id", request.ModelId);
        if (request.ChunkSize < 0 || request.ChunkSize > 4 << 20) throw RequestErrors.Invalid("chunk_size", $"{request.ChunkSize} must be in [0, {4 << 20}]");
        int chunkSize = Math.Min(request.ChunkSize == 0 ? 1 << 20 : request.ChunkSize, options.Limits.MaxMessageBytes - 1024);
        var dir = catalog.ModelPath(model);
        foreach (var entry in Catalog.Files(model))
            await FileStreaming.SendFile(Path.Combine(dir, entry.Path), entry.Path, chunkSize, responseStream, context.CancellationToken);
    }
}

internal static class FileStreaming
{
    /// <summary>Sends one file as chunks: size on the first, SHA-256 and eof on the last (an empty file is one chunk).</summary>
    public static async Task SendFile(string fullPath, string path, int chunkSize, IServerStreamWriter<FileChunk> stream, CancellationToken ct)
    {
        await using var file = new FileStream(fullPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, useAsync: true);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[chunkSize];
        long offset = 0, size = file.Length;
        while (true)
        {
            int read = await file.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, ct);
            hash.AppendData(buffer, 0, read);
            bool eof = offset + read >= size;
            var chunk = new FileChunk { Path = path, Offset = offset, Data = ByteString.CopyFrom(buffer, 0, read), Eof = eof };
            if (offset == 0) chunk.Size = size;
            if (eof) chunk.Sha256 = Convert.ToHexStringLower(hash.GetHashAndReset());
            await stream.WriteAsync(chunk, ct);
            offset += read;
            if (eof) break;
        }
    }
}
