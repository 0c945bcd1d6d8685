using System.Threading.Channels;
using Grpc.Core;
using WeakTeacher.Engine.Data;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Labelling;
using WeakTeacher.GrpcHost.Storage;
using WeakTeacher.GrpcHost.Validation;

namespace WeakTeacher.GrpcHost.Services;

internal sealed class LabelingServiceImpl(LabelBatcher batcher, Catalog catalog, ServiceOptions options) : LabelingService.LabelingServiceBase
{
    public const int MaxPairsPerRequest = 1024;

    public override async Task<LabelPairsResponse> LabelPairs(LabelPairsRequest request, ServerCallContext context)
    {
        if (string.IsNullOrEmpty(request.TeacherModelId)) throw RequestErrors.Invalid("teacher_model_id", "required");
        var teacher = catalog.GetTeacher("teacher_model_id", request.TeacherModelId).Id;
        if (request.Pairs.Count is 0 or > MaxPairsPerRequest) throw RequestErrors.Invalid("pairs", $"{request.Pairs.Count} pairs; send 1-{MaxPairsPerRequest}");
        var template = PromptTemplate.Get(options.Labeling.Template);
        var ids = new HashSet<string>(StringComparer.Ordinal);
        var pairs = new List<UnlabelledPair>(request.Pairs.Count);
        for (int i = 0; i < request.Pairs.Count; i++)
        {
            var p = request.Pairs[i];
            var at = $"pairs[{i}]";
            if (string.IsNullOrEmpty(p.Id) || p.Id.Length > 256) throw RequestErrors.Invalid("id", $"{at}: required, 1-256 characters");
            if (!ids.Add(p.Id)) throw RequestErrors.Invalid("id", $"{at}: '{RequestErrors.Echo(p.Id)}' appears twice");
            if (!string.IsNullOrEmpty(p.TeacherModelId) && p.TeacherModelId != request.TeacherModelId)
                throw RequestErrors.Invalid("teacher_model_id", $"{at}: one request labels with one teacher ('{RequestErrors.Echo(request.TeacherModelId)}')");
            pairs.Add(Translate(p, template, at));
        }
        var labels = await Task.WhenAll(pairs.Select(p => LabelAsync(teacher, p, context.CancellationToken)));
        return new LabelPairsResponse { Labels = { labels } };
    }

    /// <summary>A request's pair, checked and templated as the teacher was trained.</summary>
    private static UnlabelledPair Translate(LabelPairRequest request, PromptTemplate template, string at)
    {
        foreach (var (field, text) in new[] { ("prompt", request.Prompt), ("response_a", request.ResponseA), ("response_b", request.ResponseB) })
            if (string.IsNullOrWhiteSpace(text)) throw RequestErrors.Invalid(field, $"{at}: empty text");
        var prompt = template.Render(request.Prompt);
        return new UnlabelledPair(request.Id, prompt, template.FormatResponse(prompt, request.ResponseA),
            template.FormatResponse(prompt, request.ResponseB), null);
    }

    private Task<LabelPairResponse> LabelAsync(string teacher, UnlabelledPair pair, CancellationToken ct) =>
        batcher.LabelAsync(teacher, pair, ct).ContinueWith(t =>
        {
            var label = t.GetAwaiter().GetResult();
            return new LabelPairResponse
            {
                Id = pair.Id, Preferred = label.Label == 0 ? Preference.A : Preference.B,
                RewardA = label.RewardA, RewardB = label.RewardB, Margin = label.Margin,
            };
        }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);

    public override async Task LabelStream(IAsyncStreamReader<LabelPairRequest> requestStream, IServerStreamWriter<LabelPairResponse> responseStream,
        ServerCallContext context)
    {
        var ct = context.CancellationToken;
        var template = PromptTemplate.Get(options.Labeling.Template);
        var results = Channel.CreateUnbounded<Task<LabelPairResponse>>(new UnboundedChannelOptions { SingleReader = true });
        // Responses go out as they complete; one writer loop, since a gRPC stream takes one write at a time.
        var writer = Task.Run(async () =>
        {
            var inFlight = new List<Task<LabelPairResponse>>();
            var reading = true;
            while (reading || inFlight.Count > 0)
            {
                var readTask = reading ? results.Reader.WaitToReadAsync(ct).AsTask() : null;
                var any = readTask is null ? await Task.WhenAny(inFlight) : await Task.WhenAny(inFlight.Append<Task>(readTask));
                if (any == readTask)
                {
                    if (!await readTask) reading = false;
                    while (results.Reader.TryRead(out var t)) inFlight.Add(t);
                    continue;
                }
                var done = (Task<LabelPairResponse>)any;
                inFlight.Remove(done);
                await responseStream.WriteAsync(await done, ct);
            }
        }, ct);

        string? teacher = null;
        var ids = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            long index = 0;
            await foreach (var request in requestStream.ReadAllAsync(ct))
            {
                index++;
                var at = $"request {index}";
                if (string.IsNullOrEmpty(request.Id) || request.Id.Length > 256) throw RequestErrors.Invalid("id", $"{at}: required, 1-256 characters");
                if (!ids.Add(request.Id)) throw RequestErrors.Invalid("id", $"{at}: '{RequestErrors.Echo(request.Id)}' was already sent on this stream");
                if (!string.IsNullOrEmpty(request.TeacherModelId))
                {
                    if (teacher is not null && teacher != request.TeacherModelId)
                        throw RequestErrors.Invalid("teacher_model_id", $"{at}: one stream labels with one teacher ('{RequestErrors.Echo(teacher)}')");
                    teacher ??= catalog.GetTeacher("teacher_model_id", request.TeacherModelId).Id;
                }
                if (teacher is null) throw RequestErrors.Invalid("teacher_model_id", $"{at}: required on the first message");
                var pair = Translate(request, template, at);
                results.Writer.TryWrite(LabelAsync(teacher, pair, ct));
            }
        }
        finally
        {
            results.Writer.TryComplete();
        }
        await writer;
    }
}
