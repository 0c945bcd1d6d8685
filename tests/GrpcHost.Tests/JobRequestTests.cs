using Grpc.Core;
using Grpc.Net.Client;
using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// Job starts as a retrying or impatient client makes them (issue 9 points 4 and 7): an expired deadline leaves no job,
/// a retried request_id returns the first job, and messages never echo unbounded client input.
/// </summary>
[Collection("default-task")]
public sealed class JobRequestTests(DefaultTaskHost shared)
{
    private JobsService.JobsServiceClient Jobs => new(shared.Host.Channel);

    private async Task<int> TrainJobCount() =>
        (await Jobs.ListJobsAsync(new ListJobsRequest { Kind = JobKind.Train, PageSize = 1000 })).Jobs.Count;

    [Fact]
    public async Task A_train_whose_deadline_has_passed_on_arrival_queues_nothing()
    {
        await shared.RequireStagesAsync();
        int before = await TrainJobCount();
        // The client sets no deadline of its own (it would give up before sending); the handler below stamps the
        // request with a 1 µs grpc-timeout, so the deadline has passed when the host reads the request.
        using var channel = GrpcChannel.ForAddress(shared.Host.Address, new GrpcChannelOptions { HttpHandler = new ExpiredDeadline(new SocketsHttpHandler()) });
        var jobs = new JobsService.JobsServiceClient(channel);
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
            await jobs.TrainAsync(PipelineTests.TeacherRequest("default-teacher-base", "default-labelled", 2, 0)));
        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
        await Task.Delay(500, TestContext.Current.CancellationToken);
        Assert.Equal(before, await TrainJobCount());
    }

    [Fact]
    public async Task A_retried_request_id_returns_the_first_job_and_a_different_request_with_it_is_refused()
    {
        await shared.RequireStagesAsync();
        var request = PipelineTests.TeacherRequest("default-teacher-base", "default-labelled", 2000, 0);
        request.RequestId = "retry-" + Guid.NewGuid().ToString("N");
        var first = await Jobs.TrainAsync(request);
        int count = await TrainJobCount();
        var second = await Jobs.TrainAsync(request);
        Assert.Equal(first.JobId, second.JobId);
        Assert.Equal(count, await TrainJobCount());
        // Concurrent retries of one request: still one job.
        var concurrent = await Task.WhenAll(Enumerable.Range(0, 6).Select(async _ => (await Jobs.TrainAsync(request)).JobId));
        Assert.All(concurrent, id => Assert.Equal(first.JobId, id));
        Assert.Equal(count, await TrainJobCount());

        var changed = request.Clone();
        changed.OutputName = "another-teacher";
        await Client.Fails(StatusCode.AlreadyExists, async () => await Jobs.TrainAsync(changed), "request_id");
        // The key is checked like any other field.
        var bad = request.Clone();
        bad.RequestId = "has spaces";
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.TrainAsync(bad), "request_id");
        await Jobs.CancelJobAsync(new CancelJobRequest { JobId = first.JobId });
        await PipelineTests.WaitForEnd(Jobs, first.JobId, TimeSpan.FromMinutes(2));
    }

    [Fact]
    public async Task Not_found_messages_echo_a_short_prefix_of_a_huge_id()
    {
        var id = new string('j', 10_000);
        var e = await Client.Fails(StatusCode.NotFound, async () => await Jobs.GetJobAsync(new GetJobRequest { JobId = id }), "job_id");
        Assert.True(e.Status.Detail.Length < 200, $"message of {e.Status.Detail.Length} characters");
        Assert.Contains("10000 characters", e.Status.Detail);
        await Client.Fails(StatusCode.NotFound, async () =>
            await new DatasetsService.DatasetsServiceClient(shared.Host.Channel).GetDatasetAsync(new GetDatasetRequest { DatasetId = id }));
        var models = new ModelsService.ModelsServiceClient(shared.Host.Channel);
        var m = await Client.Fails(StatusCode.NotFound, async () => await models.GetModelAsync(new GetModelRequest { ModelId = id }));
        Assert.True(m.Status.Detail.Length < 200, $"message of {m.Status.Detail.Length} characters");
    }

    [Fact]
    public async Task A_base_model_named_as_teacher_is_the_callers_mistake_without_a_server_path()
    {
        await shared.RequireStagesAsync();
        var labeling = new LabelingService.LabelingServiceClient(shared.Host.Channel);
        var e = await Client.Fails(StatusCode.FailedPrecondition, async () =>
        {
            using var call = labeling.LabelStream();
            await call.RequestStream.WriteAsync(new LabelPairRequest { Id = "x", TeacherModelId = "default-teacher-base", Prompt = "p", ResponseA = "a", ResponseB = "b" });
            await call.RequestStream.CompleteAsync();
            await foreach (var _ in call.ResponseStream.ReadAllAsync()) { }
        }, "not a trained teacher");
        Assert.DoesNotContain(shared.Host.DataDir, e.Status.Detail);
        Assert.DoesNotContain("/", e.Status.Detail);
        await Client.Fails(StatusCode.FailedPrecondition, async () => await labeling.LabelPairsAsync(new LabelPairsRequest
        {
            TeacherModelId = "default-student-base", Pairs = { new LabelPairRequest { Id = "x", Prompt = "p", ResponseA = "a", ResponseB = "b" } },
        }), "teacher_model_id");
        await Client.Fails(StatusCode.FailedPrecondition, async () => await Jobs.LabelAsync(new LabelRequest
        {
            TeacherModelId = "default-teacher-base", UnlabelledDatasetId = "default-unlabelled",
        }), "teacher_model_id");
    }

    [Fact]
    public async Task A_max_length_beyond_the_models_positions_is_refused_at_request_time()
    {
        await shared.RequireStagesAsync();
        int before = await TrainJobCount();
        var request = PipelineTests.TeacherRequest("default-teacher-base", "default-labelled", 2, 0);
        request.Dpo.Args.MaxLength = 4096;
        var e = await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.TrainAsync(request), "dpo.args.max_length");
        Assert.Contains("256 positions", e.Status.Detail);
        var align = new AlignRequest { BaseModelId = "default-student-base", LabelledDatasetId = "default-labelled", Sft = new SftConfig { Args = new TrainingArguments { MaxLength = 300 } } };
        await Client.Fails(StatusCode.InvalidArgument, async () => await Jobs.AlignAsync(align), "sft.args.max_length");
        Assert.Equal(before, await TrainJobCount());
    }

    /// <summary>Stamps every request with a deadline that has already passed when it arrives.</summary>
    private sealed class ExpiredDeadline(HttpMessageHandler inner) : DelegatingHandler(inner)
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            request.Headers.Remove("grpc-timeout");
            request.Headers.TryAddWithoutValidation("grpc-timeout", "1u");
            return base.SendAsync(request, cancellationToken);
        }
    }
}
