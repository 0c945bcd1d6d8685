using System.IO.Compression;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>Calls the tests share: uploads in chunks, downloads, and status assertions.</summary>
internal static class Client
{
    public static string Jsonl(params object[] rows) =>
        string.Join("\n", rows.Select(r => System.Text.Json.JsonSerializer.Serialize(r))) + "\n";

    public static readonly string ExplicitRows = Jsonl(
        new { prompt = "What is 2+2?", chosen = "4.", rejected = "5." },
        new { prompt = "Name a colour.", chosen = "Blue.", rejected = "Go away." },
        new { prompt = "Say hello.", chosen = "Hello!", rejected = "No." });

    public static async Task<Dataset> UploadDataset(GrpcChannel channel, string name, byte[] data, DatasetFormat format = DatasetFormat.Unspecified,
        int chunk = 7, Metadata? headers = null, FileEncoding encoding = FileEncoding.Unspecified)
    {
        var client = new DatasetsService.DatasetsServiceClient(channel);
        using var call = client.UploadDataset(headers, deadline: DateTime.UtcNow.AddSeconds(60));
        await call.RequestStream.WriteAsync(new UploadDatasetRequest { Metadata = new DatasetMetadata { Name = name, Format = format, Encoding = encoding } });
        for (int i = 0; i < data.Length; i += chunk)
        {
            try { await call.RequestStream.WriteAsync(new UploadDatasetRequest { Data = ByteString.CopyFrom(data, i, Math.Min(chunk, data.Length - i)) }); }
            catch (RpcException) { break; } // the server ended the call early (a bad row); the response says why
            catch (InvalidOperationException) { break; }
        }
        try { await call.RequestStream.CompleteAsync(); } catch (RpcException) { } catch (InvalidOperationException) { }
        return await call.ResponseAsync;
    }

    public static Task<Dataset> UploadDataset(GrpcChannel channel, string name, string text, DatasetFormat format = DatasetFormat.Unspecified, int chunk = 7) =>
        UploadDataset(channel, name, Encoding.UTF8.GetBytes(text), format, chunk);

    public static byte[] Gzip(string text)
    {
        using var output = new MemoryStream();
        using (var gz = new GZipStream(output, CompressionLevel.Fastest)) gz.Write(Encoding.UTF8.GetBytes(text));
        return output.ToArray();
    }

    public static async Task<Model> UploadModel(GrpcChannel channel, string name, IReadOnlyDictionary<string, byte[]> files, int chunk = 1000)
    {
        var client = new ModelsService.ModelsServiceClient(channel);
        using var call = client.UploadModel(deadline: DateTime.UtcNow.AddSeconds(60));
        await call.RequestStream.WriteAsync(new UploadModelRequest { Metadata = new ModelMetadata { Name = name } });
        foreach (var (path, bytes) in files)
        {
            int offset = 0;
            do
            {
                int n = Math.Min(chunk, bytes.Length - offset);
                await call.RequestStream.WriteAsync(new UploadModelRequest
                {
                    Chunk = new FileChunk { Path = path, Offset = offset, Data = ByteString.CopyFrom(bytes, offset, n), Eof = offset + n >= bytes.Length },
                });
                offset += n;
            } while (offset < bytes.Length);
        }
        await call.RequestStream.CompleteAsync();
        return await call.ResponseAsync;
    }

    /// <summary>All files of a model: path -> bytes, each checked against the SHA-256 its last chunk carries.</summary>
    public static async Task<Dictionary<string, byte[]>> DownloadModel(GrpcChannel channel, string id, int chunkSize = 0)
    {
        var client = new ModelsService.ModelsServiceClient(channel);
        var files = new Dictionary<string, MemoryStream>();
        using var call = client.DownloadModel(new DownloadModelRequest { ModelId = id, ChunkSize = chunkSize }, deadline: DateTime.UtcNow.AddSeconds(120));
        await foreach (var chunk in call.ResponseStream.ReadAllAsync())
        {
            if (!files.TryGetValue(chunk.Path, out var stream)) files[chunk.Path] = stream = new MemoryStream();
            Assert.Equal(stream.Length, chunk.Offset);
            chunk.Data.WriteTo(stream);
            if (chunk.Eof)
                Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(stream.ToArray())), chunk.Sha256);
        }
        return files.ToDictionary(f => f.Key, f => f.Value.ToArray());
    }

    /// <summary>A minimal valid OPT config.json (the engine's parser checks it on upload).</summary>
    public static byte[] OptConfig => Encoding.UTF8.GetBytes("""
        {"model_type":"opt","vocab_size":64,"hidden_size":16,"num_hidden_layers":1,"num_attention_heads":2,"ffn_dim":32,
         "max_position_embeddings":32,"word_embed_proj_dim":16,"do_layer_norm_before":true,"activation_function":"relu",
         "bos_token_id":2,"eos_token_id":2,"pad_token_id":1,"tie_word_embeddings":true}
        """);

    public static async Task<RpcException> Fails(StatusCode code, Func<Task> call, string? detailContains = null)
    {
        var e = await Assert.ThrowsAsync<RpcException>(call);
        Assert.True(e.StatusCode == code, $"expected {code}, got {e.StatusCode}: {e.Status.Detail}");
        if (detailContains is not null) Assert.Contains(detailContains, e.Status.Detail);
        return e;
    }
}
