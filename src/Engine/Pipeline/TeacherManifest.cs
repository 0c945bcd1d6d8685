using System.Text.Json;
using System.Text.Json.Serialization;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Labelling;
using WeakTeacher.Engine.Tokenization;
using WeakTeacher.Engine.Training;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>
/// teacher.json in a trained teacher's folder: which kind of teacher it is and where its models are, so that labelling
/// (a job, or the host's streaming labeller) can open it without knowing how it was trained.
/// </summary>
public sealed record TeacherManifest(TeacherMethod Method, string? PolicyDir, string? ReferenceDir, string? RewardModelDir, double Beta)
{
    public const string FileName = "teacher.json";

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        WriteIndented = true,
    };

    /// <summary>Writes the manifest with paths relative to <paramref name="teacherDir"/> (the folder may be moved).</summary>
    public static void Write(string teacherDir, TeacherManifest manifest)
    {
        string Rel(string? p) => p is null ? null! : Path.GetRelativePath(teacherDir, p);
        var stored = manifest with { PolicyDir = Rel(manifest.PolicyDir), ReferenceDir = Rel(manifest.ReferenceDir), RewardModelDir = Rel(manifest.RewardModelDir) };
        AtomicFile.WriteAllText(Path.Combine(teacherDir, FileName), JsonSerializer.Serialize(stored, Json));
    }

    public static TeacherManifest Read(string teacherDir)
    {
        string path = Path.Combine(teacherDir, FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"'{teacherDir}' is not a trained teacher: {FileName} is missing.", path);
        TeacherManifest? m;
        try { m = JsonSerializer.Deserialize<TeacherManifest>(File.ReadAllText(path), Json); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: {e.Message}", e); }
        if (m is null) throw new InvalidDataException($"{path}: empty manifest.");
        string? Abs(string? p) => p is null ? null : Path.GetFullPath(Path.Combine(teacherDir, p));
        m = m with { PolicyDir = Abs(m.PolicyDir), ReferenceDir = Abs(m.ReferenceDir), RewardModelDir = Abs(m.RewardModelDir) };
        bool complete = m.Method == TeacherMethod.RewardModel ? m.RewardModelDir is not null : m.PolicyDir is not null && m.ReferenceDir is not null;
        if (!complete) throw new InvalidDataException($"{path}: a {m.Method} teacher needs " +
            (m.Method == TeacherMethod.RewardModel ? "reward_model_dir" : "policy_dir and reference_dir") + ".");
        return m;
    }

    /// <summary>Loads the teacher's models onto <paramref name="device"/> as a labeller (which owns and disposes them).</summary>
    public static WeakLabeler OpenLabeler(string teacherDir, Device device, LabelingOptions options)
    {
        var m = Read(teacherDir);
        var load = new ModelLoadOptions { Device = device };
        if (m.Method == TeacherMethod.RewardModel)
        {
            var tokenizer = HfTokenizer.Load(m.RewardModelDir!);
            return WeakLabeler.FromRewardModel(RewardModel.Load(m.RewardModelDir!, load), tokenizer, options with { Beta = 1.0 }, ownsModel: true);
        }
        return WeakLabeler.FromDpoTeacher(m.PolicyDir!, m.ReferenceDir!, HfTokenizer.Load(m.PolicyDir!), options with { Beta = m.Beta }, load);
    }
}
