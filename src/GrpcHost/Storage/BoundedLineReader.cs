namespace WeakTeacher.GrpcHost.Storage;

/// <summary>
/// Lines of a (possibly gzip) JSON-lines stream with two bounds a client cannot lift: the longest row
/// (<c>Limits:MaxRowLength</c> characters) and the decompressed size (<c>Limits:MaxDecompressedDatasetBytes</c>).
/// <see cref="TextReader.ReadLine"/> would build a string of any length: a 1.5 MB gzip holding one 1.5 GiB line took the
/// host to 7.6 GB resident. Memory here is one 64 Ki-character block plus at most one row.
/// </summary>
internal sealed class BoundedLineReader(TextReader reader, Func<long> decompressedBytes, DatasetLimits limits)
{
    private readonly char[] block = new char[1 << 16];
    private readonly System.Text.StringBuilder row = new();
    private int start, end;
    private long linesRead;

    /// <summary>The next line without its terminator (\n or \r\n), or null at the end.</summary>
    public string? ReadLine()
    {
        row.Clear();
        while (true)
        {
            if (start == end)
            {
                try { end = reader.Read(block, 0, block.Length); }
                catch (InvalidDataException e) { throw new BadRowException($"line {linesRead + 1}", null, $"the gzip stream is corrupt: {e.Message}"); }
                start = 0;
                CheckSize();
                if (end == 0)
                {
                    if (row.Length == 0) return null;
                    linesRead++;
                    return TrimCarriageReturn(row.ToString());
                }
            }
            int newline = Array.IndexOf(block, '\n', start, end - start);
            int take = (newline < 0 ? end : newline) - start;
            if (row.Length + take > limits.MaxRowLength)
                throw new BadRowException($"line {linesRead + 1}", null,
                    $"the row is longer than {limits.MaxRowLength} characters (Limits:MaxRowLength)");
            row.Append(block, start, take);
            start += take;
            if (newline >= 0)
            {
                start++; // the '\n'
                linesRead++;
                return TrimCarriageReturn(row.ToString());
            }
        }
    }

    private void CheckSize()
    {
        if (decompressedBytes() > limits.MaxDecompressedBytes)
            throw new BadRowException($"line {linesRead + 1}", null,
                $"the data is larger than {limits.MaxDecompressedBytes} bytes once decompressed (Limits:MaxDecompressedDatasetBytes)");
    }

    private static string TrimCarriageReturn(string line) => line.EndsWith('\r') ? line[..^1] : line;
}

/// <summary>The bounds every dataset the host reads is held to (from <see cref="LimitOptions"/>).</summary>
internal sealed record DatasetLimits(long MaxDecompressedBytes, int MaxRowLength)
{
    public static DatasetLimits From(LimitOptions limits) => new(limits.MaxDecompressedDatasetBytes, limits.MaxRowLength);
}

/// <summary>Counts the bytes read through it (the decompressed side of a gzip stream).</summary>
internal sealed class CountingStream(Stream inner) : Stream
{
    public long BytesRead { get; private set; }
    public override int Read(byte[] buffer, int offset, int count) { int n = inner.Read(buffer, offset, count); BytesRead += n; return n; }
    public override int Read(Span<byte> buffer) { int n = inner.Read(buffer); BytesRead += n; return n; }
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => BytesRead; set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    protected override void Dispose(bool disposing) { if (disposing) inner.Dispose(); base.Dispose(disposing); }
}
