using System.Buffers.Binary;
using System.Numerics;
using System.Text;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// A TensorBoard event file of scalars (`events.out.tfevents.*` in a run's output folder, so `tensorboard --logdir runs/`
/// shows every stage as a run), with the TRL metric names as tags. Written directly rather than through TorchSharp's
/// SummaryWriter so the engine needs no protobuf runtime: the file is TFRecord (uint64 length, masked CRC-32C of the
/// length, payload, masked CRC-32C of the payload, all little-endian) of `tensorflow.Event` protos
/// (1: wall_time double, 2: step int64, 3: file_version string, 5: Summary { repeated 1: Value { 1: tag, 2: simple_value float } },
/// 6: SessionLog { 1: status }). Each record is flushed, so a killed run leaves a readable file.
/// </summary>
public sealed class TensorBoardWriter : IDisposable
{
    private static int _counter;
    private readonly FileStream _file;

    /// <param name="resumedAtStep">on resume: a SessionLog START at this step, on which TensorBoard drops the older files'
    /// points past it (they were logged after the checkpoint), as metrics.jsonl drops those rows.</param>
    public TensorBoardWriter(string directory, int resumedAtStep = 0)
    {
        Directory.CreateDirectory(directory);
        var now = DateTimeOffset.UtcNow;
        Path = System.IO.Path.Combine(directory,
            $"events.out.tfevents.{now.ToUnixTimeSeconds()}.{Environment.MachineName}.{Environment.ProcessId}.{Interlocked.Increment(ref _counter)}");
        _file = new FileStream(Path, FileMode.CreateNew, FileAccess.Write, FileShare.Read);
        var version = new List<byte>();
        WallTime(version, now);
        Bytes(version, 3, Encoding.UTF8.GetBytes("brain.Event:2"));
        Record(version);
        if (resumedAtStep > 0)
        {
            var start = new List<byte>();
            WallTime(start, now);
            Varint(start, 2 << 3, (ulong)resumedAtStep);
            Bytes(start, 6, [(1 << 3) | 0, 1]); // SessionLog.status = START
            Record(start);
        }
    }

    public string Path { get; }

    /// <summary>One event at <paramref name="step"/> holding every metric as a scalar (non-finite values as they are).</summary>
    public void Write(int step, IReadOnlyDictionary<string, double> metrics)
    {
        var summary = new List<byte>();
        Span<byte> f = stackalloc byte[4];
        foreach (var (tag, value) in metrics)
        {
            var v = new List<byte>();
            Bytes(v, 1, Encoding.UTF8.GetBytes(tag));
            v.Add((2 << 3) | 5); // simple_value, fixed32
            BinaryPrimitives.WriteSingleLittleEndian(f, (float)value);
            v.AddRange(f.ToArray());
            Bytes(summary, 1, v);
        }
        var e = new List<byte>();
        WallTime(e, DateTimeOffset.UtcNow);
        Varint(e, 2 << 3, (ulong)step);
        Bytes(e, 5, summary);
        Record(e);
    }

    private void Record(List<byte> payload)
    {
        var data = payload.ToArray();
        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], MaskedCrc32C(header[..8]));
        Span<byte> footer = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(footer, MaskedCrc32C(data));
        _file.Write(header);
        _file.Write(data);
        _file.Write(footer);
        _file.Flush();
    }

    /// <summary>TFRecord's checksum: CRC-32C (Castagnoli), rotated right by 15 bits plus 0xa282ead8.</summary>
    public static uint MaskedCrc32C(ReadOnlySpan<byte> data)
    {
        uint crc = Crc32C(data);
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }

    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFFu;
        foreach (var b in data) crc = BitOperations.Crc32C(crc, b);
        return ~crc;
    }

    private static void WallTime(List<byte> to, DateTimeOffset time)
    {
        to.Add((1 << 3) | 1); // wall_time, fixed64
        Span<byte> d = stackalloc byte[8];
        BinaryPrimitives.WriteDoubleLittleEndian(d, time.ToUnixTimeMilliseconds() / 1000.0);
        to.AddRange(d.ToArray());
    }

    private static void Varint(List<byte> to, int tag, ulong value)
    {
        Raw(to, (ulong)tag);
        Raw(to, value);
    }

    private static void Raw(List<byte> to, ulong value)
    {
        while (value >= 0x80) { to.Add((byte)(value | 0x80)); value >>= 7; }
        to.Add((byte)value);
    }

    private static void Bytes(List<byte> to, int field, IReadOnlyCollection<byte> bytes)
    {
        Raw(to, (ulong)((field << 3) | 2));
        Raw(to, (ulong)bytes.Count);
        to.AddRange(bytes);
    }

    public void Dispose() => _file.Dispose();
}
