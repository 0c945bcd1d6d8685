using TorchSharp;
using WeakTeacher.CudaKernels;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.LogProbs;
using WeakTeacher.Engine.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

/// <summary>
/// Memory held only while used (issue 17 point 3): a DPO step (policy log-probs through the fused head, loss, backward,
/// clip, AdamW) and a labelling pass release every tensor they made before they return, so no native memory waits for
/// the .NET collector. Counted with TorchSharp's per-thread live-tensor statistics (created minus disposed on this
/// thread; a tensor left to a finalizer is never counted as disposed here), with no collection forced or awaited.
/// On the CPU libtorch runs the backward on the calling thread, so the gradients the fused head's backward returns are
/// counted too.
/// </summary>
public class StepMemoryTests
{
    private static long Live => DisposeScopeManager.Statistics.ThreadTotalLiveCount;

    private static PreferenceBatch Batch()
    {
        var random = new Random(5);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, 64)).ToArray();
        var pairs = Enumerable.Range(0, 3).Select(i => new TokenizedPair(Ids(4 + i), Ids(3 + 2 * i), Ids(6 - i))).ToArray();
        return Collator.CollatePreferences(pairs, padTokenId: 1);
    }

    private static void DpoStep(Engine.Models.CausalLM policy, PreferenceBatch batch, Tensor referenceLogps, TrainingOptimizer optimizer, DpoConfig config,
        bool tokenTerm)
    {
        int b = batch.PairCount;
        using var scope = NewDisposeScope();
        using var logps = ResponseLogProbs.ComputeDetailed(policy, batch);
        var loss = PreferenceScoring.Loss(PreferenceLossInputs.FromConcatenated(logps.SequenceLogps, referenceLogps, b), config.LossSettings).Loss;
        // with the per-token output in the loss (as WPO's and TRL's sft terms read tokens), both outputs get a gradient
        if (tokenTerm) loss = loss + logps.TokenLogps.sum() * 1e-3;
        loss.backward();
        optimizer.ClipGradients(config.MaxGradNorm);
        optimizer.Step();
        optimizer.ZeroGrad();
    }

    [Theory]
    [InlineData(false, false)]   // full fine-tuning: the trained head's backward (dW and dH)
    [InlineData(true, false)]    // LoRA: the frozen head's backward (dH from the forward's saved product)
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void DpoStepsLeaveNoTensorAliveAfterTheyReturn(bool lora, bool tokenTerm)
    {
        using var policy = TrainingTestKit.Opt(7);
        if (lora) LoraAdapters.Attach(policy, new LoraConfig { Rank = 2, TargetModules = ["q_proj", "v_proj"] }, seed: 7);
        policy.train();
        var config = new DpoConfig { LearningRate = 1e-3, Lora = null };
        using var batch = Batch();
        Tensor reference;
        using (no_grad()) reference = ResponseLogProbs.Compute(policy, batch).detach().DetachFromDisposeScope();
        using var optimizer = TrainingOptimizer.Create(policy, config);
        // the first step allocates the optimizer's state, kept for the next steps (the gradients are released by ZeroGrad)
        DpoStep(policy, batch, reference, optimizer, config, tokenTerm);
        long before = Live;
        const int steps = 3;
        for (int step = 0; step < steps; step++) DpoStep(policy, batch, reference, optimizer, config, tokenTerm);
        // TorchSharp wraps the undefined gradient of an output the loss did not use (here the per-token log-probs) in a
        // tensor of handle 0 for the backward: counted as created, never as disposed (Dispose skips a zero handle), and
        // holding no memory. One per step where the loss reads only the sequence sums; everything else must be released.
        Assert.Equal(before + (tokenTerm ? 0 : steps), Live);
        reference.Dispose();
    }

    /// <summary>
    /// libtorch runs a CUDA node's backward on a device thread of its own, where no dispose scope exists; a CPU backward
    /// called from a thread without one is the same situation, so the custom functions' wrappers are counted on such a
    /// thread here: every one but the gradients the functions return (TorchSharp hands libtorch their handles after the
    /// function returns) is disposed when the backward returns, none is left to the collector.
    /// </summary>
    [Theory]
    [InlineData(false)]   // full fine-tuning: the trained head's backward
    [InlineData(true)]    // LoRA: the frozen head's backward
    public void ABackwardOnAThreadWithoutDisposeScopeLeavesNoTensorAliveOnceReleased(bool lora)
    {
        using var policy = TrainingTestKit.Opt(11);
        if (lora) LoraAdapters.Attach(policy, new LoraConfig { Rank = 2, TargetModules = ["q_proj", "v_proj"] }, seed: 11);
        policy.train();
        var config = new DpoConfig { LearningRate = 1e-3, Lora = null };
        using var batch = Batch();
        using var scope = NewDisposeScope();
        Tensor reference;
        using (no_grad()) reference = ResponseLogProbs.Compute(policy, batch).detach();
        int b = batch.PairCount;
        using var logps = ResponseLogProbs.ComputeDetailed(policy, batch);
        var loss = PreferenceScoring.Loss(PreferenceLossInputs.FromConcatenated(logps.SequenceLogps, reference, b), config.LossSettings).Loss;
        long left = -1;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                long before = Live;
                Backpropagation.Run(loss);   // as the trainers run it
                left = Live - before;
            }
            catch (Exception e) { failure = e; }
        });
        thread.Start();
        thread.Join();
        Assert.Null(failure);
        // the returned gradients' wrappers are released when the next custom backward starts and, for the last, when
        // Backpropagation.Run returns: left is the undefined gradient of the unused per-token output, as above
        // (counted as created, never as disposed)
        Assert.Equal(1, left);
    }

    [Fact]
    public void LabellingPassesLeaveNoTensorAliveAfterTheyReturn()
    {
        using var model = TrainingTestKit.Opt(8);
        model.eval();
        using var batch = Batch();
        long before = Live;
        using (no_grad())
            for (int i = 0; i < 3; i++)
            {
                ResponseLogProbs.Compute(model, batch).Dispose();
                ResponseLogProbs.ComputeDetailed(model, batch).Dispose();
            }
        Assert.Equal(before, Live);
    }

    [Fact]
    public void ZeroGradReleasesTheGradientsAndTheNextBackwardAllocatesThemAnew()
    {
        using var policy = TrainingTestKit.Opt(10);
        policy.train();
        var config = new DpoConfig { LearningRate = 1e-3, Lora = null };
        using var batch = Batch();
        Tensor reference;
        using (no_grad()) reference = ResponseLogProbs.Compute(policy, batch).detach().DetachFromDisposeScope();
        using var optimizer = TrainingOptimizer.Create(policy, config);
        bool AllReleased() => optimizer.Parameters.All(p => { using var g = p.Parameter.grad; return g is null; });
        DpoStep(policy, batch, reference, optimizer, config, tokenTerm: false);
        // nothing of the step's gradients is held into the next forward (a model's size in float32)
        Assert.True(AllReleased());
        using var scope = NewDisposeScope();
        int b = batch.PairCount;
        var logps = ResponseLogProbs.Compute(policy, batch);
        PreferenceScoring.Loss(PreferenceLossInputs.FromConcatenated(logps, reference, b), config.LossSettings).Loss.backward();
        Assert.All(optimizer.Parameters, p => { using var g = p.Parameter.grad; Assert.NotNull(g); });
        optimizer.ZeroGrad();
        Assert.True(AllReleased());
        reference.Dispose();
    }

    [Fact]
    public void OptimizerStateIsAllocatedAtTheFirstStepAndReleasedOnDispose()
    {
        using var model = TrainingTestKit.Opt(9);
        long before = Live;
        var optimizer = TrainingOptimizer.Create(model, new SftConfig());
        Assert.Equal(before, Live);   // nothing allocated at construction
        var grads = new List<Tensor>();
        using (no_grad())
            foreach (var (_, p) in optimizer.Parameters) grads.Add(p.grad = ones_like(p).DetachFromDisposeScope());
        long withGrads = Live;
        optimizer.Step();
        Assert.Equal(withGrads + 2L * optimizer.Parameters.Count, Live);   // exp_avg and exp_avg_sq per parameter
        optimizer.Dispose();
        Assert.Equal(withGrads, Live);
        foreach (var (_, p) in optimizer.Parameters) p.grad = null;
        grads.ForEach(g => g.Dispose());
    }
}
