using Grpc.Core;
using Grpc.Core.Interceptors;

namespace WeakTeacher.GrpcHost.Security;

/// <summary>
/// Every call except health checking needs `authorization: Bearer &lt;key&gt;` when keys are required; streaming calls
/// also take a slot of a bounded pool of concurrent streams. Key-exempt (health) streams have a pool of their own, so no
/// caller without a key can use up the slots of callers with one.
/// </summary>
internal sealed class AuthInterceptor(ApiKeys keys, StreamSlots slots) : Interceptor
{
    private static bool KeyExempt(ServerCallContext context) => context.Method.StartsWith("/grpc.health.v1.Health/", StringComparison.Ordinal);

    private void Authenticate(ServerCallContext context)
    {
        if (KeyExempt(context)) return;
        if (keys.Refusal(context.RequestHeaders.GetValue("authorization")) is { } refusal)
            throw new RpcException(new Status(StatusCode.Unauthenticated, refusal));
    }

    private IDisposable Slot(ServerCallContext context) => KeyExempt(context) ? slots.TakeKeyExempt(context.Method) : slots.Take(context.Method);

    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context,
        UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        return continuation(request, context);
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
        ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        using var slot = Slot(context);
        return await continuation(requestStream, context);
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        using var slot = Slot(context);
        await continuation(request, responseStream, context);
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
        IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        using var slot = Slot(context);
        await continuation(requestStream, responseStream, context);
    }
}

/// <summary>Fixed pools of concurrent streaming calls (keyed, key-exempt); one beyond its pool is refused at once rather than queued.</summary>
internal sealed class StreamSlots(ServiceOptions options)
{
    private readonly SemaphoreSlim pool = new(options.Limits.MaxConcurrentStreams, options.Limits.MaxConcurrentStreams);
    private readonly SemaphoreSlim keyExempt = new(options.Limits.MaxKeyExemptStreams, options.Limits.MaxKeyExemptStreams);

    public int InUse => options.Limits.MaxConcurrentStreams - pool.CurrentCount;

    public IDisposable Take(string method) => Take(pool, method, options.Limits.MaxConcurrentStreams, "Limits:MaxConcurrentStreams");

    public IDisposable TakeKeyExempt(string method) => Take(keyExempt, method, options.Limits.MaxKeyExemptStreams, "Limits:MaxKeyExemptStreams");

    private static IDisposable Take(SemaphoreSlim from, string method, int limit, string option)
    {
        if (!from.Wait(0))
            throw new RpcException(new Status(StatusCode.ResourceExhausted, $"{method}: too many concurrent streams (limit {limit}, {option})"));
        return new Release(from);
    }

    private sealed class Release(SemaphoreSlim pool) : IDisposable
    {
        private int released;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref released, 1) == 0) pool.Release();
        }
    }
}
