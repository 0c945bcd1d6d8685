using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace WeakTeacher.Client;

/// <summary>
/// A channel to the host or to several replicas of it. <c>hosts</c> is one address (<c>http://h:50051</c>), several
/// separated by commas (a static resolver, round_robin over them), or <c>dns:///name:port</c> (the DNS resolver,
/// round_robin over every address the name has: a Kubernetes headless service). Every call but LabelStream has a retry
/// policy for UNAVAILABLE (a replica gone or not yet up), which grpc-dotnet applies until the call is committed (its
/// first response); a LabelStream that loses its replica, before or after its first response, is resumed by
/// <see cref="ReplicatedLabelStream"/>.
/// </summary>
public static class HostChannel
{
    /// <summary>How long the DNS resolver keeps a name's addresses before asking again (new pods join within it).</summary>
    public static readonly TimeSpan DnsRefresh = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Retried on UNAVAILABLE only: the job starts carry an idempotency key (request_id), so a start that reached a host
    /// which died before answering cannot become two jobs on a shared job store; other codes are answers, not faults.
    /// </summary>
    public static RetryPolicy RetryPolicy => new()
    {
        MaxAttempts = 5,
        InitialBackoff = TimeSpan.FromMilliseconds(200),
        MaxBackoff = TimeSpan.FromSeconds(3),
        BackoffMultiplier = 2,
        RetryableStatusCodes = { StatusCode.Unavailable },
    };

    /// <param name="hosts">One address, several separated by commas, or dns:///name:port.</param>
    /// <param name="configure">Further options (message sizes, credentials for TLS with dns:///), applied last.</param>
    public static GrpcChannel Create(string hosts, Action<GrpcChannelOptions>? configure = null)
    {
        var entries = hosts.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (entries.Length == 0) throw new ArgumentException("host: no address given (http://host:port, several separated by commas, or dns:///name:port)");
        var options = new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler
            {
                // One connection per replica would cap a replica at its HTTP/2 stream limit; more may open.
                EnableMultipleHttp2Connections = true,
                // A replica whose node vanished sends no reset: keep-alive pings find it so its calls fail over.
                KeepAlivePingDelay = TimeSpan.FromSeconds(30),
                KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
                PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
            },
        };
        string target;
        if (entries[0].StartsWith("dns:", StringComparison.OrdinalIgnoreCase))
        {
            if (entries.Length > 1) throw new ArgumentException($"host: '{entries[0]}' names every replica already; give it alone");
            if (!Uri.TryCreate(entries[0], UriKind.Absolute, out var dns) || dns.AbsolutePath.Trim('/').Length == 0)
                throw new ArgumentException($"host: '{entries[0]}' is not dns:///name:port");
            target = dns.ToString();
            // Inside a cluster the replicas are reached in plain HTTP/2 (TLS, if any, from the mesh); configure may change it.
            options.Credentials = ChannelCredentials.Insecure;
            options.ServiceProvider = Services(new DnsResolverFactory(DnsRefresh));
            options.ServiceConfig = Config(balance: true);
        }
        else
        {
            var addresses = entries.Select(Address).ToList();
            if (addresses.Select(a => a.Scheme).Distinct().Count() > 1) throw new ArgumentException("host: mixes http:// and https:// addresses");
            if (addresses.Count == 1)
            {
                target = addresses[0].ToString();
                options.ServiceConfig = Config(balance: false);
            }
            else
            {
                // The first address names the channel (its authority; with https the replicas' certificate must cover it).
                target = $"static:///{addresses[0].Authority}";
                options.Credentials = addresses[0].Scheme == Uri.UriSchemeHttps ? ChannelCredentials.SecureSsl : ChannelCredentials.Insecure;
                var balancer = addresses.Select(a => new BalancerAddress(a.Host, a.Port)).ToList();
                options.ServiceProvider = Services(new StaticResolverFactory(_ => balancer));
                options.ServiceConfig = Config(balance: true);
            }
        }
        configure?.Invoke(options);
        return GrpcChannel.ForAddress(target, options);
    }

    private static Uri Address(string entry)
    {
        if (!Uri.TryCreate(entry, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps) ||
            uri.Host.Length == 0 || uri.AbsolutePath != "/")
            throw new ArgumentException($"host: '{entry}' is not http://host:port or https://host:port");
        return uri;
    }

    private static ServiceConfig Config(bool balance)
    {
        var config = new ServiceConfig
        {
            MethodConfigs =
            {
                new MethodConfig { Names = { MethodName.Default }, RetryPolicy = RetryPolicy },
                // LabelStream without grpc-dotnet's retries: ReplicatedLabelStream re-sends a lost stream's unanswered
                // pairs itself, and a retried LabelStream hung in ReplicaTests once a replica was killed (a dump showed
                // the retry's new attempt waiting for response headers while its request body waited for messages the
                // caller had already written and completed): one resume mechanism, not two
                new MethodConfig { Names = { new MethodName { Service = WeakTeacher.Grpc.V1.LabelingService.Descriptor.FullName, Method = "LabelStream" } } },
            },
        };
        if (balance) config.LoadBalancingConfigs.Add(new RoundRobinConfig());
        return config;
    }

    private static ServiceProvider Services(ResolverFactory resolver)
    {
        var services = new ServiceCollection();
        services.AddSingleton(resolver);
        return services.BuildServiceProvider();
    }
}
