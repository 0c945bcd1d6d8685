using System.Threading.Channels;
using Grpc.Core;
using WeakTeacher.Engine.Data;
using WeakTeacher.Grpc.V1;
using WeakTeacher.GrpcHost.Labeling;
using WeakTeacher.GrpcHost.Storage;
using WeakTeacher.GrpcHost.Validation;

namespace WeakTeacher.GrpcHost.Services;

internal sealed class LabelingServiceImpl(LabelBatcher batcher, Catalog catalog, ServiceOptions options) : LabelingService.LabelingServiceBase
{
    public override async Task LabelStream(IAsyncStreamReader<LabelPairRequest> requestStream, IServerStreamWriter<LabelPairResponse> responseStream,
        ServerCallContext context)
    {
        if (!batcher.Available)
            throw new RpcException(new Status(StatusCode.Unimplemented, "this build of the host has no engine labeller (Engine.Labelling.WeakLabeler)"));
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
                if (!ids.Add(request.Id)) throw RequestErrors.Invalid("id", $"{at}: '{request.Id}' was already sent on this stream");
                if (!string.IsNullOrEmpty(request.TeacherModelId))
                {
                    if (teacher is not null && teacher != request.TeacherModelId)
                        throw RequestErrors.Invalid("teacher_model_id", $"{at}: one stream labels with one teacher ('{teacher}')");
                    teacher ??= catalog.GetModel("teacher_model_id", request.TeacherModelId).Id;
                }
                if (teacher is null) throw RequestErrors.Invalid("teacher_model_id", $"{at}: required on the first message");
                foreach (var (field, text) in new[] { ("prompt", request.Prompt), ("response_a", request.ResponseA), ("response_b", request.ResponseB) })
                    if (string.IsNullOrWhiteSpace(text)) throw RequestErrors.Invalid(field, $"{at}: empty text");
                var prompt = template.Render(request.Prompt);
                var pair = new UnlabelledPair(request.Id, prompt, template.FormatResponse(prompt, request.ResponseA),
                    template.FormatResponse(prompt, request.ResponseB), null);
                var id = request.Id;
                var labelTask = batcher.LabelAsync(teacher, pair, ct).ContinueWith(t =>
                {
                    var label = t.GetAwaiter().GetResult();
                    return new LabelPairResponse
                    {
                        Id = id, Preferred = label.ChosenIndex == 0 ? Preference.A : Preference.B,
                        RewardA = label.RewardA, RewardB = label.RewardB, Margin = label.Margin,
                    };
                }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                results.Writer.TryWrite(labelTask);
            }
        }
        finally
        {
            results.Writer.TryComplete();
        }
        await writer;
    }
}
