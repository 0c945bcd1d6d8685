using System.CommandLine;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.Engine.Tokenization;

namespace WeakTeacher.Cli;

/// <summary>Bad input ends the program with one clear line (exit 2), not a stack trace; bugs still show theirs.</summary>
public static class ErrorReporting
{
    public static async Task<int> InvokeAsync(RootCommand root, string[] args)
    {
        try
        {
            // System.CommandLine's own handler would print the exception with its stack trace and exit 1; these are ours.
            return await root.Parse(args).InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is CheckpointException or DataFormatException or TokenizerLoadException or DeviceUnavailableException
                                       or FileNotFoundException or InvalidDataException or ArgumentException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("cancelled");
            return 130;
        }
    }
}
