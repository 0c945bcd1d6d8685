using System.Security.Cryptography;
using System.Text;

namespace WeakTeacher.Engine;

/// <summary>SHA-256 helpers for cache keys and run fingerprints.</summary>
public static class Hashing
{
    public static string Sha256Hex(byte[] data) => Convert.ToHexStringLower(SHA256.HashData(data));

    /// <summary>SHA-256 of a file's content.</summary>
    public static string FileSha256(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    /// <summary>An incremental SHA-256 over strings and integers (length-prefixed, so concatenations cannot collide).</summary>
    public sealed class Builder : IDisposable
    {
        private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

        public Builder Add(string? text)
        {
            var bytes = text is null ? Array.Empty<byte>() : Encoding.UTF8.GetBytes(text);
            Add(text is null ? -1 : bytes.Length);
            _hash.AppendData(bytes);
            return this;
        }

        public Builder Add(long value)
        {
            _hash.AppendData(BitConverter.GetBytes(value));
            return this;
        }

        public Builder Add(IReadOnlyList<int> values)
        {
            Add(values.Count);
            foreach (var v in values) _hash.AppendData(BitConverter.GetBytes(v));
            return this;
        }

        public string Hex() => Convert.ToHexStringLower(_hash.GetHashAndReset());

        public void Dispose() => _hash.Dispose();
    }
}
