using System.Text.Json;
using Grpc.Core;
using Microsoft.AspNetCore.Http.Features;
using WeakTeacher.GrpcHost.Labelling;
using WeakTeacher.GrpcHost.Security;
using WeakTeacher.GrpcHost.Storage;

namespace WeakTeacher.GrpcHost.Services;

/// <summary>
/// OpenRLHF's remote reward model protocol, so its trainers can use a teacher trained here as `--reward.remote_url`.
/// The shape, from OpenRLHF's source: the client (openrlhf/utils/agent.py, _fetch_rewards_via_http) posts
///     {"query": [full text, ...], "prompts": [prompt, ...], "labels": [label, ...]}
/// (one slice of its batch per URL) and reads "rewards", "scores" (falling back to "rewards") and "extra_logs";
/// openrlhf/cli/serve_rm.py answers
///     {"rewards": [float, ...], "scores": [float, ...], "extra_logs": {"dummy_scores": [float, ...]}}.
/// Here each query's response part (the text after its prompt) gets the teacher's reward, as one side of a labelled
/// pair gets it: a DPO teacher's implicit reward log pi(y|x) - log pi_ref(y|x), or a reward model's score. The texts are
/// taken as sent (OpenRLHF has already applied its template). Responses of concurrent requests share device batches
/// with LabelStream's pairs. The teacher is `?teacher_model_id=` on the URL, else Labeling:RewardTeacherModelId.
/// </summary>
internal static class RemoteRewardEndpoint
{
    public static void Map(WebApplication app) => app.MapPost("/get_reward", Handle);

    private static async Task<IResult> Handle(HttpContext http, ApiKeys keys, LabelBatcher batcher, Catalog catalog, ServiceOptions options)
    {
        if (keys.Refusal(http.Request.Headers.Authorization.ToString()) is { } refusal) return Error(StatusCodes.Status401Unauthorized, refusal);
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit) limit.MaxRequestBodySize = options.Limits.MaxMessageBytes;

        string teacherId = http.Request.Query["teacher_model_id"].ToString();
        if (teacherId.Length == 0) teacherId = options.Labeling.RewardTeacherModelId ?? "";
        if (teacherId.Length == 0)
            return Error(StatusCodes.Status400BadRequest, "teacher_model_id: required (?teacher_model_id=<model id> on the URL, or Labeling:RewardTeacherModelId)");
        try { teacherId = catalog.GetTeacher("teacher_model_id", teacherId).Id; }
        catch (RpcException e) { return Error(e.StatusCode == StatusCode.NotFound ? StatusCodes.Status404NotFound : StatusCodes.Status400BadRequest, e.Status.Detail); }

        JsonDocument body;
        try { body = await JsonDocument.ParseAsync(http.Request.Body, cancellationToken: http.RequestAborted); }
        catch (JsonException e) { return Error(StatusCodes.Status400BadRequest, $"body: not JSON ({e.Message})"); }
        catch (BadHttpRequestException e) { return Error(e.StatusCode, $"body: {e.Message}"); }
        using (body)
        {
            if (body.RootElement.ValueKind != JsonValueKind.Object) return Error(StatusCodes.Status400BadRequest, "body: expected a JSON object with \"query\"");
            if (Strings(body.RootElement, "query", required: true, out var queries) is { } badQuery) return Error(StatusCodes.Status400BadRequest, badQuery);
            if (Strings(body.RootElement, "prompts", required: false, out var prompts) is { } badPrompts) return Error(StatusCodes.Status400BadRequest, badPrompts);
            if (prompts is not null && prompts.Count != queries!.Count)
                return Error(StatusCodes.Status400BadRequest, $"prompts: {prompts.Count} prompts for {queries.Count} queries");
            var work = new List<Task<double>>(queries!.Count);
            for (int i = 0; i < queries.Count; i++)
            {
                var prompt = prompts?[i] ?? "";
                if (!queries[i].StartsWith(prompt, StringComparison.Ordinal))
                    return Error(StatusCodes.Status400BadRequest, $"query[{i}]: does not start with prompts[{i}] (the query is the prompt followed by the response)");
                var response = queries[i][prompt.Length..];
                if (string.IsNullOrWhiteSpace(response)) return Error(StatusCodes.Status400BadRequest, $"query[{i}]: no response after the prompt");
                work.Add(batcher.ScoreAsync(teacherId, prompt, response, http.RequestAborted));
            }
            double[] rewards;
            try { rewards = await Task.WhenAll(work); }
            catch (RpcException e) { return Error(e.StatusCode == StatusCode.ResourceExhausted ? StatusCodes.Status503ServiceUnavailable : StatusCodes.Status500InternalServerError, e.Status.Detail); }
            return Results.Json(new Dictionary<string, object>
            {
                ["rewards"] = rewards, ["scores"] = rewards, ["extra_logs"] = new Dictionary<string, double[]> { ["teacher_reward"] = rewards },
            });
        }
    }

    /// <summary>A list of strings under <paramref name="name"/>, or why not.</summary>
    private static string? Strings(JsonElement root, string name, bool required, out List<string>? values)
    {
        values = null;
        if (!root.TryGetProperty(name, out var element) || element.ValueKind == JsonValueKind.Null)
            return required ? $"{name}: required, a list of strings" : null;
        if (element.ValueKind != JsonValueKind.Array) return $"{name}: expected a list of strings, got {element.ValueKind}";
        values = new List<string>(element.GetArrayLength());
        int i = 0;
        foreach (var item in element.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String) return $"{name}[{i}]: expected a string, got {item.ValueKind}";
            values.Add(item.GetString()!);
            i++;
        }
        return null;
    }

    private static IResult Error(int status, string message) => Results.Json(new { error = message }, statusCode: status);
}
