namespace WeakTeacher.Engine.Checkpoints;

/// <summary>
/// A checkpoint file (config.json, *.safetensors, index, generation_config.json) that cannot be used: the message
/// names the file and what is wrong with it.
/// </summary>
public sealed class CheckpointException : Exception
{
    public CheckpointException(string filePath, string problem, Exception? inner = null)
        : base($"{filePath}: {problem}", inner)
    {
        FilePath = filePath;
        Problem = problem;
    }

    /// <summary>The file that is wrong (or the folder, when a file is missing from it).</summary>
    public string FilePath { get; }

    /// <summary>What is wrong, without the file name.</summary>
    public string Problem { get; }
}
