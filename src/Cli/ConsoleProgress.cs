using System.Globalization;
using WeakTeacher.Engine.Pipeline;

namespace WeakTeacher.Cli;

/// <summary>
/// Renders stage progress: on a terminal one self-rewriting line per stage (bar, step, loss, tokens/s, ETA); when
/// output is redirected, a plain line every few seconds and at each stage's end.
/// </summary>
public sealed class ConsoleProgress : IProgress<JobProgress>
{
    private readonly object _gate = new();
    private readonly bool _terminal = !Console.IsOutputRedirected;
    private string? _stage;
    private int _lastLength;
    private DateTime _lastPlain = DateTime.MinValue;

    public void Report(JobProgress value)
    {
        lock (_gate)
        {
            bool newStage = value.Stage != _stage;
            if (newStage && _terminal && _lastLength > 0) Console.WriteLine();
            if (newStage) _lastLength = 0;
            _stage = value.Stage;
            string line = Format(value);
            bool last = value.TotalSteps > 0 && value.Step >= value.TotalSteps;
            if (_terminal)
            {
                Console.Write("\r" + line.PadRight(_lastLength));
                _lastLength = line.Length;
            }
            else if (newStage || last || DateTime.UtcNow - _lastPlain > TimeSpan.FromSeconds(5))
            {
                Console.WriteLine(line);
                _lastPlain = DateTime.UtcNow;
            }
        }
    }

    /// <summary>Ends the current bar's line (call before printing anything else).</summary>
    public void Finish()
    {
        lock (_gate)
        {
            if (_terminal && _lastLength > 0) Console.WriteLine();
            _lastLength = 0;
            _stage = null;
        }
    }

    public static string Format(JobProgress p)
    {
        const int width = 24;
        int filled = (int)Math.Round(p.Fraction * width);
        var text = string.Create(CultureInfo.InvariantCulture,
            $"{p.Stage,-16} [{new string('#', filled)}{new string('.', width - filled)}] {p.Step}/{p.TotalSteps}");
        if (p.Metrics.TryGetValue("loss", out var loss)) text += string.Create(CultureInfo.InvariantCulture, $" loss {loss:F4}");
        if (p.Metrics.TryGetValue("rewards/accuracies", out var acc)) text += string.Create(CultureInfo.InvariantCulture, $" acc {acc:F2}");
        if (p.TokensPerSecond > 0) text += string.Create(CultureInfo.InvariantCulture, $" {p.TokensPerSecond:F0} tok/s");
        if (p.Eta is { } eta) text += $" eta {eta:mm\\:ss}";
        return text;
    }
}
