namespace WeakTeacher.GrpcHost.Labeling;

/// <summary>The engine's WeakLabeler (opened from a trained teacher's folder) behind <see cref="ITeacherLabeller"/>.</summary>
internal static class EngineLabeller
{
#if WT_ENGINE_LABELER
    public static Func<string, string, ServiceOptions, ITeacherLabeller>? Factory => (dir, device, options) => new Adapter(dir, device, options);

    private sealed class Adapter(string dir, string device, ServiceOptions options) : ITeacherLabeller
    {
        private readonly WeakTeacher.Engine.Labelling.WeakLabeler labeler = WeakTeacher.Engine.Pipeline.TeacherManifest.OpenLabeler(
            dir, WeakTeacher.Engine.Runtime.TorchDevice.Initialize(device),
            new WeakTeacher.Engine.Labelling.LabelingOptions { MaxLength = options.Labeling.MaxLength, MaxPromptLength = options.Labeling.MaxPromptLength });

        public IReadOnlyList<PairLabel> Label(IReadOnlyList<WeakTeacher.Engine.Data.UnlabelledPair> pairs) =>
            labeler.LabelBatch(pairs).Select(l => new PairLabel(l.Label, l.RewardA, l.RewardB, l.Margin)).ToList();

        public IReadOnlyList<double> Score(IReadOnlyList<(string Prompt, string Response)> sequences) => labeler.ScoreBatch(sequences);

        public void Dispose() => labeler.Dispose();
    }
#else
    public static Func<string, string, ServiceOptions, ITeacherLabeller>? Factory => null;
#endif
}
