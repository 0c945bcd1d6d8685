using System.Diagnostics;
using System.Globalization;
using TorchSharp;
using WeakTeacher.Engine.Checkpoints;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Pipeline;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Training;

/// <summary>
/// The optimisation loop every trainer shares (transformers' Trainer inner loop): seeded shuffling, gradient
/// accumulation with the loss normalised over the whole accumulation window (so 2 x 4 equals one batch of 8),
/// clipping, the per-step schedule, logging, atomic checkpoints and exact resume.
/// </summary>
internal static class TrainingLoop
{
    public static TrainResult Run(ITrainingTask task, nn.Module model, TrainingConfig config, string outputDir, string runFingerprint,
        IProgress<JobProgress>? progress, CancellationToken cancellationToken)
    {
        Validate(config);
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(outputDir);
        TrainingCheckpoints.RemoveIncomplete(outputDir);

        var batcher = new DataBatcher<int>(Enumerable.Range(0, task.ExampleCount).ToArray(), config.BatchSize, config.Seed, shuffle: true);
        int accumulation = config.GradientAccumulationSteps;
        int stepsPerEpoch = (batcher.BatchesPerEpoch + accumulation - 1) / accumulation;
        int totalSteps = config.MaxSteps > 0 ? config.MaxSteps : config.Epochs * stepsPerEpoch;
        int warmupSteps = LearningRateSchedule.WarmupSteps(config, totalSteps);
        var settings = RunSettings(task.Stage, runFingerprint, config, task.ExampleCount, totalSteps);
        string fingerprint = RunSettingsText.Fingerprint(settings);
        bool cuda = model.parameters().FirstOrDefault()?.device.type == DeviceType.CUDA;

        model.train();
        // bf16: the model computes in bfloat16 from here until the end of Run, the optimizer holds float32 masters
        using var precision = MixedPrecision.Begin(model, config.Precision);
        using var optimizer = TrainingOptimizer.Create(model, config, precision.Trainable);
        var trainable = optimizer.Parameters.Select(p => (p.Name, (Tensor)p.Parameter)).ToList();

        int globalStep = 0;
        long tokensSeen = 0;
        int? resumedFrom = null;
        var history = new List<Dictionary<string, double>>();
        string? lastCheckpoint = TrainingCheckpoints.Latest(outputDir);
        if (lastCheckpoint is not null)
        {
            var state = TrainingCheckpoints.ReadState(lastCheckpoint);
            if (state.Trainer != task.Stage || state.RunFingerprint != fingerprint)
            {
                string which = state.Trainer != task.Stage ? $"it is a {state.Trainer} run, not {task.Stage}"
                    : state.Settings is { } stored ? RunSettingsText.Describe(stored, settings)
                    : "other data or settings (the checkpoint predates named settings)";
                throw new CheckpointException(lastCheckpoint,
                    $"this checkpoint belongs to a different run: {which}; use another output folder or remove it");
            }
            TrainingCheckpoints.Restore(lastCheckpoint, trainable, optimizer);
            precision.CopyToModel();
            batcher.Restore(new BatcherPosition(state.Data.Epoch, state.Data.BatchIndex));
            globalStep = state.GlobalStep;
            tokensSeen = state.TokensSeen;
            history = state.LogHistory;
            resumedFrom = state.GlobalStep;
        }
        else
        {
            // as transformers' Trainer does (set_seed): dropout draws depend on the run's seed, not on what the process ran before
            torch.manual_seed(config.Seed);
        }

        using var log = new TrainingLog(task.Stage, outputDir, progress, globalStep, globalStep);
        var window = new MetricSums();
        int stepsInWindow = 0;
        long windowTokens = 0;
        var windowClock = Stopwatch.StartNew();
        int lastSaved = resumedFrom ?? -1;
        bool interrupted = false;
        string Save() => SaveCheckpoint(outputDir, task.Stage, fingerprint, settings, globalStep, totalSteps, warmupSteps, stepsPerEpoch,
            batcher, config, tokensSeen, history, trainable, optimizer);

        while (globalStep < totalSteps)
        {
            if (cancellationToken.IsCancellationRequested) { interrupted = true; break; }
            // TorchSharp cannot read or restore the CUDA generator's state, so its stream is made a function of
            // (seed, step): a resumed run draws the same dropout masks on CUDA as an uninterrupted one
            if (cuda) torch.cuda.manual_seed_all(StepSeed(config.Seed, globalStep));
            double learningRate = LearningRateSchedule.At(config.LrScheduler, config.LearningRate, globalStep, warmupSteps, totalSteps);
            optimizer.SetLearningRate(learningRate);

            // the micro-batches of this step: up to `accumulation` batches, never across an epoch boundary
            var batches = new List<MicroBatch>();
            try
            {
                if (batcher.Position.BatchIndex >= batcher.BatchesPerEpoch)
                    batcher.Restore(new BatcherPosition(batcher.Position.Epoch + 1, 0));
                for (int i = 0; i < accumulation && batcher.Position.BatchIndex < batcher.BatchesPerEpoch; i++)
                    batches.Add(task.Prepare(batcher.Next()));
                double normaliser = batches.Sum(b => b.Normaliser);
                if (normaliser <= 0) throw new InvalidOperationException($"{task.Stage}: a step's batches have nothing to train on (no response tokens)");
                optimizer.ZeroGrad();
                foreach (var batch in batches)
                {
                    task.ForwardBackward(batch, 1.0 / normaliser, window);
                    precision.AccumulateGradients();
                    windowTokens += batch.Tokens;
                    tokensSeen += batch.Tokens;
                }
            }
            finally
            {
                foreach (var b in batches) b.Dispose();
            }
            double gradNorm = optimizer.ClipGradients(config.MaxGradNorm);
            optimizer.Step();
            precision.CopyToModel();
            globalStep++;
            stepsInWindow++;
            window.Add("grad_norm", gradNorm, 1);
            window.Add("learning_rate", learningRate, 1);

            bool last = globalStep == totalSteps;
            if (globalStep % Math.Max(1, config.LoggingSteps) == 0 || last)
            {
                var row = new Dictionary<string, double>(StringComparer.Ordinal);
                foreach (var (name, mean) in window.Means()) row[name] = mean;
                row["tokens_per_second"] = windowTokens / Math.Max(1e-9, windowClock.Elapsed.TotalSeconds);
                row["epoch"] = (double)globalStep / stepsPerEpoch;
                row["num_tokens"] = tokensSeen;
                var logged = new Dictionary<string, double>(row) { ["step"] = globalStep };
                history.Add(logged);
                log.Log(globalStep, totalSteps, row);
                window = new MetricSums();
                stepsInWindow = 0;
                windowTokens = 0;
                windowClock.Restart();
            }

            bool stopping = cancellationToken.IsCancellationRequested;
            if ((config.SaveSteps > 0 && globalStep % config.SaveSteps == 0) || last || stopping)
            {
                lastCheckpoint = Save();
                lastSaved = globalStep;
            }
            Runtime.Failpoints.Hit(Runtime.Failpoints.TrainingStepDone);
            if (stopping && !last) { interrupted = true; break; }
        }

        // cancelled before a step began: the steps since the last checkpoint are saved (a finished run saved at its last step)
        if (interrupted && lastSaved != globalStep && globalStep > 0) lastCheckpoint = Save();
        precision.End();
        model.eval();
        return new TrainResult(globalStep, totalSteps, !interrupted, resumedFrom, history, outputDir, lastCheckpoint, null, null, clock.Elapsed);
    }

    private static string SaveCheckpoint(string outputDir, string stage, string fingerprint, SortedDictionary<string, string> settings, int globalStep, int totalSteps, int warmupSteps,
        int stepsPerEpoch, DataBatcher<int> batcher, TrainingConfig config, long tokensSeen, List<Dictionary<string, double>> history,
        IReadOnlyList<(string Name, Tensor Tensor)> trainable, TrainingOptimizer optimizer)
    {
        var state = new TrainerState
        {
            Trainer = stage,
            GlobalStep = globalStep,
            TotalSteps = totalSteps,
            WarmupSteps = warmupSteps,
            Data = new DataPosition(batcher.Position.Epoch, batcher.Position.BatchIndex, batcher.Seed),
            Epoch = (double)globalStep / stepsPerEpoch,
            TokensSeen = tokensSeen,
            RunFingerprint = fingerprint,
            Settings = settings,
            LogHistory = history,
        };
        return TrainingCheckpoints.Save(outputDir, state, trainable, optimizer, config.SaveTotalLimit);
    }

    internal static void Validate(TrainingConfig config)
    {
        void Require(bool ok, string field, object value, string rule)
        {
            if (!ok) throw new ArgumentException($"{config.GetType().Name}.{field} = {Convert.ToString(value, CultureInfo.InvariantCulture)}: {rule}");
        }
        Require(config.BatchSize > 0, nameof(config.BatchSize), config.BatchSize, "must be > 0");
        Require(config.GradientAccumulationSteps > 0, nameof(config.GradientAccumulationSteps), config.GradientAccumulationSteps, "must be > 0");
        Require(config.Epochs > 0 || config.MaxSteps > 0, nameof(config.Epochs), config.Epochs, "must be > 0 unless MaxSteps is set");
        Require(config.MaxSteps >= 0, nameof(config.MaxSteps), config.MaxSteps, "must be >= 0");
        Require(config.LearningRate >= 0 && double.IsFinite(config.LearningRate), nameof(config.LearningRate), config.LearningRate, "must be a finite number >= 0");
        Require(config.WarmupRatio >= 0 && config.WarmupRatio <= 1, nameof(config.WarmupRatio), config.WarmupRatio, "must lie in [0, 1]");
        Require(config.WarmupSteps >= 0, nameof(config.WarmupSteps), config.WarmupSteps, "must be >= 0");
        Require(LearningRateSchedule.Kinds.Contains(config.LrScheduler.ToLowerInvariant()), nameof(config.LrScheduler), config.LrScheduler,
            $"must be one of {string.Join(", ", LearningRateSchedule.Kinds)}");
        Require(config.SaveSteps >= 0, nameof(config.SaveSteps), config.SaveSteps, "must be >= 0");
        Require(config.MaxLength > 0, nameof(config.MaxLength), config.MaxLength, "must be > 0");
        Require(config.MaxPromptLength > 0 && config.MaxPromptLength < config.MaxLength, nameof(config.MaxPromptLength), config.MaxPromptLength,
            "must be > 0 and below MaxLength");
    }

    /// <summary>The CUDA generator's seed at the start of optimizer step <paramref name="step"/>.</summary>
    internal static long StepSeed(long seed, int step) => unchecked(seed * 1_000_003L + step);

    /// <summary>Config fields that do not change the trained weights (logging, where checkpoints and caches go).</summary>
    private static readonly HashSet<string> NotResultChanging = new(StringComparer.Ordinal)
    {
        "save_steps", "save_total_limit", "logging_steps", "reference_cache_dir", "save_merged_model",
    };

    /// <summary>Every setting that changes what a run computes, by name: the stage, the data and reference identity, the
    /// plan, and each field of the trainer's config (so a new config field is covered without listing it here).</summary>
    internal static SortedDictionary<string, string> RunSettings(string stage, string runFingerprint, TrainingConfig config, int examples, int totalSteps)
    {
        var settings = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["stage"] = stage,
            ["data_and_reference"] = runFingerprint,
            ["examples"] = examples.ToString(CultureInfo.InvariantCulture),
            ["total_steps"] = totalSteps.ToString(CultureInfo.InvariantCulture),
        };
        foreach (var (name, value) in RunSettingsText.Flatten(config))
        {
            // a float32 run keeps the fingerprint it had before the setting existed, so its checkpoints still resume
            if ((name == "precision" && value == "\"fp32\"") || TrainingConfig.IsOmittedDefault(name, value)) continue;
            if (!NotResultChanging.Contains(name.Split('.', '[')[0])) settings[name] = value;
        }
        return settings;
    }
}
