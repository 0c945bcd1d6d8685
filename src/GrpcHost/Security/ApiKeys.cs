using WeakTeacher.Engine;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using WeakTeacher.GrpcHost.Storage;

namespace WeakTeacher.GrpcHost.Security;

/// <summary>
/// API keys, known only by their SHA-256 (from configuration Auth:ApiKeyHashes and the database's api_keys table).
/// Whether a key is required is settled before the host listens: "auto" requires one unless every listen address is
/// loopback.
/// </summary>
internal sealed class ApiKeys
{
    private readonly Store store;
    private readonly byte[][] configured;

    public ApiKeys(ServiceOptions options, Store store, bool required)
    {
        this.store = store;
        Required = required;
        configured = options.Auth.ApiKeyHashes.Select(h => ParseHash(h, "Auth:ApiKeyHashes")).ToArray();
    }

    public bool Required { get; }

    public bool AnyKeys => configured.Length > 0 || store.ApiKeyHashes().Count > 0;

    public static string Hash(string key) => Hashing.Sha256Hex(Encoding.UTF8.GetBytes(key));

    public static string NewKey() => "wt_" + Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    /// <summary>
    /// Why a request with this `authorization` header is refused, or null when it may pass (keys not required, or a
    /// valid `Bearer &lt;key&gt;`). One rule for gRPC calls and the plain HTTP endpoints.
    /// </summary>
    public string? Refusal(string? authorization)
    {
        if (!Required) return null;
        if (string.IsNullOrEmpty(authorization)) return "authorization: missing; send 'authorization: Bearer <api key>'";
        const string scheme = "Bearer ";
        if (!authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase) || authorization.Length == scheme.Length)
            return "authorization: expected 'Bearer <api key>'";
        return IsValid(authorization[scheme.Length..].Trim()) ? null : "authorization: the API key is not valid";
    }

    /// <summary>Compares the key's hash against every known hash in constant time per comparison.</summary>
    public bool IsValid(string key)
    {
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(key));
        bool match = false;
        foreach (var known in configured.Concat(store.ApiKeyHashes().Select(h => ParseHash(h, "api_keys"))))
            match |= CryptographicOperations.FixedTimeEquals(hash, known);
        return match;
    }

    private static byte[] ParseHash(string hex, string source)
    {
        try
        {
            var bytes = Convert.FromHexString(hex.Trim());
            if (bytes.Length == 32) return bytes;
        }
        catch (FormatException) { }
        throw new ConfigurationException($"{source}: '{hex}' is not a SHA-256 hash (64 hex characters); hash a key with `keys hash <key>`");
    }

    /// <summary>Auth:Require = "auto" | "true" | "false"; auto requires keys unless every listen URL is loopback.</summary>
    public static bool ResolveRequired(string setting, IEnumerable<string> listenUrls)
    {
        switch (setting.Trim().ToLowerInvariant())
        {
            case "true": return true;
            case "false": return false;
            case "auto": return !listenUrls.All(IsLoopbackUrl);
            default: throw new ConfigurationException($"Auth:Require: '{setting}' is not one of auto, true, false");
        }
    }

    /// <summary>For the start-up log line: required, or not, and why not.</summary>
    public static string Describe(bool required, string setting) =>
        required ? "required" : setting.Trim().Equals("false", StringComparison.OrdinalIgnoreCase)
            ? "not required (Auth:Require=false)" : "not required (every listen address is loopback, Auth:Require=auto)";

    public static bool IsLoopbackUrl(string url)
    {
        // Kestrel accepts wildcard hosts (*, +) that Uri does not parse; they listen on every interface.
        var match = System.Text.RegularExpressions.Regex.Match(url.Trim(), @"^[a-zA-Z][a-zA-Z0-9+.-]*://(\[[^\]]*\]|[^:/]*)");
        if (!match.Success) return false;
        var host = match.Groups[1].Value.Trim('[', ']');
        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase)) return true;
        return IPAddress.TryParse(host, out var address) && IPAddress.IsLoopback(address);
    }
}
