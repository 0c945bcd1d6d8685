using Grpc.AspNetCore.HealthChecks;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using OpenTelemetry.Metrics;
using WeakTeacher.GrpcHost;
using WeakTeacher.GrpcHost.Jobs;
using WeakTeacher.GrpcHost.Labelling;
using WeakTeacher.GrpcHost.Observability;
using WeakTeacher.GrpcHost.Security;
using WeakTeacher.GrpcHost.Services;
using WeakTeacher.GrpcHost.Storage;
using WeakTeacher.GrpcHost.Validation;

// `--default-task` is a switch; the configuration system wants a value.
args = args.Select(a => a == "--default-task" ? "--DefaultTask=true" : a).ToArray();

// The content root is the host's own folder, so appsettings.json (logging filters, limits) loads however and from
// wherever the host is started (`./build.sh serve` runs it from the repository root).
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
// WT_* environment variables (WT_DataDir, WT_Limits__QueueCapacity), then the command line again so it wins.
builder.Configuration.AddEnvironmentVariables("WT_");
builder.Configuration.AddCommandLine(args);

var options = new ServiceOptions();
IReadOnlyList<string> listenUrls;
Uri? metricsUrl, httpUrl;
bool keysRequired;
Store store;
ApiKeys apiKeys;
DataLayout layout;
// A setting the host cannot use ends the start with one line naming it and exit code 2, not an abort with a trace.
try
{
    try { builder.Configuration.Bind(options); }
    catch (InvalidOperationException e) { throw new ConfigurationException(e.Message); }
    if (options.Devices.Length == 0) options.Devices = ["cpu"];
    options.JobStore.Check();
    // `keys hash|add|list|revoke`: with the host's configuration, so a key lands in the data folder the host reads.
    if (args.Length >= 1 && args[0] == "keys") return Keys.Run(args, options);
    listenUrls = ListenUrls(builder.Configuration);
    metricsUrl = string.IsNullOrWhiteSpace(options.MetricsUrl) ? null : new Uri(options.MetricsUrl);
    httpUrl = string.IsNullOrWhiteSpace(options.HttpUrl) ? null : new Uri(options.HttpUrl);
    // The HTTP/1.1 endpoints (metrics, /get_reward) next to the gRPC ones.
    string[] http1Urls = [.. new[] { options.MetricsUrl, options.HttpUrl }.Where(u => !string.IsNullOrWhiteSpace(u)).Select(u => u!)];
    keysRequired = ApiKeys.ResolveRequired(options.Auth.Require, [.. listenUrls, .. http1Urls]);
    if (http1Urls.Length > 0 && builder.Configuration.GetSection("Kestrel:Endpoints").GetChildren().Any())
        throw new ConfigurationException("MetricsUrl/HttpUrl: with Kestrel:Endpoints configured, add the HTTP/1.1 endpoints there (Protocols: Http1)");
    if (http1Urls.Length > 0) builder.WebHost.UseUrls([.. listenUrls, .. http1Urls]);
    layout = new DataLayout(options.DataDir);
    store = Store.Open(options, layout);
    apiKeys = new ApiKeys(options, store, keysRequired);
}
catch (Exception e) when (e is ConfigurationException or UriFormatException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}

builder.WebHost.ConfigureKestrel(kestrel =>
{
    // gRPC needs HTTP/2; over cleartext Kestrel cannot negotiate it next to HTTP/1.1, so endpoints are HTTP/2 only,
    // except the optional metrics and HTTP endpoints (Prometheus and OpenRLHF speak HTTP/1.1).
    kestrel.ConfigureEndpointDefaults(endpoint => endpoint.Protocols =
        (metricsUrl is not null && endpoint.IPEndPoint?.Port == metricsUrl.Port) || (httpUrl is not null && endpoint.IPEndPoint?.Port == httpUrl.Port)
            ? HttpProtocols.Http1 : HttpProtocols.Http2);
    kestrel.Limits.Http2.MaxStreamsPerConnection = options.Limits.MaxStreamsPerConnection;
    kestrel.Limits.MaxRequestBodySize = null; // uploads are streams of bounded messages
});
builder.Logging.AddJsonConsole(o => { o.IncludeScopes = true; o.TimestampFormat = "O"; });

builder.Services.AddSingleton(options);
builder.Services.AddSingleton(layout);
builder.Services.AddSingleton(store);
builder.Services.AddSingleton<Catalog>();
builder.Services.AddSingleton(apiKeys);
builder.Services.AddSingleton<StreamSlots>();
builder.Services.AddSingleton<HostMetrics>();
builder.Services.AddSingleton<JobManager>();
builder.Services.AddSingleton<StageRunner>();
builder.Services.AddSingleton<LabelBatcher>();
builder.Services.AddHostedService(sp => sp.GetRequiredService<LabelBatcher>());
foreach (var device in options.Devices)
    builder.Services.AddSingleton<IHostedService>(sp => ActivatorUtilities.CreateInstance<JobWorker>(sp, device));

builder.Services.AddGrpc(o =>
{
    o.MaxReceiveMessageSize = options.Limits.MaxMessageBytes;
    o.MaxSendMessageSize = options.Limits.MaxMessageBytes;
    o.EnableDetailedErrors = false;
    o.Interceptors.Add<AuthInterceptor>();
}).AddJsonTranscoding(); // HTTP/JSON from the protos' google.api.http annotations, on the HTTP/1.1 endpoint (HttpUrl)
builder.Services.AddGrpcSwagger();
builder.Services.AddSwaggerGen(c => c.SwaggerDoc("v1", new() { Title = "WeakTeacher (weakteacher.v1, HTTP/JSON)", Version = "v1" }));
builder.Services.AddGrpcReflection();
builder.Services.AddGrpcHealthChecks()
    .AddCheck("database", () =>
    {
        try { store.Ping(); return HealthCheckResult.Healthy(); }
        catch (Exception e) { return HealthCheckResult.Unhealthy("database unreachable", e); }
    });
builder.Services.Configure<GrpcHealthChecksOptions>(o => o.Services.Map("", _ => true));
builder.Services.AddOpenTelemetry().WithMetrics(m => m
    .AddMeter(HostMetrics.MeterName)
    .AddMeter("Microsoft.AspNetCore.Hosting", "Microsoft.AspNetCore.Server.Kestrel")
    .AddPrometheusExporter());

// Last, after every AddGrpc* (each adds grpc-dotnet's default binder again): unparseable requests are INVALID_ARGUMENT.
RequestParsing.Register(builder.Services);
var app = builder.Build();
app.UseSwagger(); // the OpenAPI document of the HTTP/JSON face: /swagger/v1/swagger.json
var logger = app.Services.GetRequiredService<ILogger<Program>>();
// The kernels' once-per-process warnings (a float16 checkpoint on the reference path) as log events, not console lines.
var kernelLogger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("WeakTeacher.Kernels");
WeakTeacher.CudaKernels.KernelSettings.FallbackReporter = message => kernelLogger.LogWarning("{Message}", message);
// With a shared store other hosts may be writing under tmp/ now: only what is too old to be in flight goes.
layout.CleanTemp(store.Shared ? TimeSpan.FromDays(1) : TimeSpan.Zero);
if (keysRequired && !apiKeys.AnyKeys)
{
    logger.LogCritical("API keys are required (Auth:Require={Require}, listening on {Urls}) but none is configured; " +
        "add one with `keys add <name> --DataDir {DataDir}` or set Auth:ApiKeyHashes", options.Auth.Require, string.Join(", ", listenUrls), layout.Root);
    return 2;
}
logger.LogInformation("Data folder {DataDir}; devices {Devices}; API keys {Required}; records in {Store} (host id {HostId})",
    layout.Root, string.Join(", ", options.Devices), ApiKeys.Describe(keysRequired, options.Auth.Require), store.Description,
    options.JobStore.ResolvedHostId);

var metrics = app.Services.GetRequiredService<HostMetrics>();
var jobs = app.Services.GetRequiredService<JobManager>();
metrics.ObserveQueue(() => jobs.QueueLength, () => jobs.RunningCount);

if (options.DefaultTask)
    await DefaultTaskSetup.RunAsync(options, builder.Configuration["DefaultTaskSize"] ?? "Demo", layout,
        app.Services.GetRequiredService<Catalog>(), store, logger, app.Lifetime.ApplicationStopping);

int waiting = jobs.Recover();
if (waiting > 0) logger.LogInformation("{Count} jobs wait to run (queued, or interrupted by a stop: those resume from their checkpoints)", waiting);

app.MapGrpcService<JobsServiceImpl>();
app.MapGrpcService<DatasetsServiceImpl>();
app.MapGrpcService<ModelsServiceImpl>();
app.MapGrpcService<LabelingServiceImpl>();
app.MapGrpcHealthChecksService();
app.MapGrpcReflectionService();
app.MapPrometheusScrapingEndpoint("/metrics");
RemoteRewardEndpoint.Map(app);
app.MapGet("/", () => "WeakTeacher gRPC host: use a gRPC client (package weakteacher.v1); metrics at /metrics");

await app.RunAsync();
return 0;

static IReadOnlyList<string> ListenUrls(IConfiguration configuration)
{
    var urls = new List<string>();
    var fromUrls = configuration["urls"] ?? configuration["ASPNETCORE_URLS"];
    if (!string.IsNullOrWhiteSpace(fromUrls)) urls.AddRange(fromUrls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    foreach (var endpoint in configuration.GetSection("Kestrel:Endpoints").GetChildren())
        if (endpoint["Url"] is { Length: > 0 } url) urls.Add(url);
    if (configuration["http_ports"] is { Length: > 0 } || configuration["https_ports"] is { Length: > 0 })
        urls.Add("http://*"); // port-only settings listen on every interface
    if (urls.Count == 0) urls.Add("http://localhost:5000");
    return urls;
}

/// <summary>Made public for WebApplicationFactory-style hosting and logging categories.</summary>
public partial class Program;
