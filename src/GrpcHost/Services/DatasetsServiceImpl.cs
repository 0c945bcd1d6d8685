using Grpc.Core;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Storage;
using WeakTeacher.GrpcHost.Validation;

namespace WeakTeacher.GrpcHost.Services;

internal sealed class DatasetsServiceImpl(Catalog catalog, Store store, ServiceOptions options, ILogger<DatasetsServiceImpl> logger)
    : DatasetsService.DatasetsServiceBase
{
    public override async Task<Dataset> UploadDataset(IAsyncStreamReader<UploadDatasetRequest> requestStream, ServerCallContext context)
    {
        var ct = context.CancellationToken;
        if (!await requestStream.MoveNext(ct)) throw RequestErrors.Invalid("metadata", "the stream is empty; send metadata first");
        if (requestStream.Current.PayloadCase != UploadDatasetRequest.PayloadOneofCase.Metadata)
            throw RequestErrors.Invalid("metadata", "the first message must carry metadata, not data");
        var metadata = requestStream.Current.Metadata;
        var name = Names.CheckName("metadata.name", metadata.Name);
        CheckEnums(metadata);

        var record = await catalog.UploadDatasetAsync(name, metadata, Data(requestStream, ct), options.Limits.MaxDatasetBytes, ct);
        logger.LogInformation("Dataset {DatasetId} '{Name}' uploaded: {Rows} rows, {Bytes} bytes", record.Id, name, record.Rows, record.SizeBytes);
        return Catalog.ToProto(record);
    }

    /// <summary>The payload of the messages after the first: data only.</summary>
    private static async IAsyncEnumerable<ReadOnlyMemory<byte>> Data(IAsyncStreamReader<UploadDatasetRequest> requestStream,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct = default)
    {
        while (await requestStream.MoveNext(ct))
        {
            if (requestStream.Current.PayloadCase != UploadDatasetRequest.PayloadOneofCase.Data)
                throw RequestErrors.Invalid("metadata", "sent twice; after the first message only data may follow");
            yield return requestStream.Current.Data.Memory;
        }
    }

    private static void CheckEnums(DatasetMetadata metadata)
    {
        if (!Enum.IsDefined(metadata.Format)) throw RequestErrors.Invalid("metadata.format", $"unknown value {(int)metadata.Format}");
        if (!Enum.IsDefined(metadata.Encoding)) throw RequestErrors.Invalid("metadata.encoding", $"unknown value {(int)metadata.Encoding}");
    }

    public override async Task<Dataset> ImportDataset(ImportDatasetRequest request, ServerCallContext context)
    {
        if (string.IsNullOrEmpty(options.ImportDir))
            throw new RpcException(new Status(StatusCode.FailedPrecondition, "path: imports are disabled (ImportDir is not configured)"));
        var path = Names.ResolveInside("path", options.ImportDir, request.Path);
        if (!File.Exists(path)) throw new RpcException(new Status(StatusCode.NotFound, $"path: '{RequestErrors.Echo(request.Path)}' is not a file in the import folder"));
        var metadata = request.Metadata ?? new DatasetMetadata();
        var name = Names.CheckName("metadata.name", string.IsNullOrEmpty(metadata.Name) ? Path.GetFileName(path) : metadata.Name);
        CheckEnums(metadata);
        try
        {
            var record = await Task.Run(() => catalog.RegisterDatasetFile(DataLayout.NewId("ds"), name, path, metadata.Format, "import"), context.CancellationToken);
            logger.LogInformation("Dataset {DatasetId} '{Name}' imported from {Path}", record.Id, name, request.Path);
            return Catalog.ToProto(record);
        }
        catch (BadRowException e)
        {
            throw Catalog.BadRow(e);
        }
    }

    public override Task<ListDatasetsResponse> ListDatasets(ListDatasetsRequest request, ServerCallContext context)
    {
        var response = new ListDatasetsResponse();
        foreach (var d in store.ListDatasets())
            if (request.Format == DatasetFormat.Unspecified || (DatasetFormat)d.Format == request.Format)
                response.Datasets.Add(Catalog.ToProto(d));
        return Task.FromResult(response);
    }

    public override Task<Dataset> GetDataset(GetDatasetRequest request, ServerCallContext context) =>
        Task.FromResult(Catalog.ToProto(catalog.GetDataset("dataset_id", request.DatasetId)));

    public override Task<DeleteDatasetResponse> DeleteDataset(DeleteDatasetRequest request, ServerCallContext context)
    {
        catalog.DeleteDataset("dataset_id", request.DatasetId);
        logger.LogInformation("Dataset {DatasetId} deleted", request.DatasetId);
        return Task.FromResult(new DeleteDatasetResponse());
    }
}
