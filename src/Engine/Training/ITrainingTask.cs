namespace WeakTeacher.Engine.Training;

/// <summary>What the shared loop needs from a trainer.</summary>
internal interface ITrainingTask
{
    string Stage { get; }
    int ExampleCount { get; }
    MicroBatch Prepare(IReadOnlyList<int> exampleIndices);
    /// <summary>Forward and backward of (loss summed over the batch's items) * <paramref name="lossScale"/>; adds metrics to <paramref name="sums"/>.</summary>
    void ForwardBackward(MicroBatch batch, double lossScale, MetricSums sums);
}
