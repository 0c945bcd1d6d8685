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
        var (record, files) = await catalog.UploadModelAsync(name, Chunks(requestStream, ct), options.Limits.MaxModelBytes, ct);
        logger.LogInformation("Model {ModelId} '{Name}' uploaded: {Files} files, {Bytes} bytes", record.Id, name, files, record.SizeBytes);
        return Catalog.ToProto(record);
    }

    /// <summary>The file chunks of the messages after the first.</summary>
    private static async IAsyncEnumerable<FileChunk> Chunks(IAsyncStreamReader<UploadModelRequest> requestStream,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct = default)
    {
        while (await requestStream.MoveNext(ct))
        {
            if (requestStream.Current.PayloadCase != UploadModelRequest.PayloadOneofCase.Chunk)
                throw RequestErrors.Invalid("metadata", "sent twice; after the first message only file chunks may follow");
            yield return requestStream.Current.Chunk;
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
