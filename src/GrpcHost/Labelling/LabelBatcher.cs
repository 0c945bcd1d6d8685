using System.Diagnostics;
using System.Threading.Channels;
using Grpc.Core;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.Labelling;
using WeakTeacher.Engine.Pipeline;
using WeakTeacher.Engine.Runtime;
using WeakTeacher.GrpcHost.Observability;
using WeakTeacher.GrpcHost.Storage;

namespace WeakTeacher.GrpcHost.Labelling;

/// <summary>Work waiting for a device batch: a pair to label (LabelStream) or a response to score (/get_reward).</summary>
internal abstract record Pending(string TeacherId)
{
    public abstract void Fail(Exception e);
    public abstract void Cancel();
}

internal sealed record PendingPair(string TeacherId, UnlabelledPair Pair, TaskCompletionSource<PairLabel> Result) : Pending(TeacherId)
{
    public override void Fail(Exception e) => Result.TrySetException(e);
    public override void Cancel() => Result.TrySetCanceled();
}

internal sealed record PendingScore(string TeacherId, string Prompt, string Response, TaskCompletionSource<double> Result) : Pending(TeacherId)
{
    public override void Fail(Exception e) => Result.TrySetException(e);
    public override void Cancel() => Result.TrySetCanceled();
}

/// <summary>
/// The micro-batching queue of the streaming labeller: pairs from every open LabelStream (and responses from every
/// /get_reward request) wait here; one loop takes the
/// first pair, gathers more for up to Labeling:MaxWaitMilliseconds or until Labeling:MaxBatchSize, and labels them with
/// the teacher, which is loaded once and kept while requests for it keep coming.
/// </summary>
internal sealed class LabelBatcher : BackgroundService
{
    private readonly Channel<Pending> queue = Channel.CreateBounded<Pending>(new BoundedChannelOptions(4096) { SingleReader = true });
    private readonly ServiceOptions options;
    private readonly Catalog catalog;
    private readonly HostMetrics metrics;
    private readonly ILogger<LabelBatcher> logger;
    private (string Id, WeakLabeler Labeller)? loaded;

    public LabelBatcher(ServiceOptions options, Catalog catalog, HostMetrics metrics, ILogger<LabelBatcher> logger)
    {
        this.options = options;
        this.catalog = catalog;
        this.metrics = metrics;
        this.logger = logger;
    }

    public async Task<PairLabel> LabelAsync(string teacherId, UnlabelledPair pair, CancellationToken ct)
    {
        var pending = new PendingPair(teacherId, pair, new TaskCompletionSource<PairLabel>(TaskCreationOptions.RunContinuationsAsynchronously));
        await queue.Writer.WriteAsync(pending, ct);
        return await pending.Result.Task.WaitAsync(ct);
    }

    /// <summary>The teacher's reward of one (prompt, response), batched with everything else waiting for the device.</summary>
    public async Task<double> ScoreAsync(string teacherId, string prompt, string response, CancellationToken ct)
    {
        var pending = new PendingScore(teacherId, prompt, response, new TaskCompletionSource<double>(TaskCreationOptions.RunContinuationsAsynchronously));
        await queue.Writer.WriteAsync(pending, ct);
        return await pending.Result.Task.WaitAsync(ct);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var batch = new List<Pending>();
        try
        {
            while (await queue.Reader.WaitToReadAsync(stoppingToken))
            {
                batch.Clear();
                if (!queue.Reader.TryRead(out var first)) continue;
                batch.Add(first);
                using (var wait = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken))
                {
                    wait.CancelAfter(options.Labeling.MaxWaitMilliseconds);
                    try
                    {
                        while (batch.Count < options.Labeling.MaxBatchSize)
                        {
                            if (queue.Reader.TryRead(out var next)) { batch.Add(next); continue; }
                            if (!await queue.Reader.WaitToReadAsync(wait.Token)) break;
                        }
                    }
                    catch (OperationCanceledException) when (!stoppingToken.IsCancellationRequested) { }
                }
                // One teacher per device batch; pairs for other teachers go in the next batches.
                foreach (var group in batch.GroupBy(p => p.TeacherId))
                    await Task.Run(() => LabelGroup(group.Key, group.ToList()), CancellationToken.None);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested) { }
        finally
        {
            loaded?.Labeller.Dispose();
            while (queue.Reader.TryRead(out var left)) left.Cancel();
        }
    }

    private void LabelGroup(string teacherId, List<Pending> group)
    {
        try
        {
            var labeller = Teacher(teacherId);
            var clock = Stopwatch.StartNew();
            var pairs = group.OfType<PendingPair>().ToList();
            if (pairs.Count > 0)
            {
                var labels = labeller.LabelBatch(pairs.Select(p => p.Pair).ToList());
                for (int i = 0; i < pairs.Count; i++) pairs[i].Result.TrySetResult(labels[i]);
            }
            var scores = group.OfType<PendingScore>().ToList();
            if (scores.Count > 0)
            {
                var rewards = labeller.ScoreBatch(scores.Select(p => (p.Prompt, p.Response)).ToList());
                for (int i = 0; i < scores.Count; i++) scores[i].Result.TrySetResult(rewards[i]);
            }
            metrics.LabelBatch(group.Count, clock.Elapsed);
        }
        catch (Exception e)
        {
            var failure = e is RpcException ? e : Jobs.JobWorker.Classify(e) switch
            {
                var (code, message) => new RpcException(new Status(code, message)),
            };
            if (((RpcException)failure).StatusCode == StatusCode.ResourceExhausted) { loaded?.Labeller.Dispose(); loaded = null; }
            logger.LogError(e, "Labelling a batch of {Pairs} pairs with teacher {TeacherId} failed", group.Count, teacherId);
            foreach (var p in group) p.Fail(failure);
        }
    }

    private WeakLabeler Teacher(string teacherId)
    {
        if (loaded is { } current && current.Id == teacherId) return current.Labeller;
        var model = catalog.GetTeacher("teacher_model_id", teacherId);
        loaded?.Labeller.Dispose();
        loaded = null;
        logger.LogInformation("Loading teacher {TeacherId} for streaming labelling", teacherId);
        var labeller = TeacherManifest.OpenLabeler(catalog.ModelPath(model),
            TorchDevice.Initialize(options.Devices.Length > 0 ? options.Devices[0] : "cpu"),
            new Engine.Labelling.LabelingOptions { MaxLength = options.Labeling.MaxLength, MaxPromptLength = options.Labeling.MaxPromptLength });
        loaded = (teacherId, labeller);
        return labeller;
    }
}
