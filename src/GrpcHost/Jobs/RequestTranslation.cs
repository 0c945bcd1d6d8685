using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Training;
using WeakTeacher.GrpcHost.Storage;
using WeakTeacher.GrpcHost.Validation;
using V1 = WeakTeacher.Grpc.V1;

namespace WeakTeacher.GrpcHost.Jobs;

/// <summary>
/// Proto requests (ids) to engine requests (paths). Every value is checked here, so a bad request is refused with
/// INVALID_ARGUMENT naming its field before a job is queued; an unset optional keeps the engine's default.
/// </summary>
internal static class RequestTranslation
{
    private static readonly string[] Templates = ["paper", "hh", "raw"];
    private static readonly string[] Schedulers = ["linear", "cosine", "constant"];

    public static string Template(string field, string value)
    {
        if (string.IsNullOrEmpty(value)) return "paper";
        if (!Templates.Contains(value)) throw RequestErrors.Invalid(field, $"'{RequestErrors.Echo(value)}' is not one of {string.Join(", ", Templates)}");
        return value;
    }

    private static int? SetMaxLength(V1.TrainingArguments? a) => a is { HasMaxLength: true } ? a.MaxLength : null;

    public static string? OutputName(string field, string value) =>
        string.IsNullOrEmpty(value) ? null : Names.CheckName(field, value);

    public static T Apply<T>(string field, T config, V1.TrainingArguments? a) where T : TrainingConfig
    {
        if (a is null) return config;
        RequestErrors.Range($"{field}.learning_rate", a.HasLearningRate ? a.LearningRate : null, 0, 1, minExclusive: true);
        RequestErrors.Positive($"{field}.num_train_epochs", a.HasNumTrainEpochs ? a.NumTrainEpochs : null, 10_000);
        RequestErrors.NonNegative($"{field}.max_steps", a.HasMaxSteps ? a.MaxSteps : null);
        RequestErrors.Positive($"{field}.per_device_train_batch_size", a.HasPerDeviceTrainBatchSize ? a.PerDeviceTrainBatchSize : null, 65_536);
        RequestErrors.Positive($"{field}.gradient_accumulation_steps", a.HasGradientAccumulationSteps ? a.GradientAccumulationSteps : null, 65_536);
        RequestErrors.Positive($"{field}.max_length", a.HasMaxLength ? a.MaxLength : null, 1 << 20);
        RequestErrors.Positive($"{field}.max_prompt_length", a.HasMaxPromptLength ? a.MaxPromptLength : null, 1 << 20);
        RequestErrors.Range($"{field}.warmup_ratio", a.HasWarmupRatio ? a.WarmupRatio : null, 0, 1);
        if (a.HasLrSchedulerType && !Schedulers.Contains(a.LrSchedulerType))
            throw RequestErrors.Invalid($"{field}.lr_scheduler_type", $"'{RequestErrors.Echo(a.LrSchedulerType)}' is not one of {string.Join(", ", Schedulers)}");
        RequestErrors.Range($"{field}.weight_decay", a.HasWeightDecay ? a.WeightDecay : null, 0, 10);
        RequestErrors.Range($"{field}.adam_beta1", a.HasAdamBeta1 ? a.AdamBeta1 : null, 0, 0.999999);
        RequestErrors.Range($"{field}.adam_beta2", a.HasAdamBeta2 ? a.AdamBeta2 : null, 0, 0.999999999);
        RequestErrors.Range($"{field}.adam_epsilon", a.HasAdamEpsilon ? a.AdamEpsilon : null, 0, 1, minExclusive: true);
        RequestErrors.Range($"{field}.max_grad_norm", a.HasMaxGradNorm ? a.MaxGradNorm : null, 0, 1e9);
        RequestErrors.NonNegative($"{field}.save_steps", a.HasSaveSteps ? a.SaveSteps : null);
        RequestErrors.Positive($"{field}.logging_steps", a.HasLoggingSteps ? a.LoggingSteps : null);
        var precision = a.HasPrecision ? Precision($"{field}.precision", a.Precision) : config.Precision;
        var result = config with
        {
            LearningRate = a.HasLearningRate ? a.LearningRate : config.LearningRate,
            Epochs = a.HasNumTrainEpochs ? a.NumTrainEpochs : config.Epochs,
            MaxSteps = a.HasMaxSteps ? a.MaxSteps : config.MaxSteps,
            BatchSize = a.HasPerDeviceTrainBatchSize ? a.PerDeviceTrainBatchSize : config.BatchSize,
            GradientAccumulationSteps = a.HasGradientAccumulationSteps ? a.GradientAccumulationSteps : config.GradientAccumulationSteps,
            MaxLength = a.HasMaxLength ? a.MaxLength : config.MaxLength,
            MaxPromptLength = a.HasMaxPromptLength ? a.MaxPromptLength : config.MaxPromptLength,
            WarmupRatio = a.HasWarmupRatio ? a.WarmupRatio : config.WarmupRatio,
            LrScheduler = a.HasLrSchedulerType ? a.LrSchedulerType : config.LrScheduler,
            WeightDecay = a.HasWeightDecay ? a.WeightDecay : config.WeightDecay,
            AdamBeta1 = a.HasAdamBeta1 ? a.AdamBeta1 : config.AdamBeta1,
            AdamBeta2 = a.HasAdamBeta2 ? a.AdamBeta2 : config.AdamBeta2,
            AdamEpsilon = a.HasAdamEpsilon ? a.AdamEpsilon : config.AdamEpsilon,
            MaxGradNorm = a.HasMaxGradNorm ? a.MaxGradNorm : config.MaxGradNorm,
            Seed = a.HasSeed ? a.Seed : config.Seed,
            SaveSteps = a.HasSaveSteps ? a.SaveSteps : config.SaveSteps,
            LoggingSteps = a.HasLoggingSteps ? a.LoggingSteps : config.LoggingSteps,
            Lora = a.DisableLora ? null : ApplyLora($"{field}.lora", config.Lora, a.Lora),
            Precision = precision,
            PaddingFree = a.HasPaddingFree ? a.PaddingFree : config.PaddingFree,
        };
        if (result.MaxPromptLength >= result.MaxLength)
            throw RequestErrors.Invalid($"{field}.max_prompt_length", $"{result.MaxPromptLength} must be below max_length {result.MaxLength}");
        return (T)result;
    }

    private static TrainingPrecision Precision(string field, string value) =>
        TrainingPrecisions.Parse(value)
        ?? throw RequestErrors.Invalid(field, $"'{RequestErrors.Echo(value)}' is not one of {string.Join(", ", TrainingPrecisions.Names)}");

    private static LoraConfig? ApplyLora(string field, LoraConfig? current, V1.LoraConfig? l)
    {
        if (l is null) return current;
        RequestErrors.Positive($"{field}.rank", l.HasRank ? l.Rank : null, 4096);
        RequestErrors.Range($"{field}.alpha", l.HasAlpha ? l.Alpha : null, 0, 1e6, minExclusive: true);
        RequestErrors.Range($"{field}.dropout", l.HasDropout ? l.Dropout : null, 0, 0.999);
        for (int i = 0; i < l.TargetModules.Count; i++)
            if (string.IsNullOrWhiteSpace(l.TargetModules[i])) throw RequestErrors.Invalid($"{field}.target_modules[{i}]", "empty");
        var baseline = current ?? new LoraConfig();
        return baseline with
        {
            Rank = l.HasRank ? l.Rank : baseline.Rank,
            Alpha = l.HasAlpha ? l.Alpha : baseline.Alpha,
            Dropout = l.HasDropout ? l.Dropout : baseline.Dropout,
            TargetModules = l.TargetModules.Count > 0 ? l.TargetModules.ToArray() : baseline.TargetModules,
        };
    }

    public static SftConfig Sft(string field, V1.SftConfig? c) => Apply(field + ".args", new SftConfig(), c?.Args);

    public static DpoConfig Dpo(string field, V1.DpoConfig? c)
    {
        var config = Apply(field + ".args", new DpoConfig(), c?.Args);
        if (c is null) return config;
        RequestErrors.Range($"{field}.beta", c.HasBeta ? c.Beta : null, 0, 1e6, minExclusive: true);
        RequestErrors.Range($"{field}.label_smoothing", c.HasLabelSmoothing ? c.LabelSmoothing : null, 0, 0.999);
        RequestErrors.Range($"{field}.f_alpha_divergence_coef", c.HasFAlphaDivergenceCoef ? c.FAlphaDivergenceCoef : null, -1e6, 1e6);
        RequestErrors.Range($"{field}.ld_alpha", c.HasLdAlpha ? c.LdAlpha : null, 0, 1);
        RequestErrors.Range($"{field}.discopop_tau", c.HasDiscopopTau ? c.DiscopopTau : null, 0, 1e6, minExclusive: true);
        IReadOnlyList<PreferenceLossType> lossTypes = c.LossTypes.Count > 0
            ? c.LossTypes.Select((t, i) => LossType($"{field}.loss_types[{i}]", t, PreferenceLossType.Sigmoid)).ToList()
            : [LossType($"{field}.loss_type", c.LossType, config.LossTypes[0])];
        if (c.LossWeights.Count > 0 && c.LossWeights.Count != lossTypes.Count)
            throw RequestErrors.Invalid($"{field}.loss_weights", $"{c.LossWeights.Count} weights for {lossTypes.Count} loss types");
        for (int i = 0; i < c.LossWeights.Count; i++)
            RequestErrors.Range($"{field}.loss_weights[{i}]", c.LossWeights[i], -1e6, 1e6);
        var result = config with
        {
            Beta = c.HasBeta ? c.Beta : config.Beta,
            LabelSmoothing = c.HasLabelSmoothing ? c.LabelSmoothing : config.LabelSmoothing,
            LossTypes = lossTypes,
            LossWeights = c.LossWeights.Count > 0 ? c.LossWeights.ToArray() : config.LossWeights,
            FDivergenceType = c.FDivergenceType switch
            {
                V1.FDivergenceType.Unspecified => config.FDivergenceType,
                V1.FDivergenceType.ReverseKl => FDivergenceType.ReverseKl,
                V1.FDivergenceType.ForwardKl => FDivergenceType.ForwardKl,
                V1.FDivergenceType.JsDivergence => FDivergenceType.JsDivergence,
                V1.FDivergenceType.AlphaDivergence => FDivergenceType.AlphaDivergence,
                _ => throw RequestErrors.Invalid($"{field}.f_divergence_type", $"unknown value {(int)c.FDivergenceType}"),
            },
            FAlphaDivergenceCoef = c.HasFAlphaDivergenceCoef ? c.FAlphaDivergenceCoef : config.FAlphaDivergenceCoef,
            UseWeighting = c.HasUseWeighting ? c.UseWeighting : config.UseWeighting,
            LdAlpha = c.HasLdAlpha ? c.LdAlpha : config.LdAlpha,
            DiscopopTau = c.HasDiscopopTau ? c.DiscopopTau : config.DiscopopTau,
            DisableDropout = c.HasDisableDropout ? c.DisableDropout : config.DisableDropout,
        };
        // the combinations the loss refuses (robust / exo_pair smoothing ranges, WPO with aot) are refused here, by field
        try
        {
            result.LossSettings.Validate($"{field}");
        }
        catch (ArgumentException e)
        {
            throw RequestErrors.Invalid($"{field}.loss_type", e.Message);
        }
        if (result.UseWeighting && result.LossTypes.Any(t => t is PreferenceLossType.Aot or PreferenceLossType.AotUnpaired))
            throw RequestErrors.Invalid($"{field}.use_weighting", "WPO weighting cannot be combined with aot / aot_unpaired");
        return result;
    }

    private static PreferenceLossType LossType(string field, V1.PreferenceLossType value, PreferenceLossType unspecified) => value switch
    {
        V1.PreferenceLossType.Unspecified => unspecified,
        V1.PreferenceLossType.Sigmoid => PreferenceLossType.Sigmoid,
        V1.PreferenceLossType.Ipo => PreferenceLossType.Ipo,
        V1.PreferenceLossType.Hinge => PreferenceLossType.Hinge,
        V1.PreferenceLossType.Robust => PreferenceLossType.Robust,
        V1.PreferenceLossType.ExoPair => PreferenceLossType.ExoPair,
        V1.PreferenceLossType.NcaPair => PreferenceLossType.NcaPair,
        V1.PreferenceLossType.BcoPair => PreferenceLossType.BcoPair,
        V1.PreferenceLossType.SppoHard => PreferenceLossType.SppoHard,
        V1.PreferenceLossType.Aot => PreferenceLossType.Aot,
        V1.PreferenceLossType.AotUnpaired => PreferenceLossType.AotUnpaired,
        V1.PreferenceLossType.ApoZero => PreferenceLossType.ApoZero,
        V1.PreferenceLossType.ApoDown => PreferenceLossType.ApoDown,
        V1.PreferenceLossType.Discopop => PreferenceLossType.Discopop,
        V1.PreferenceLossType.Sft => PreferenceLossType.Sft,
        V1.PreferenceLossType.SigmoidNorm => PreferenceLossType.SigmoidNorm,
        _ => throw RequestErrors.Invalid(field, $"unknown value {(int)value}"),
    };

    public static RewardConfig Reward(string field, V1.RewardConfig? c)
    {
        var config = Apply(field + ".args", new RewardConfig(), c?.Args);
        if (c is null) return config;
        RequestErrors.Range($"{field}.center_rewards_coefficient", c.HasCenterRewardsCoefficient ? c.CenterRewardsCoefficient : null, 0, 1e6);
        return config with
        {
            UseMargin = c.HasUseMargin ? c.UseMargin : config.UseMargin,
            CenterRewardsCoefficient = c.HasCenterRewardsCoefficient ? c.CenterRewardsCoefficient : config.CenterRewardsCoefficient,
            DisableDropout = c.HasDisableDropout ? c.DisableDropout : config.DisableDropout,
        };
    }

    public static TrainTeacherRequest Train(V1.TrainRequest r, Catalog catalog, string device)
    {
        var model = catalog.GetModel("base_model_id", r.BaseModelId);
        var data = catalog.GetDataset("labelled_dataset_id", r.LabelledDatasetId);
        RequireLabelled("labelled_dataset_id", data);
        OutputName("output_name", r.OutputName);
        var train = new TrainTeacherRequest
        {
            BaseModelDir = catalog.ModelPath(model),
            LabelledDataPath = catalog.DatasetPath(data),
            Method = r.Method switch
            {
                V1.TeacherMethod.Unspecified or V1.TeacherMethod.Dpo => TeacherMethod.Dpo,
                V1.TeacherMethod.RewardModel => TeacherMethod.RewardModel,
                _ => throw RequestErrors.Invalid("method", $"unknown value {(int)r.Method}"),
            },
            Sft = Sft("sft", r.Sft),
            Dpo = Dpo("dpo", r.Dpo),
            Reward = Reward("reward", r.Reward),
            Template = Template("template", r.Template),
            Device = device,
        };
        catalog.CheckLength("base_model_id", model, ("sft.args.max_length", SetMaxLength(r.Sft?.Args)), ("dpo.args.max_length", SetMaxLength(r.Dpo?.Args)),
            ("reward.args.max_length", SetMaxLength(r.Reward?.Args)));
        return train;
    }

    /// <summary>The most shards a Label job may be split into (each is a job record and a file pair in its folder).</summary>
    public const int MaxShards = 256;

    public static LabelRequest Label(V1.LabelRequest r, Catalog catalog, string device)
    {
        catalog.GetModel("teacher_model_id", r.TeacherModelId);
        var data = catalog.GetDataset("unlabelled_dataset_id", r.UnlabelledDatasetId);
        if ((V1.DatasetFormat)data.Format == V1.DatasetFormat.Prompts)
            throw RequestErrors.Invalid("unlabelled_dataset_id", $"dataset '{data.Id}' holds prompts only, not response pairs");
        RequestErrors.Range("margin_quantile", r.HasMarginQuantile ? r.MarginQuantile : null, 0, 0.999999);
        RequestErrors.Positive("batch_size", r.HasBatchSize ? r.BatchSize : null, 65_536);
        RequestErrors.Positive("max_length", r.HasMaxLength ? r.MaxLength : null, 1 << 20);
        RequestErrors.Positive("max_prompt_length", r.HasMaxPromptLength ? r.MaxPromptLength : null, 1 << 20);
        RequestErrors.Positive("shard_count", r.HasShardCount ? r.ShardCount : null, MaxShards);
        OutputName("output_name", r.OutputName);
        var teacher = catalog.GetTeacher("teacher_model_id", r.TeacherModelId); // after the fields: a precondition, not a field error
        var defaults = new LabelRequest { TeacherDir = "", UnlabelledDataPath = "" };
        var request = new LabelRequest
        {
            TeacherDir = catalog.ModelPath(teacher),
            UnlabelledDataPath = catalog.DatasetPath(data),
            MarginQuantile = r.HasMarginQuantile ? r.MarginQuantile : defaults.MarginQuantile,
            BatchSize = r.HasBatchSize ? r.BatchSize : defaults.BatchSize,
            MaxLength = r.HasMaxLength ? r.MaxLength : defaults.MaxLength,
            MaxPromptLength = r.HasMaxPromptLength ? r.MaxPromptLength : defaults.MaxPromptLength,
            Template = Template("template", r.Template),
            Device = device,
        };
        if (request.MaxPromptLength >= request.MaxLength)
            throw RequestErrors.Invalid("max_prompt_length", $"{request.MaxPromptLength} must be below max_length {request.MaxLength}");
        catalog.CheckLength("teacher_model_id", teacher, ("max_length", r.HasMaxLength ? r.MaxLength : null));
        return request;
    }

    public static AlignRequest Align(V1.AlignRequest r, Catalog catalog, string device)
    {
        var model = catalog.GetModel("base_model_id", r.BaseModelId);
        var data = catalog.GetDataset("labelled_dataset_id", r.LabelledDatasetId);
        RequireLabelled("labelled_dataset_id", data);
        OutputName("output_name", r.OutputName);
        var align = new AlignRequest
        {
            BaseModelDir = catalog.ModelPath(model),
            LabelledDataPath = catalog.DatasetPath(data),
            Sft = Sft("sft", r.Sft),
            Dpo = Dpo("dpo", r.Dpo),
            Template = Template("template", r.Template),
            Device = device,
        };
        catalog.CheckLength("base_model_id", model, ("sft.args.max_length", SetMaxLength(r.Sft?.Args)), ("dpo.args.max_length", SetMaxLength(r.Dpo?.Args)));
        return align;
    }

    public static EvaluateRequest Evaluate(V1.EvaluateRequest r, Catalog catalog, string device)
    {
        if (r.Models.Count == 0) throw RequestErrors.Invalid("models", "name at least one model");
        var models = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, id) in r.Models.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            Names.CheckName($"models[{name}]", name);
            models[name] = catalog.ModelPath(catalog.GetModel($"models[{name}]", id));
        }
        var prompts = catalog.GetDataset("prompts_dataset_id", r.PromptsDatasetId);
        string gold = "synthetic";
        if (!string.IsNullOrEmpty(r.GoldScorer) && r.GoldScorer != "synthetic")
            gold = catalog.ModelPath(catalog.GetModel("gold_scorer", r.GoldScorer));
        RequestErrors.Range("temperature", r.HasTemperature ? r.Temperature : null, 0, 100);
        RequestErrors.Range("top_p", r.HasTopP ? r.TopP : null, 0, 1, minExclusive: true);
        RequestErrors.NonNegative("top_k", r.HasTopK ? r.TopK : null);
        RequestErrors.Positive("max_new_tokens", r.HasMaxNewTokens ? r.MaxNewTokens : null, 1 << 16);
        RequestErrors.Positive("batch_size", r.HasBatchSize ? r.BatchSize : null, 65_536);
        var defaults = new EvaluateRequest { Models = models, PromptsPath = "" };
        return new EvaluateRequest
        {
            Models = models,
            PromptsPath = catalog.DatasetPath(prompts),
            GoldScorer = gold,
            Temperature = r.HasTemperature ? r.Temperature : defaults.Temperature,
            TopP = r.HasTopP ? r.TopP : defaults.TopP,
            TopK = r.HasTopK ? r.TopK : defaults.TopK,
            MaxNewTokens = r.HasMaxNewTokens ? r.MaxNewTokens : defaults.MaxNewTokens,
            BatchSize = r.HasBatchSize ? r.BatchSize : defaults.BatchSize,
            Seed = r.HasSeed ? r.Seed : defaults.Seed,
            Template = Template("template", r.Template),
            Device = device,
        };
    }

    private static void RequireLabelled(string field, DatasetRecord data)
    {
        if ((V1.DatasetFormat)data.Format is V1.DatasetFormat.Prompts)
            throw RequestErrors.Invalid(field, $"dataset '{data.Id}' holds prompts only, not labelled pairs");
    }
}
