using System.Diagnostics.Metrics;

namespace WeakTeacher.GrpcHost.Observability;

/// <summary>OpenTelemetry instruments (meter "WeakTeacher.GrpcHost"), scraped by Prometheus at /metrics.</summary>
internal sealed class HostMetrics : IDisposable
{
    public const string MeterName = "WeakTeacher.GrpcHost";
    private readonly Meter meter;
    private readonly Histogram<double> jobDuration;
    private readonly Histogram<double> tokensPerSecond;
    private readonly Counter<long> labelledPairs;
    private readonly Histogram<double> labelledPairsPerSecond;
    private Func<int> queueLength = () => 0;
    private Func<int> runningJobs = () => 0;

    public HostMetrics(IMeterFactory factory)
    {
        meter = factory.Create(MeterName);
        meter.CreateObservableGauge("wt.jobs.queue_length", () => queueLength(), "{job}", "Jobs waiting for a device");
        meter.CreateObservableGauge("wt.jobs.running", () => runningJobs(), "{job}", "Jobs running now");
        jobDuration = meter.CreateHistogram<double>("wt.jobs.duration", "s", "Wall time of a job attempt, by kind and final state");
        tokensPerSecond = meter.CreateHistogram<double>("wt.jobs.tokens_per_second", "{token}/s", "Training/generation throughput reported by stages");
        labelledPairs = meter.CreateCounter<long>("wt.labeling.pairs", "{pair}", "Pairs labelled by the streaming labeller");
        labelledPairsPerSecond = meter.CreateHistogram<double>("wt.labeling.pairs_per_second", "{pair}/s", "Throughput of each streaming-label batch");
    }

    public void ObserveQueue(Func<int> length, Func<int> running)
    {
        queueLength = length;
        runningJobs = running;
    }

    public void JobFinished(string kind, string state, TimeSpan duration) =>
        jobDuration.Record(duration.TotalSeconds, new("kind", kind), new("state", state));

    public void Throughput(string kind, string stage, double tokens) =>
        tokensPerSecond.Record(tokens, new("kind", kind), new("stage", stage));

    public void LabelBatch(int pairs, TimeSpan took)
    {
        labelledPairs.Add(pairs);
        if (took > TimeSpan.Zero) labelledPairsPerSecond.Record(pairs / took.TotalSeconds);
    }

    public void Dispose() => meter.Dispose();
}
