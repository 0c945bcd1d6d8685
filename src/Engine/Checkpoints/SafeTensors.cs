using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Win32.SafeHandles;
using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Checkpoints;

/// <summary>One tensor's entry in a safetensors header.</summary>
public sealed record SafeTensorInfo(string Name, string DType, ScalarType ScalarType, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// An opened .safetensors file (8-byte little-endian header length, JSON header of name -> dtype / shape /
/// data_offsets plus __metadata__, then the raw little-endian data). The header is validated on open; tensors are
/// read on demand straight from the file into tensor memory (no intermediate managed copy).
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    /// <summary>The safetensors format's own limit on the header size (100 MB).</summary>
    private const long MaxHeaderBytes = 100_000_000;

    private readonly SafeFileHandle _handle;
    private readonly long _dataStart;

    private SafeTensorsFile(string path, SafeFileHandle handle, long dataStart,
        Dictionary<string, SafeTensorInfo> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        _handle = handle;
        _dataStart = dataStart;
        Tensors = tensors;
        Metadata = metadata;
    }

    public string Path { get; }
    public IReadOnlyDictionary<string, SafeTensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Opens and validates the header.</summary>
    /// <exception cref="CheckpointException">missing file, truncated file, corrupt header, inconsistent offsets.</exception>
    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new CheckpointException(path, "safetensors file not found");
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            long fileLength = RandomAccess.GetLength(handle);
            if (fileLength < 8) throw new CheckpointException(path, $"truncated: {fileLength} bytes, shorter than the 8-byte header length");
            Span<byte> lengthBytes = stackalloc byte[8];
            RandomAccess.Read(handle, lengthBytes, 0);
            ulong headerLength = BitConverter.ToUInt64(lengthBytes);
            if (headerLength > MaxHeaderBytes)
                throw new CheckpointException(path, $"corrupt header: header length {headerLength} exceeds the 100 MB safetensors limit");
            if ((long)headerLength > fileLength - 8)
                throw new CheckpointException(path, $"truncated: header length is {headerLength} bytes but only {fileLength - 8} bytes follow");
            var headerBytes = new byte[headerLength];
            RandomAccess.Read(handle, headerBytes, 8);
            long dataStart = 8 + (long)headerLength;
            var (tensors, metadata) = ParseHeader(path, headerBytes, fileLength - dataStart);
            return new SafeTensorsFile(path, handle, dataStart, tensors, metadata);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static (Dictionary<string, SafeTensorInfo>, Dictionary<string, string>) ParseHeader(string path, byte[] header, long dataLength)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(header) as JsonObject ?? throw new CheckpointException(path, "corrupt header: not a JSON object");
        }
        catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException)
        {
            throw new CheckpointException(path, $"corrupt header: not valid JSON ({e.Message})", e);
        }
        var tensors = new Dictionary<string, SafeTensorInfo>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, node) in root)
        {
            if (name == "__metadata__")
            {
                if (node is JsonObject meta)
                    foreach (var (key, value) in meta)
                        metadata[key] = value is JsonValue v && v.TryGetValue(out string? s) ? s : value?.ToJsonString() ?? "";
                continue;
            }
            tensors[name] = ParseEntry(path, name, node, dataLength);
        }
        // data_offsets must not overlap (they may not point into another tensor's bytes)
        SafeTensorInfo? previous = null;
        foreach (var info in tensors.Values.OrderBy(t => t.Begin).ThenBy(t => t.End))
        {
            if (previous is not null && info.Begin < previous.End && info.ByteLength > 0)
                throw new CheckpointException(path,
                    $"corrupt header: tensor '{info.Name}' bytes [{info.Begin}, {info.End}) overlap tensor '{previous.Name}' [{previous.Begin}, {previous.End})");
            if (info.ByteLength > 0) previous = info;
        }
        return (tensors, metadata);
    }

    private static SafeTensorInfo ParseEntry(string path, string name, JsonNode? node, long dataLength)
    {
        try
        {
            if (node is not JsonObject entry) throw new FormatException("entry is not an object");
            string dtype = entry["dtype"]?.GetValue<string>() ?? throw new FormatException("no dtype");
            var scalarType = SafeTensors.ToScalarType(dtype) ?? throw new FormatException($"unsupported dtype '{dtype}'");
            var shape = (entry["shape"] as JsonArray ?? throw new FormatException("no shape"))
                .Select(d => d!.GetValue<long>()).ToArray();
            if (shape.Any(d => d < 0)) throw new FormatException($"negative dimension in shape [{string.Join(", ", shape)}]");
            var offsets = entry["data_offsets"] as JsonArray ?? throw new FormatException("no data_offsets");
            if (offsets.Count != 2) throw new FormatException("data_offsets must be [begin, end]");
            long begin = offsets[0]!.GetValue<long>(), end = offsets[1]!.GetValue<long>();
            var info = new SafeTensorInfo(name, dtype, scalarType, shape, begin, end);
            if (begin < 0 || end < begin) throw new FormatException($"data_offsets [{begin}, {end}] are not an increasing pair");
            long expected = info.ElementCount * SafeTensors.ElementSize(scalarType);
            if (info.ByteLength != expected)
                throw new FormatException($"data_offsets [{begin}, {end}] span {info.ByteLength} bytes but {dtype} [{string.Join(", ", shape)}] needs {expected}");
            if (end > dataLength)
                throw new CheckpointException(path,
                    $"truncated: tensor '{name}' ends at data byte {end} but the file holds only {dataLength} data bytes");
            return info;
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException or JsonException or NullReferenceException)
        {
            throw new CheckpointException(path, $"corrupt header: tensor '{name}': {e.Message}", e);
        }
    }

    /// <summary>Reads one tensor into a new CPU tensor of its stored dtype and shape.</summary>
    public Tensor Read(string name)
    {
        var info = Info(name);
        var result = empty(info.Shape, info.ScalarType);
        try
        {
            ReadInto(info, result);
            return result;
        }
        catch
        {
            result.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads a tensor into <paramref name="destination"/>: a contiguous CPU tensor of the stored dtype and element count
    /// is filled straight from the file; any other destination (another dtype, a CUDA tensor) goes through one
    /// temporary CPU tensor and copy_ (which casts).
    /// </summary>
    public void ReadInto(string name, Tensor destination)
    {
        var info = Info(name);
        if (destination.numel() != info.ElementCount)
            throw new CheckpointException(Path, $"tensor '{name}' has {info.ElementCount} elements, destination has {destination.numel()}");
        if (destination.device_type == DeviceType.CPU && destination.dtype == info.ScalarType && destination.is_contiguous())
        {
            ReadInto(info, destination);
            return;
        }
        using var staging = Read(name);
        using var noGrad = no_grad();
        destination.copy_(staging.view(destination.shape));
    }

    private void ReadInto(SafeTensorInfo info, Tensor destination)
    {
        long offset = _dataStart + info.Begin;
        long remaining = info.ByteLength;
        IntPtr pointer = SafeTensors.DataPointer(destination);
        while (remaining > 0)
        {
            int chunk = (int)Math.Min(remaining, 1 << 30);
            unsafe
            {
                int read = RandomAccess.Read(_handle, new Span<byte>((void*)pointer, chunk), offset);
                if (read <= 0) throw new CheckpointException(Path, $"truncated: tensor '{info.Name}' could not be read completely");
                chunk = read;
            }
            pointer += chunk;
            offset += chunk;
            remaining -= chunk;
        }
    }

    private SafeTensorInfo Info(string name)
        => Tensors.TryGetValue(name, out var info) ? info : throw new CheckpointException(Path, $"no tensor named '{name}'");

    public void Dispose() => _handle.Dispose();
}

/// <summary>Reading and writing whole .safetensors files (model weights, LoRA adapters, reward heads, optimizer state).</summary>
public static class SafeTensors
{
    [DllImport("LibTorchSharp")]
    private static extern IntPtr THSTensor_data(IntPtr handle);

    /// <summary>Address of a CPU tensor's first element.</summary>
    internal static IntPtr DataPointer(Tensor t)
    {
        if (t.device_type != DeviceType.CPU) throw new ArgumentException("expected a CPU tensor", nameof(t));
        return THSTensor_data(t.Handle);
    }

    /// <summary>All tensors of a file, as CPU tensors of their stored dtype.</summary>
    public static Dictionary<string, Tensor> Load(string path) => Load(path, out _);

    /// <summary>All tensors of a file and its __metadata__.</summary>
    public static Dictionary<string, Tensor> Load(string path, out IReadOnlyDictionary<string, string> metadata)
    {
        using var file = SafeTensorsFile.Open(path);
        metadata = file.Metadata;
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var name in file.Tensors.Keys) result[name] = file.Read(name);
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Writes tensors (any device; written as they are, in their dtype) to <paramref name="path"/> with optional
    /// __metadata__. The file is written beside the target and renamed over it, so a failed save leaves no partial file.
    /// </summary>
    public static void Save(IDictionary<string, Tensor> tensors, string path, IDictionary<string, string>? metadata = null) =>
        AtomicFile.Write(path, stream => Write(tensors, stream, metadata));

    /// <param name="floatCast">when given, floating-point tensors are written in this dtype (cast one tensor at a time).</param>
    internal static void WriteFile(IEnumerable<KeyValuePair<string, Tensor>> tensors, string path, IDictionary<string, string>? metadata,
        ScalarType? floatCast = null)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        Write(tensors, stream, metadata, floatCast);
        stream.Flush(flushToDisk: true);
    }

    private static void Write(IEnumerable<KeyValuePair<string, Tensor>> tensors, Stream stream, IDictionary<string, string>? metadata,
        ScalarType? floatCast = null)
    {
        ScalarType Stored(Tensor t) => floatCast is ScalarType c && is_floating_point(t) ? c : t.dtype;
        var entries = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata) meta[k] = v;
            header["__metadata__"] = meta;
        }
        long offset = 0;
        foreach (var (name, tensor) in entries)
        {
            string dtype = ToDType(Stored(tensor)) ?? throw new ArgumentException($"tensor '{name}': dtype {Stored(tensor)} has no safetensors equivalent");
            long bytes = tensor.numel() * ElementSize(Stored(tensor));
            header[name] = new JsonObject
            {
                ["dtype"] = dtype,
                ["shape"] = new JsonArray(tensor.shape.Select(d => (JsonNode?)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padding = (8 - headerBytes.Length % 8) % 8; // data starts 8-byte aligned, as the reference writer does
        stream.Write(BitConverter.GetBytes((ulong)(headerBytes.Length + padding)));
        stream.Write(headerBytes);
        for (int i = 0; i < padding; i++) stream.WriteByte((byte)' ');
        foreach (var (_, tensor) in entries)
        {
            using var scope = NewDisposeScope();
            var cpu = tensor.detach().to(Stored(tensor)).cpu().contiguous();
            long remaining = cpu.numel() * ElementSize(cpu.dtype);
            IntPtr pointer = DataPointer(cpu);
            while (remaining > 0)
            {
                int chunk = (int)Math.Min(remaining, 1 << 30);
                unsafe { stream.Write(new ReadOnlySpan<byte>((void*)pointer, chunk)); }
                pointer += chunk;
                remaining -= chunk;
            }
        }
    }

    public static ScalarType? ToScalarType(string dtype) => dtype switch
    {
        "F64" => ScalarType.Float64,
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => null,
    };

    public static string? ToDType(ScalarType type) => type switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => null,
    };

    public static long ElementSize(ScalarType type) => type switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        ScalarType.Int8 or ScalarType.Byte or ScalarType.Bool => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "no safetensors dtype"),
    };
}
