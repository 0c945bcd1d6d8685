using System.Runtime.InteropServices;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Training;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

/// <summary>
/// Training beside a thread that allocates and forces collections (what a concurrent upload does to the host): every
/// native handle the engine passes to libtorch must stay alive until the call returns. With unheld Scalars (TorchSharp's
/// implicit conversions, its AdamW) this failed with "Expected false to be true" from c10/core/Scalar.h or ended with
/// different weights.
/// </summary>
[Collection(TrainingCollection.Name)]
public class CollectionPressureTests
{
    [Fact]
    public void SftThenDpoUnderCollectionPressureEndsWithTheQuietRunsWeights()
    {
        var quiet = TrainSftThenDpo();
        long collections;
        Dictionary<string, float[]> loud;
        using (var pressure = new CollectionPressure())
        {
            loud = TrainSftThenDpo();
            collections = pressure.Stop();
        }
        Assert.True(collections > 50, $"only {collections} forced collections ran beside training");
        Assert.Equal(quiet.Keys.Order(), loud.Keys.Order());
        foreach (var (name, values) in quiet)
            Assert.True(values.AsSpan().SequenceEqual(loud[name]), $"{name} differs after training under collection pressure");
    }

    private static Dictionary<string, float[]> TrainSftThenDpo()
    {
        var token = TestContext.Current.CancellationToken;
        var pairs = TrainingTestKit.XPreferences(8, 21);
        using var dir = new TempDir();
        using var policy = Model(31);
        new SftTrainer(policy, TrainingTestKit.Tokenizer, new SftConfig { BatchSize = 2, MaxSteps = 30, LearningRate = 1e-3, WeightDecay = 0.01 })
            .Train(pairs.Select(p => new SftExample(p.Prompt, p.Chosen)).ToList(), dir.Sub("sft"), cancellationToken: token);
        var config = new DpoConfig { BatchSize = 2, MaxSteps = 30, Lora = null, LearningRate = 1e-3, SaveSteps = 0 };
        new DpoTrainer(policy, TrainingTestKit.Tokenizer, config, ReferenceModel.FromFactory("ref-31", () => Model(31)))
            .Train(pairs, dir.Sub("dpo"), cancellationToken: token);
        return policy.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().cpu().to(ScalarType.Float32).data<float>().ToArray());
    }

    // wide enough that each op runs long enough for a collection and its finalizers to overlap it
    private static Engine.Models.CausalLM Model(long seed) => Engine.Models.CausalLMFactory.Create(
        TrainingTestKit.OptConfig() with { HiddenSize = 128, IntermediateSize = 512, NumAttentionHeads = 4 }, seed: seed);

    /// <summary>A thread that allocates garbage and forces full blocking collections, running finalizers, until stopped.</summary>
    private sealed class CollectionPressure : IDisposable
    {
        private readonly Thread _thread;
        private volatile bool _stop;
        private long _collections;

        public CollectionPressure()
        {
            _thread = new Thread(() =>
            {
                var keep = new List<byte[]>();
                while (!_stop)
                {
                    for (int i = 0; i < 16; i++) keep.Add(new byte[1024]);
                    if (keep.Count > 4096) keep.Clear();
                    GC.Collect(0, GCCollectionMode.Forced, blocking: true);
                    GC.WaitForPendingFinalizers();
                    Interlocked.Increment(ref _collections);
                }
            }) { IsBackground = true, Name = "collection pressure" };
            _thread.Start();
        }

        public long Stop()
        {
            _stop = true;
            _thread.Join();
            return Interlocked.Read(ref _collections);
        }

        public void Dispose()
        {
            if (!_stop) Stop();
        }
    }
}
