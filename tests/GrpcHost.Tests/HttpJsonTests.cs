using System.Net;
using Grpc.Core;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using WeakTeacher.Grpc.V1;
using Xunit;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// The HTTP/JSON face (gRPC JSON transcoding from the protos' google.api.http annotations) on the shared host's plain
/// HTTP/1.1 endpoint, with real HTTP requests as curl sends them; gRPC keeps working on the gRPC endpoint beside it.
/// </summary>
[Collection("default-task")]
public sealed class HttpJsonTests(DefaultTaskHost shared)
{
    private HttpClient Http() => new()
    {
        BaseAddress = shared.HttpBase, DefaultRequestVersion = HttpVersion.Version11,
        DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact, Timeout = TimeSpan.FromMinutes(3),
    };

    private static async Task<JsonObject> Ok(HttpResponseMessage reply)
    {
        var text = await reply.Content.ReadAsStringAsync();
        Assert.True(reply.StatusCode == HttpStatusCode.OK, $"{reply.RequestMessage?.Method} {reply.RequestMessage?.RequestUri}: {reply.StatusCode} {text}");
        return JsonNode.Parse(text)!.AsObject();
    }

    [Fact]
    public async Task Curl_style_requests_start_a_job_read_it_and_label_pairs()
    {
        await shared.RequireStagesAsync();
        using var http = Http();
        var datasets = await Ok(await http.GetAsync("v1/datasets"));
        Assert.Contains(datasets["datasets"]!.AsArray(), d => d!["id"]!.GetValue<string>() == "default-labelled");

        // Start a job (proto3 JSON names, as curl -d '{"baseModelId": ...}' would send), then read it until it ends.
        var started = await Ok(await http.PostAsync("v1/jobs:train", new StringContent("""
            {"baseModelId": "default-teacher-base", "labelledDatasetId": "default-labelled", "outputName": "http-teacher",
             "sft": {"args": {"maxSteps": 2, "perDeviceTrainBatchSize": 8, "maxLength": 96, "maxPromptLength": 48}},
             "dpo": {"args": {"maxSteps": 2, "perDeviceTrainBatchSize": 8, "maxLength": 96, "maxPromptLength": 48}}}
            """, System.Text.Encoding.UTF8, "application/json")));
        var jobId = started["jobId"]!.GetValue<string>();
        Assert.StartsWith("job", jobId);
        JsonObject job;
        var deadline = DateTime.UtcNow.AddMinutes(3);
        while (true)
        {
            job = await Ok(await http.GetAsync($"v1/jobs/{jobId}"));
            var state = job["state"]!.GetValue<string>();
            if (state is "JOB_STATE_SUCCEEDED" or "JOB_STATE_FAILED" or "JOB_STATE_CANCELLED") break;
            Assert.True(DateTime.UtcNow < deadline, $"job {jobId} still {state}");
            await Task.Delay(300);
        }
        Assert.True(job["state"]!.GetValue<string>() == "JOB_STATE_SUCCEEDED", job.ToJsonString());
        var teacher = job["artifacts"]!.AsArray().Single(a => a!["name"]!.GetValue<string>() == "teacher")!["id"]!.GetValue<string>();
        // The same job through gRPC on the other endpoint.
        var viaGrpc = await new JobsService.JobsServiceClient(shared.Host.Channel).GetJobAsync(new GetJobRequest { JobId = jobId });
        Assert.Equal(JobState.Succeeded, viaGrpc.State);

        // Label pairs in one request; the answers match LabelStream's for the same pairs.
        var labelled = await Ok(await http.PostAsJsonAsync("v1/labeling:label", new
        {
            teacherModelId = teacher,
            pairs = new[]
            {
                new { id = "h1", prompt = "Say hello.", responseA = "Hello! How can I help?", responseB = "No." },
                new { id = "h2", prompt = "What is 3+4?", responseA = "It is 12.", responseB = "It is 7." },
            },
        }));
        var labels = labelled["labels"]!.AsArray().Select(l => l!.AsObject()).ToList();
        Assert.Equal(["h1", "h2"], labels.Select(l => l["id"]!.GetValue<string>()));
        var streamed = new Dictionary<string, LabelPairResponse>();
        using (var call = new LabelingService.LabelingServiceClient(shared.Host.Channel).LabelStream(deadline: DateTime.UtcNow.AddMinutes(2)))
        {
            await call.RequestStream.WriteAsync(new LabelPairRequest { Id = "h1", TeacherModelId = teacher, Prompt = "Say hello.", ResponseA = "Hello! How can I help?", ResponseB = "No." });
            await call.RequestStream.WriteAsync(new LabelPairRequest { Id = "h2", Prompt = "What is 3+4?", ResponseA = "It is 12.", ResponseB = "It is 7." });
            await call.RequestStream.CompleteAsync();
            await foreach (var r in call.ResponseStream.ReadAllAsync()) streamed[r.Id] = r;
        }
        foreach (var l in labels)
        {
            var s = streamed[l["id"]!.GetValue<string>()];
            Assert.Equal(s.RewardA, l["rewardA"]!.GetValue<double>(), 4);
            Assert.Equal(s.RewardB, l["rewardB"]!.GetValue<double>(), 4);
            Assert.Equal(s.Preferred.ToString(), l["preferred"]!.GetValue<string>() == "PREFERENCE_A" ? "A" : "B");
        }

        // Errors come back as JSON with the gRPC status, naming the field.
        using var bad = await http.PostAsJsonAsync("v1/labeling:label", new { teacherModelId = teacher, pairs = Array.Empty<object>() });
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("pairs", await bad.Content.ReadAsStringAsync());
        using var missing = await http.GetAsync("v1/jobs/job-nope");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
    }

    [Fact]
    public async Task The_openapi_document_describes_the_http_bindings()
    {
        using var http = Http();
        var doc = await Ok(await http.GetAsync("swagger/v1/swagger.json"));
        var paths = doc["paths"]!.AsObject();
        foreach (var path in new[] { "/v1/jobs:train", "/v1/jobs/{jobId}", "/v1/jobs", "/v1/labeling:label", "/v1/datasets", "/v1/models/{modelId}" })
            Assert.True(paths.ContainsKey(path), $"{path} missing from {string.Join(", ", paths.Select(p => p.Key))}");
        Assert.NotNull(paths["/v1/jobs:train"]!["post"]);
        Assert.NotNull(paths["/v1/jobs/{jobId}"]!["get"]);
    }
}
