using Grpc.Core;

namespace WeakTeacher.GrpcHost.Validation;

/// <summary>The status every rejected request gets, with the field named first so a client can point at it.</summary>
internal static class RequestErrors
{
    public static RpcException Invalid(string field, string problem) =>
        new(new Status(StatusCode.InvalidArgument, $"{field}: {problem}"));

    public static RpcException NotFound(string field, string what, string id) =>
        new(new Status(StatusCode.NotFound, $"{field}: {what} '{Echo(id)}' does not exist"));

    /// <summary>Client input as it may appear in a message: at most <paramref name="max"/> characters, control characters escaped.</summary>
    public static string Echo(string? value, int max = 64)
    {
        if (string.IsNullOrEmpty(value)) return "";
        var shown = value.Length > max ? value[..max] : value;
        var sb = new System.Text.StringBuilder(shown.Length + 16);
        foreach (var c in shown) sb.Append(char.IsControl(c) ? $"\\u{(int)c:x4}" : c);
        if (value.Length > max) sb.Append($"... ({value.Length} characters)");
        return sb.ToString();
    }

    /// <summary>
    /// Refuses a start whose caller has gone: an expired deadline or a cancelled call must not leave a job behind
    /// (the client was told DEADLINE_EXCEEDED or CANCELLED and would retry).
    /// </summary>
    public static void CallStillWanted(ServerCallContext context)
    {
        if (context.Deadline <= DateTime.UtcNow)
            throw new RpcException(new Status(StatusCode.DeadlineExceeded, "the call's deadline passed before the job was queued; nothing was started"));
        if (context.CancellationToken.IsCancellationRequested)
            throw new RpcException(new Status(StatusCode.Cancelled, "the call was cancelled before the job was queued; nothing was started"));
    }

    /// <summary>An idempotency key: empty, or 1-128 of [A-Za-z0-9._-].</summary>
    public static string RequestId(string? value)
    {
        if (string.IsNullOrEmpty(value)) return "";
        if (value.Length > 128) throw Invalid("request_id", $"{value.Length} characters; at most 128");
        foreach (var c in value)
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-'))
                throw Invalid("request_id", "only letters, digits, '.', '_' and '-' are allowed");
        return value;
    }

    public static string Required(string field, string? value)
    {
        if (string.IsNullOrWhiteSpace(value)) throw Invalid(field, "required");
        return value;
    }

    public static void Range(string field, double? value, double min, double max, bool minExclusive = false)
    {
        if (value is not { } v) return;
        if (double.IsNaN(v) || v < min || v > max || (minExclusive && v == min))
            throw Invalid(field, $"{v} is out of range {(minExclusive ? "(" : "[")}{min}, {max}]");
    }

    public static void Positive(string field, long? value, long max = int.MaxValue)
    {
        if (value is not { } v) return;
        if (v <= 0 || v > max) throw Invalid(field, $"{v} must be in [1, {max}]");
    }

    public static void NonNegative(string field, long? value, long max = int.MaxValue)
    {
        if (value is not { } v) return;
        if (v < 0 || v > max) throw Invalid(field, $"{v} must be in [0, {max}]");
    }
}
