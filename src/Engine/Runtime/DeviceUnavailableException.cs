namespace WeakTeacher.Engine.Runtime;

/// <summary>
/// The requested device cannot be used. <see cref="Attempts"/> lists every libtorch location that was tried
/// (where it came from, the folder, and why it did not work), so the message alone tells what to fix.
/// </summary>
public sealed class DeviceUnavailableException : Exception
{
    public DeviceUnavailableException(string requestedDevice, IReadOnlyList<string> attempts, string? hint = null)
        : base(BuildMessage(requestedDevice, attempts, hint))
    {
        RequestedDevice = requestedDevice;
        Attempts = attempts;
    }

    /// <summary>The device as it was asked for ("cuda", "cuda:1").</summary>
    public string RequestedDevice { get; }

    /// <summary>One line per thing tried, in order: "source: folder: why it failed".</summary>
    public IReadOnlyList<string> Attempts { get; }

    private static string BuildMessage(string device, IReadOnlyList<string> attempts, string? hint)
    {
        var text = new System.Text.StringBuilder();
        text.Append($"Device '{device}' is not available.");
        if (attempts.Count > 0)
        {
            text.Append(" Tried:");
            foreach (var a in attempts) text.Append("\n  - ").Append(a);
        }
        if (hint is not null) text.Append('\n').Append(hint);
        return text.ToString();
    }
}
