using WeakTeacher.Engine.Pipeline;
using DatasetFormat = WeakTeacher.Grpc.V1.DatasetFormat;
using WeakTeacher.GrpcHost.Observability;
using WeakTeacher.GrpcHost.Storage;

namespace WeakTeacher.GrpcHost;

/// <summary>
/// `--default-task`: prepares the embedded synthetic task once into &lt;DataDir&gt;/default-task and registers its base
/// models and datasets under fixed ids, so a client can start training at once. Replicas started together on one shared
/// store and data folder take turns under a store-wide lock: the first prepares and registers, the others wait for it
/// and find the task registered (a holder that dies releases the lock, and the next one prepares).
/// </summary>
internal static class DefaultTaskSetup
{
    public const string TeacherBase = "default-teacher-base";
    public const string StudentBase = "default-student-base";
    public const string Labelled = "default-labelled";
    public const string Unlabelled = "default-unlabelled";
    public const string EvalPrompts = "default-eval-prompts";

    public static async Task RunAsync(ServiceOptions options, string size, DataLayout layout, Catalog catalog, Store store, ILogger logger, CancellationToken ct)
    {
        if (!Enum.TryParse<DefaultTaskSize>(size, ignoreCase: true, out var taskSize))
            throw new InvalidOperationException($"DefaultTaskSize: '{size}' is not one of {string.Join(", ", Enum.GetNames<DefaultTaskSize>())}");
        if (store.Shared) logger.LogInformation("Waiting for the default task's lock (another host may be preparing it)");
        await using var held = await store.HoldLockAsync("default-task", ct);
        if (catalog.GetModelOrNull(TeacherBase) is not null && catalog.GetModelOrNull(StudentBase) is not null &&
            catalog.GetDatasetOrNull(Labelled) is not null && catalog.GetDatasetOrNull(Unlabelled) is not null &&
            catalog.GetDatasetOrNull(EvalPrompts) is not null)
        {
            logger.LogInformation("Default task already registered");
            return;
        }
        var dir = Path.Combine(layout.Root, "default-task");
        logger.LogInformation("Preparing the embedded default task ({Size}) in {Dir}", taskSize, dir);
        var assets = await DefaultTask.PrepareAsync(dir, new ProgressLog(logger), ct, taskSize);
        if (catalog.GetModelOrNull(TeacherBase) is null) catalog.RegisterModelDir(TeacherBase, TeacherBase, assets.TeacherBaseDir, "default-task");
        if (catalog.GetModelOrNull(StudentBase) is null) catalog.RegisterModelDir(StudentBase, StudentBase, assets.StudentBaseDir, "default-task");
        if (catalog.GetDatasetOrNull(Labelled) is null) catalog.RegisterDatasetFile(Labelled, Labelled, assets.LabelledPath, DatasetFormat.Unspecified, "default-task");
        if (catalog.GetDatasetOrNull(Unlabelled) is null) catalog.RegisterDatasetFile(Unlabelled, Unlabelled, assets.UnlabelledPath, DatasetFormat.Unspecified, "default-task");
        if (catalog.GetDatasetOrNull(EvalPrompts) is null) catalog.RegisterDatasetFile(EvalPrompts, EvalPrompts, assets.EvalPromptsPath, DatasetFormat.Prompts, "default-task");
        logger.LogInformation("Default task ready: models {Teacher}, {Student}; datasets {Labelled}, {Unlabelled}, {Eval}",
            TeacherBase, StudentBase, Labelled, Unlabelled, EvalPrompts);
    }
}
