using Grpc.Core;
using Grpc.Net.Client;
using WeakTeacher.Grpc.V1;

namespace WeakTeacher.Client;

/// <summary>How <see cref="ReplicatedLabelStream"/> spreads and resumes its streams.</summary>
public sealed record LabelStreamOptions
{
    /// <summary>Streams open at once; round_robin puts successive streams on successive replicas.</summary>
    public int Streams { get; init; } = 1;
    /// <summary>Pairs sent and not yet answered on one stream: what a lost replica costs to re-send.</summary>
    public int Window { get; init; } = 64;
    /// <summary>Streams in a row that may fail before a label comes back, before the last error is the caller's.</summary>
    public int MaxFailuresWithoutProgress { get; init; } = 8;
    public TimeSpan Backoff { get; init; } = TimeSpan.FromMilliseconds(200);
}

/// <param name="Labels">One per pair, in the order the pairs were given.</param>
/// <param name="StreamsReopened">Streams opened again after one failed mid-way.</param>
/// <param name="PairsResent">Pairs sent again: the unanswered ones of the failed streams, never an answered one.</param>
public sealed record LabelStreamResult(IReadOnlyList<LabelPairResponse> Labels, int StreamsReopened, int PairsResent);

/// <summary>
/// LabelStream across host replicas that labels every pair exactly once however many replicas go away mid-stream.
/// grpc-dotnet retries a call only until its first response arrives; after that a lost replica fails the stream, and
/// re-sending the whole stream would label its answered pairs twice. So each stream keeps at most a window of pairs
/// unanswered; when it fails with UNAVAILABLE those pairs (and only those) go back to the queue, and a new stream,
/// which the balancer puts on a replica that is up, sends them again. The result is keyed by the caller's ids.
/// </summary>
public static class ReplicatedLabelStream
{
    public static async Task<LabelStreamResult> LabelAsync(GrpcChannel channel, string teacherModelId, IReadOnlyList<LabelPairRequest> pairs,
        LabelStreamOptions? options = null, Metadata? headers = null, CancellationToken ct = default)
    {
        options ??= new LabelStreamOptions();
        if (options.Streams < 1 || options.Window < 1) throw new ArgumentException($"streams ({options.Streams}) and window ({options.Window}) must be at least 1");
        if (string.IsNullOrEmpty(teacherModelId)) throw new ArgumentException("teacher_model_id: required");
        var index = new Dictionary<string, int>(pairs.Count, StringComparer.Ordinal);
        for (int i = 0; i < pairs.Count; i++)
            if (string.IsNullOrEmpty(pairs[i].Id) || !index.TryAdd(pairs[i].Id, i))
                throw new ArgumentException($"pairs[{i}]: id '{pairs[i].Id}' is empty or given twice; each pair needs its own id");

        var state = new State(pairs.Count);
        var client = new LabelingService.LabelingServiceClient(channel);
        await Task.WhenAll(Enumerable.Range(0, Math.Min(options.Streams, Math.Max(1, pairs.Count))).Select(_ => Task.Run(async () =>
        {
            int failures = 0;
            while (state.HasWork)
            {
                var outcome = await RunStreamAsync(client, teacherModelId, pairs, index, state, options.Window, headers, ct);
                if (outcome.Error is null) { failures = 0; continue; }
                state.Failed(outcome.Unanswered);
                failures = outcome.Answered > 0 ? 1 : failures + 1;
                if (failures > options.MaxFailuresWithoutProgress) throw outcome.Error;
                await Task.Delay(options.Backoff * Math.Min(failures, 8), ct);
            }
        }, ct)));
        return new LabelStreamResult(state.Labels!, state.Reopened, state.Resent);
    }

    private sealed record Outcome(int Answered, List<int> Unanswered, RpcException? Error);

    private static async Task<Outcome> RunStreamAsync(LabelingService.LabelingServiceClient client, string teacher, IReadOnlyList<LabelPairRequest> pairs,
        Dictionary<string, int> index, State state, int window, Metadata? headers, CancellationToken ct)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        using var call = client.LabelStream(headers, cancellationToken: stop.Token);
        var unanswered = new HashSet<int>();
        using var slots = new SemaphoreSlim(window);
        int answered = 0;

        var sender = Task.Run(async () =>
        {
            bool first = true;
            while (true)
            {
                await slots.WaitAsync(stop.Token);
                int i;
                lock (unanswered)
                {
                    if (!state.TryTake(out i)) break;
                    unanswered.Add(i);
                }
                var request = pairs[i].Clone();
                // Each stream names its teacher on its first message, whichever pair that is.
                request.TeacherModelId = first ? teacher : "";
                first = false;
                await call.RequestStream.WriteAsync(request, stop.Token);
            }
            await call.RequestStream.CompleteAsync();
        }, stop.Token);

        try
        {
            await foreach (var label in call.ResponseStream.ReadAllAsync(stop.Token))
            {
                if (!index.TryGetValue(label.Id, out int i)) throw new InvalidOperationException($"the host answered id '{label.Id}', which was not sent");
                lock (unanswered)
                    if (!unanswered.Remove(i)) throw new InvalidOperationException($"the host answered id '{label.Id}' twice on one stream");
                state.Answer(i, label);
                answered++;
                slots.Release();
            }
            await sender;
            return new Outcome(answered, [], null);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !ct.IsCancellationRequested)
        {
            stop.Cancel();
            try { await sender; } catch (Exception) { /* the write side of the lost call; its status is e */ }
            lock (unanswered) return new Outcome(answered, [.. unanswered], e);
        }
    }

    /// <summary>The queue of pairs not yet sent (re-sent ones first) and the labels so far.</summary>
    private sealed class State(int count)
    {
        private readonly LinkedList<int> queue = new(Enumerable.Range(0, count));
        private readonly LabelPairResponse?[] labels = new LabelPairResponse?[count];
        private int done;

        public int Reopened { get; private set; }
        public int Resent { get; private set; }

        public bool HasWork { get { lock (queue) return queue.Count > 0; } }

        public bool TryTake(out int i)
        {
            lock (queue)
            {
                i = queue.First?.Value ?? -1;
                if (i < 0) return false;
                queue.RemoveFirst();
                return true;
            }
        }

        public void Answer(int i, LabelPairResponse label)
        {
            lock (queue)
            {
                if (labels[i] is not null) throw new InvalidOperationException($"id '{label.Id}' was labelled twice");
                labels[i] = label;
                done++;
            }
        }

        public void Failed(List<int> unanswered)
        {
            lock (queue)
            {
                Reopened++;
                Resent += unanswered.Count;
                foreach (var i in unanswered.OrderByDescending(i => i)) queue.AddFirst(i);
            }
        }

        public IReadOnlyList<LabelPairResponse>? Labels
        {
            get
            {
                lock (queue)
                    return done == labels.Length ? labels.Select(l => l!).ToList()
                        : throw new InvalidOperationException($"{labels.Length - done} pairs have no label");
            }
        }
    }
}
