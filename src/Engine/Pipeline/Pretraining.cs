using System.Diagnostics;
using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Models;
using WeakTeacher.Engine.Tokenization;
using WeakTeacher.Engine.Training;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Pipeline;

/// <summary>Causal-LM pretraining from scratch: next-token loss on every token (MaxSteps decides the length).</summary>
public sealed record PretrainConfig : TrainingConfig
{
    public PretrainConfig()
    {
        MaxSteps = 400;
        LearningRate = 3e-3;
        WarmupRatio = 0.05;
        WeightDecay = 0.01;
        LrScheduler = "cosine";
        MaxLength = 96;
        MaxPromptLength = 48;
    }
}

/// <summary>
/// Pretrains a randomly initialised model on (prompt, response) documents, so that the embedded task's base models
/// know the task's language before the paper's pipeline aligns them. Loss: mean next-token NLL over every real token,
/// computed with the engine's response log-prob operation. Documents are tokenised exactly as SFT, DPO and generation
/// tokenise them (the templated prompt and the response encoded separately): otherwise the token boundary at the
/// prompt's trailing space differs from pretraining and every answer starts with a token sequence never seen.
/// </summary>
public static class Pretraining
{
    public static IReadOnlyList<double> Train(CausalLM model, ITokenizer tokenizer, IReadOnlyList<SftExample> documents,
        PretrainConfig config, string stage, IProgress<JobProgress>? progress = null, CancellationToken ct = default)
    {
        if (documents.Count == 0) throw new ArgumentException("no documents to pretrain on", nameof(documents));
        var rules = new PreferenceTokenizer(tokenizer, new TokenizationOptions { MaxLength = config.MaxLength, MaxPromptLength = config.MaxPromptLength });
        var encoded = documents.Select(rules.Tokenize).ToArray();
        var rng = new Random((int)config.Seed);
        torch.manual_seed(config.Seed);
        model.train();
        using var optimizer = TrainingOptimizer.Create(model, config);
        int totalSteps = config.MaxSteps;
        int warmup = LearningRateSchedule.WarmupSteps(config, totalSteps);
        var losses = new List<double>(totalSteps);
        int[] order = Enumerable.Range(0, encoded.Length).ToArray();
        int cursor = order.Length;
        var clock = Stopwatch.StartNew();
        long tokens = 0;
        for (int step = 0; step < totalSteps; step++)
        {
            ct.ThrowIfCancellationRequested();
            var batch = new TokenizedSequence[config.BatchSize];
            for (int i = 0; i < batch.Length; i++)
            {
                if (cursor == order.Length) { rng.Shuffle(order); cursor = 0; }
                batch[i] = encoded[order[cursor++]];
            }
            double lr = LearningRateSchedule.At(config.LrScheduler, config.LearningRate, step, warmup, totalSteps);
            optimizer.SetLearningRate(lr);
            using var scope = NewDisposeScope();
            using var collated = Collator.CollateSequences(batch, tokenizer.PadTokenId, model.Device);
            var mask = collated.AttentionMask; // every real token after the first is scored, prompt included
            var logps = ResponseLogProbs.Compute(model, collated.InputIds, mask, mask);
            var count = mask[.., 1..].sum().to_type(ScalarType.Float32);
            var loss = -logps.sum() / count;
            optimizer.ZeroGrad();
            Backpropagation.Run(loss);
            optimizer.ClipGradients(config.MaxGradNorm);
            optimizer.Step();
            double value = loss.item<float>();
            losses.Add(value);
            tokens += (long)count.item<float>();
            if (progress is not null && (step % 10 == 0 || step == totalSteps - 1))
            {
                double elapsed = clock.Elapsed.TotalSeconds;
                progress.Report(new JobProgress(stage, step + 1, totalSteps,
                    new Dictionary<string, double> { ["loss"] = value, ["learning_rate"] = lr },
                    tokens / Math.Max(elapsed, 1e-9),
                    TimeSpan.FromSeconds(elapsed / (step + 1) * (totalSteps - step - 1))));
            }
        }
        model.eval();
        return losses;
    }
}
