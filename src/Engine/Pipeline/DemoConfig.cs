using WeakTeacher.Engine.Training;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>
/// The main job's settings: the paper's pipeline (Appendix A: SFT then DPO with LoRA rank 8, beta 0.1, the paper's
/// prompt format, temperature 0.7 at evaluation) on the embedded task's small models. Learning rates, epochs and lengths
/// are scaled to models of a few hundred thousand parameters trained for a few minutes on a CPU; the paper's values
/// are for 125M-13B models (see README). The students' DPO uses beta 0.5 (the paper's TL;DR value): at 0.1 the
/// weak-label student over-optimised the teacher's length preference (benchmarks/results/demo-cpu.md). Every trainer
/// packs its micro-batches (padding_free), which gives the padded path's results within rounding at about half its work here.
/// </summary>
public static class DemoConfig
{
    public static PipelineConfig Create(DefaultTaskAssets assets, string outputDir, DefaultTaskSize size = DefaultTaskSize.Demo, string device = "cpu")
    {
        bool tiny = size == DefaultTaskSize.Tiny;
        var lora = new LoraConfig { Rank = 8, Alpha = 16, Dropout = 0.0, TargetModules = ["q_proj", "v_proj"] };
        SftConfig Sft(int epochs) => new()
        {
            LearningRate = 1e-3, Epochs = epochs, BatchSize = 32, MaxLength = 96, MaxPromptLength = 48, WarmupRatio = 0.1,
            LrScheduler = "cosine", Seed = 7,
        };
        DpoConfig Dpo(int epochs, double lr, double beta) => new()
        {
            LearningRate = lr, Epochs = epochs, BatchSize = 16, MaxLength = 96, MaxPromptLength = 48, WarmupRatio = 0.1,
            LrScheduler = "cosine", Beta = beta, Lora = lora, Seed = 11,
        };
        return new PipelineConfig
        {
            OutputDir = outputDir,
            Device = device,
            Template = "paper",
            Seed = 42,
            Teacher = new PipelineConfig.TeacherSection
            {
                BaseModel = assets.TeacherBaseDir,
                Sft = Sft(tiny ? 1 : 2),
                Dpo = Dpo(tiny ? 1 : 3, 5e-3, 0.1),
            },
            Student = new PipelineConfig.StudentSection
            {
                BaseModel = assets.StudentBaseDir,
                Sft = Sft(1),
                Dpo = Dpo(1, 1e-3, 0.5),
            },
            Data = new PipelineConfig.DataSection
            {
                Labelled = assets.LabelledPath,
                Unlabelled = assets.UnlabelledPath,
                EvalPrompts = assets.EvalPromptsPath,
            },
            Labelling = new PipelineConfig.LabellingSection { BatchSize = 64 },
            Evaluation = new PipelineConfig.EvaluationSection
            {
                GoldScorer = GoldScorers.Synthetic,
                Temperature = 0.7,
                MaxNewTokens = tiny ? 24 : 48,
                BatchSize = 64,
                Seed = 1234,
            },
        }.WithPaddingFree(true); // the task's lengths vary (about half of a padded batch would be padding): pack them
    }
}
