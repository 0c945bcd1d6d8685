namespace WeakTeacher.Engine.Tokenization;

/// <summary>
/// A checkpoint's tokenizer files are missing, unreadable or malformed. The message names the file and what is wrong.
/// </summary>
public sealed class TokenizerLoadException : Exception
{
    /// <summary>The file (or folder) the problem is in.</summary>
    public string FilePath { get; }

    public TokenizerLoadException(string filePath, string problem, Exception? inner = null)
        : base($"{filePath}: {problem}", inner)
    {
        FilePath = filePath;
    }
}
