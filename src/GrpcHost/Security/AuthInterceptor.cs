using Grpc.Core;
using Grpc.Core.Interceptors;

namespace WeakTeacher.GrpcHost.Security;

/// <summary>
/// Every call except health checking needs `authorization: Bearer &lt;key&gt;` when keys are required; streaming calls
/// also take a slot of the bounded pool of concurrent streams.
/// </summary>
internal sealed class AuthInterceptor(ApiKeys keys, StreamSlots slots) : Interceptor
{
    private void Authenticate(ServerCallContext context)
    {
        if (context.Method.StartsWith("/grpc.health.v1.Health/", StringComparison.Ordinal)) return;
        if (keys.Refusal(context.RequestHeaders.GetValue("authorization")) is { } refusal)
            throw new RpcException(new Status(StatusCode.Unauthenticated, refusal));
    }

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
        using var slot = slots.Take(context.Method);
        return await continuation(requestStream, context);
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        using var slot = slots.Take(context.Method);
        await continuation(request, responseStream, context);
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
        IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        using var slot = slots.Take(context.Method);
        await continuation(requestStream, responseStream, context);
    }
}

/// <summary>A fixed pool of concurrent streaming calls; one beyond it is refused at once rather than queued.</summary>
internal sealed class StreamSlots(ServiceOptions options)
{
    private readonly SemaphoreSlim pool = new(options.Limits.MaxConcurrentStreams, options.Limits.MaxConcurrentStreams);

    public int InUse => options.Limits.MaxConcurrentStreams - pool.CurrentCount;

    public IDisposable Take(string method)
    {
        if (!pool.Wait(0))
            throw new RpcException(new Status(StatusCode.ResourceExhausted,
                $"{method}: too many concurrent streams (limit {options.Limits.MaxConcurrentStreams}, Limits:MaxConcurrentStreams)"));
        return new Release(pool);
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
