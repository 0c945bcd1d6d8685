extern alias host;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using WeakTeacher.Grpc.V1;
using Xunit;
using ApiKeys = host::WeakTeacher.GrpcHost.Security.ApiKeys;

namespace WeakTeacher.GrpcHost.Tests;

/// <summary>
/// POST /get_reward as OpenRLHF's remote reward client calls it (openrlhf/utils/agent.py: aiohttp, HTTP/1.1, JSON body
/// {"query", "prompts", "labels"}; reads "rewards", "scores", "extra_logs"), against the shared host's HTTP endpoint.
/// </summary>
[Collection("default-task")]
public sealed class RemoteRewardTests(DefaultTaskHost shared)
{
    private static HttpClient Http(Uri baseAddress) => new()
    {
        BaseAddress = baseAddress, DefaultRequestVersion = HttpVersion.Version11,
        DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact, Timeout = TimeSpan.FromMinutes(2),
    };

    [Fact]
    public async Task Get_reward_answers_openrlhf_shape_with_the_teachers_reward_of_each_response()
    {
        await shared.RequireStagesAsync();
        var jobs = new JobsService.JobsServiceClient(shared.Host.Channel);
        var train = await PipelineTests.WaitForEnd(jobs, (await jobs.TrainAsync(PipelineTests.TeacherRequest("default-teacher-base", "default-labelled", 2, 0))).JobId);
        Assert.Equal(JobState.Succeeded, train.State);
        var teacher = train.Artifacts.Single(a => a.Name == "teacher").Id;

        // The same texts through LabelStream: its reward_a / reward_b are what /get_reward must give each response.
        (string Prompt, string A, string B)[] pairs = [("Say hello.", "Hello! How can I help?", "No."), ("What is 3+4?", "It is 7.", "It is 12, I think.")];
        var expected = new Dictionary<string, double>();
        using (var call = new LabelingService.LabelingServiceClient(shared.Host.Channel).LabelStream(deadline: DateTime.UtcNow.AddMinutes(2)))
        {
            for (int i = 0; i < pairs.Length; i++)
                await call.RequestStream.WriteAsync(new LabelPairRequest { Id = $"{i}", TeacherModelId = i == 0 ? teacher : "", Prompt = pairs[i].Prompt, ResponseA = pairs[i].A, ResponseB = pairs[i].B });
            await call.RequestStream.CompleteAsync();
            await foreach (var r in call.ResponseStream.ReadAllAsync())
            {
                var p = pairs[int.Parse(r.Id)];
                expected[Rendered(p.Prompt) + p.A] = r.RewardA;
                expected[Rendered(p.Prompt) + p.B] = r.RewardB;
            }
        }
        var queries = expected.Keys.ToList();
        var prompts = queries.Select(q => q[..(q.IndexOf("Answer: ", StringComparison.Ordinal) + "Answer: ".Length)]).ToList();

        using var http = Http(shared.HttpBase);
        // Two requests at once, as OpenRLHF sends one slice of its batch to each URL.
        var halves = new[] { (0, 2), (2, queries.Count - 2) }.Select(async range =>
        {
            var payload = new JsonObject
            {
                ["query"] = new JsonArray([.. queries.Skip(range.Item1).Take(range.Item2).Select(q => JsonValue.Create(q))]),
                ["prompts"] = new JsonArray([.. prompts.Skip(range.Item1).Take(range.Item2).Select(q => JsonValue.Create(q))]),
                ["labels"] = new JsonArray([.. Enumerable.Repeat("", range.Item2).Select(l => JsonValue.Create(l))]),
            };
            using var reply = await http.PostAsync($"get_reward?teacher_model_id={teacher}", JsonContent.Create(payload));
            var text = await reply.Content.ReadAsStringAsync();
            Assert.True(reply.StatusCode == HttpStatusCode.OK, $"{reply.StatusCode}: {text}\n{PipelineTests.Tail(shared.Host.Log)}");
            Assert.Equal(HttpVersion.Version11, reply.Version);
            return (range, JsonNode.Parse(text)!.AsObject());
        }).ToList();
        foreach (var (range, answer) in await Task.WhenAll(halves))
        {
            Assert.Equal(["extra_logs", "rewards", "scores"], answer.Select(kv => kv.Key).Order());
            var rewards = answer["rewards"]!.AsArray().Select(v => v!.GetValue<double>()).ToList();
            Assert.Equal(rewards, answer["scores"]!.AsArray().Select(v => v!.GetValue<double>()));
            Assert.Equal(rewards, answer["extra_logs"]!["teacher_reward"]!.AsArray().Select(v => v!.GetValue<double>()));
            Assert.Equal(range.Item2, rewards.Count);
            for (int i = 0; i < rewards.Count; i++)
                Assert.Equal(expected[queries[range.Item1 + i]], rewards[i], 3);
        }

        // Bad input: one clear error naming the field.
        async Task Refused(HttpStatusCode status, string body, string mention, string query = "")
        {
            using var reply = await http.PostAsync($"get_reward{(query == "" ? $"?teacher_model_id={teacher}" : query)}",
                new StringContent(body, System.Text.Encoding.UTF8, "application/json"));
            var text = await reply.Content.ReadAsStringAsync();
            Assert.True(reply.StatusCode == status, $"{reply.StatusCode}: {text}");
            Assert.Contains(mention, JsonDocument.Parse(text).RootElement.GetProperty("error").GetString());
        }
        await Refused(HttpStatusCode.BadRequest, "{\"prompts\": []}", "query");
        await Refused(HttpStatusCode.BadRequest, "{\"query\": [\"a\", 3]}", "query[1]");
        await Refused(HttpStatusCode.BadRequest, "{\"query\": [\"Question: x\\n\\nAnswer: y\"], \"prompts\": [\"other\"]}", "prompts[0]");
        await Refused(HttpStatusCode.BadRequest, "{\"query\": [\"a\"], \"prompts\": [\"a\", \"b\"]}", "prompts");
        await Refused(HttpStatusCode.BadRequest, "not json", "body");
        await Refused(HttpStatusCode.BadRequest, "{\"query\": [\"a b\"]}", "teacher_model_id", "?x=1");
        await Refused(HttpStatusCode.NotFound, "{\"query\": [\"a b\"]}", "teacher_model_id", "?teacher_model_id=mdl-nope");
    }

    /// <summary>The host's "paper" template, as LabelStream renders a prompt (and leaves these responses as they are).</summary>
    private static string Rendered(string prompt) => $"Question: {prompt}\n\nAnswer: ";

    [Fact]
    public async Task Get_reward_and_the_http_json_calls_need_the_api_key_when_keys_are_required()
    {
        const string key = "wt_reward_key_0123456789";
        var httpPort = HostProcess.FreePort();
        await using var server = await HostProcess.StartAsync(extraArgs:
            ["--Auth:Require", "true", "--Auth:ApiKeyHashes:0", ApiKeys.Hash(key), "--HttpUrl", $"http://127.0.0.1:{httpPort}"]);
        using var http = Http(new Uri($"http://127.0.0.1:{httpPort}/"));
        async Task<(HttpStatusCode, string)> Post(string? authorization)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "get_reward?teacher_model_id=mdl-none")
            { Content = new StringContent("{\"query\": [\"a b\"]}", System.Text.Encoding.UTF8, "application/json") };
            if (authorization is not null) request.Headers.TryAddWithoutValidation("Authorization", authorization);
            using var reply = await http.SendAsync(request);
            return (reply.StatusCode, await reply.Content.ReadAsStringAsync());
        }
        var (status, body) = await Post(null);
        Assert.Equal(HttpStatusCode.Unauthorized, status);
        Assert.Contains("authorization", body);
        (status, body) = await Post("Bearer wrong");
        Assert.Equal(HttpStatusCode.Unauthorized, status);
        Assert.Contains("not valid", body);
        // With the key the request gets past authentication to the teacher lookup.
        (status, body) = await Post($"Bearer {key}");
        Assert.True(status is HttpStatusCode.NotFound or HttpStatusCode.NotImplemented, $"{status}: {body}");

        // The HTTP/JSON face on the same endpoint goes through the same check (transcoded calls run the gRPC interceptor).
        using (var anonymous = await http.GetAsync("v1/datasets"))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
            Assert.Contains("authorization", await anonymous.Content.ReadAsStringAsync());
        }
        using var keyed = new HttpRequestMessage(HttpMethod.Get, "v1/datasets");
        keyed.Headers.TryAddWithoutValidation("Authorization", $"Bearer {key}");
        using (var reply = await http.SendAsync(keyed))
            Assert.True(reply.StatusCode == HttpStatusCode.OK, $"{reply.StatusCode}: {await reply.Content.ReadAsStringAsync()}");
    }
}
