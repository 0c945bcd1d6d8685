using System.Reflection;
using Google.Protobuf;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace WeakTeacher.GrpcHost.Validation;

internal static class RequestParsing
{
    /// <summary>Replaces grpc-dotnet's default method provider (the JSON transcoding provider stays as it is); call after every AddGrpc* call, since each adds it again.</summary>
    public static void Register(IServiceCollection services)
    {
        var binder = services.Where(d => d.ServiceType == typeof(IServiceMethodProvider<>) &&
            d.ImplementationType?.Name.StartsWith("BinderServiceMethodProvider", StringComparison.Ordinal) == true).ToList();
        foreach (var d in binder) services.Remove(d);
        if (binder.Count == 0) throw new InvalidOperationException("grpc-dotnet's BinderServiceMethodProvider registration was not found; call after AddGrpc and every AddGrpc* extension");
        services.TryAddEnumerable(ServiceDescriptor.Singleton(typeof(IServiceMethodProvider<>), typeof(RequestParsingMethodProvider<>)));
    }
}

/// <summary>
/// Binds every gRPC service as grpc-dotnet's own binder does, except that a request message that does not parse
/// (truncated bytes, wrong wire types, invalid UTF-8 in a string field) is INVALID_ARGUMENT naming the message type.
/// grpc-dotnet deserializes unary and server-streaming requests before any interceptor runs and reports a
/// deserializer's exception as UNKNOWN, so the place to catch it is the request marshaller itself.
/// </summary>
internal sealed class RequestParsingMethodProvider<TService> : IServiceMethodProvider<TService> where TService : class
{
    public void OnServiceMethodDiscovery(ServiceMethodProviderContext<TService> context)
    {
        var bind = BindServiceMethod();
        if (bind is null) return;
        bind.Invoke(null, [new Binder(context), null]);
    }

    /// <summary>The generated static BindService(ServiceBinderBase, TServiceBase) named by [BindServiceMethod] on the service's base.</summary>
    private static MethodInfo? BindServiceMethod()
    {
        for (var type = typeof(TService); type is not null; type = type.BaseType)
        {
            if (type.GetCustomAttribute<BindServiceMethodAttribute>(inherit: false) is not { } attribute) continue;
            return attribute.BindType.GetMethods(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static)
                .FirstOrDefault(m => m.Name == attribute.BindMethodName && m.GetParameters() is [var first, _] && first.ParameterType == typeof(ServiceBinderBase));
        }
        return null;
    }

    private sealed class Binder(ServiceMethodProviderContext<TService> context) : ServiceBinderBase
    {
        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, UnaryServerMethod<TRequest, TResponse>? handler)
        {
            var (invoker, metadata) = Handler<global::Grpc.AspNetCore.Server.Model.UnaryServerMethod<TService, TRequest, TResponse>>(method.Name, typeof(TRequest), typeof(ServerCallContext));
            context.AddUnaryMethod(Checked(method), metadata, invoker);
        }

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ClientStreamingServerMethod<TRequest, TResponse>? handler)
        {
            var (invoker, metadata) = Handler<global::Grpc.AspNetCore.Server.Model.ClientStreamingServerMethod<TService, TRequest, TResponse>>(method.Name,
                typeof(IAsyncStreamReader<TRequest>), typeof(ServerCallContext));
            context.AddClientStreamingMethod(Checked(method), metadata, invoker);
        }

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ServerStreamingServerMethod<TRequest, TResponse>? handler)
        {
            var (invoker, metadata) = Handler<global::Grpc.AspNetCore.Server.Model.ServerStreamingServerMethod<TService, TRequest, TResponse>>(method.Name,
                typeof(TRequest), typeof(IServerStreamWriter<TResponse>), typeof(ServerCallContext));
            context.AddServerStreamingMethod(Checked(method), metadata, invoker);
        }

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, DuplexStreamingServerMethod<TRequest, TResponse>? handler)
        {
            var (invoker, metadata) = Handler<global::Grpc.AspNetCore.Server.Model.DuplexStreamingServerMethod<TService, TRequest, TResponse>>(method.Name,
                typeof(IAsyncStreamReader<TRequest>), typeof(IServerStreamWriter<TResponse>), typeof(ServerCallContext));
            context.AddDuplexStreamingMethod(Checked(method), metadata, invoker);
        }

        /// <summary>The service's method as an open-instance delegate, with the attributes grpc-dotnet puts on its endpoint.</summary>
        private static (TDelegate Invoker, List<object> Metadata) Handler<TDelegate>(string name, params Type[] parameters) where TDelegate : Delegate
        {
            var method = typeof(TService).GetMethod(name, parameters)
                ?? throw new InvalidOperationException($"{typeof(TService).Name} has no method {name} for its gRPC method");
            var metadata = new List<object>();
            metadata.AddRange(typeof(TService).GetCustomAttributes(inherit: true));
            metadata.AddRange(method.GetCustomAttributes(inherit: true));
            metadata.Add(new Microsoft.AspNetCore.Routing.HttpMethodMetadata(["POST"], acceptCorsPreflight: true));
            return ((TDelegate)Delegate.CreateDelegate(typeof(TDelegate), method), metadata);
        }

        private static Method<TRequest, TResponse> Checked<TRequest, TResponse>(Method<TRequest, TResponse> method) where TRequest : class where TResponse : class
        {
            var inner = method.RequestMarshaller;
            var marshaller = Marshallers.Create<TRequest>((message, context) => inner.ContextualSerializer(message, context), context =>
            {
                try { return inner.ContextualDeserializer(context); }
                // InvalidProtocolBufferException for bad wire data; DecoderFallbackException (an ArgumentException) for a
                // string that is not UTF-8. Either way it is the bytes the client sent.
                catch (Exception e) when (e is InvalidProtocolBufferException or ArgumentException)
                {
                    throw new RpcException(new Status(StatusCode.InvalidArgument,
                        $"request: the bytes are not a valid {typeof(TRequest).Name} message ({e.Message})"));
                }
            });
            return new Method<TRequest, TResponse>(method.Type, method.ServiceName, method.Name, marshaller, method.ResponseMarshaller);
        }
    }
}
