using Grpc.Core;

namespace WeakTeacher.GrpcHost.Validation;

/// <summary>The status every rejected request gets, with the field named first so a client can point at it.</summary>
internal static class RequestErrors
{
    public static RpcException Invalid(string field, string problem) =>
        new(new Status(StatusCode.InvalidArgument, $"{field}: {problem}"));

    public static RpcException NotFound(string field, string what, string id) =>
        new(new Status(StatusCode.NotFound, $"{field}: {what} '{id}' does not exist"));

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
