namespace WeakTeacher.GrpcHost;

/// <summary>
/// The host's settings, bound from configuration (appsettings.json, WT_* environment variables such as
/// WT_DataDir or WT_Limits__QueueCapacity, then the command line: --DataDir, --Auth:Require ...).
/// </summary>
public sealed class ServiceOptions
{
    /// <summary>Where the database, datasets, models and job work folders live.</summary>
    public string DataDir { get; set; } = "data";
    /// <summary>The only server folder ImportDataset/ImportModel read from (null = imports disabled).</summary>
    public string? ImportDir { get; set; }
    /// <summary>The devices jobs run on, one worker each ("cpu", "cuda", "cuda:1"); none listed = cpu.</summary>
    public string[] Devices { get; set; } = [];
    /// <summary>
    /// An extra plain HTTP/1.1 listen URL for the Prometheus scrape endpoint (/metrics), e.g. http://127.0.0.1:9464.
    /// gRPC endpoints speak HTTP/2 only (cleartext h2c cannot share a port with HTTP/1.1), so without this /metrics is
    /// only reachable over HTTP/2 on the gRPC port.
    /// </summary>
    public string? MetricsUrl { get; set; }
    /// <summary>
    /// An extra plain HTTP/1.1 listen URL for the HTTP endpoints: the HTTP/JSON API (JSON transcoding), its OpenAPI
    /// document (/swagger/v1/swagger.json), OpenRLHF's remote reward (POST /get_reward) and /metrics, e.g. http://127.0.0.1:8080 (API keys apply as on the gRPC endpoints).
    /// </summary>
    public string? HttpUrl { get; set; }
    /// <summary>Prepare the embedded default task (base models + datasets) into the data folder at start-up.</summary>
    public bool DefaultTask { get; set; }
    public LimitOptions Limits { get; set; } = new();
    public AuthOptions Auth { get; set; } = new();
    public LabelingOptions Labeling { get; set; } = new();
    public JobStoreOptions JobStore { get; set; } = new();
}

/// <summary>
/// Where job (and dataset, model, key) records live. Unset: SQLite in the data folder, for one host. A PostgreSQL
/// connection string: records shared by every host given the same string and the same data folder (a shared volume),
/// each job run by one host at a time under a lease.
/// </summary>
public sealed class JobStoreOptions
{
    /// <summary>Npgsql connection string, e.g. "Host=db;Port=5432;Database=wt;Username=wt;Password=..." (WT_JobStore__PostgreSql).</summary>
    public string? PostgreSql { get; set; }
    /// <summary>This host's name in lease records; unset = machine name and process id. A host restarted under the same
    /// id takes its jobs back at once instead of waiting for their leases to lapse.</summary>
    public string? HostId { get; set; }
    /// <summary>How long a job stays a host's without renewal (renewed every third of it); after that another host resumes it.</summary>
    public double LeaseSeconds { get; set; } = 30;
    /// <summary>How often an idle worker looks for jobs queued by other hosts, and a watch for changes made by them.</summary>
    public int PollMilliseconds { get; set; } = 1000;

    public TimeSpan Lease => TimeSpan.FromSeconds(LeaseSeconds);
    public TimeSpan Poll => TimeSpan.FromMilliseconds(PollMilliseconds);
    public string ResolvedHostId => string.IsNullOrWhiteSpace(HostId) ? $"{Environment.MachineName}-{Environment.ProcessId}" : HostId;

    public void Check()
    {
        if (!(LeaseSeconds >= 1)) throw new ConfigurationException($"JobStore:LeaseSeconds: {LeaseSeconds} must be at least 1");
        if (PollMilliseconds < 10) throw new ConfigurationException($"JobStore:PollMilliseconds: {PollMilliseconds} must be at least 10");
    }
}

public sealed class LimitOptions
{
    /// <summary>Largest single gRPC message either way (uploads are streamed in chunks below this).</summary>
    public int MaxMessageBytes { get; set; } = 4 * 1024 * 1024;
    /// <summary>Streaming calls (uploads, downloads, watches, label streams) open at once; more get RESOURCE_EXHAUSTED.</summary>
    public int MaxConcurrentStreams { get; set; } = 64;
    /// <summary>
    /// Key-exempt streams (health Watch) open at once, a pool apart from <see cref="MaxConcurrentStreams"/> so callers
    /// without a key cannot take the slots of callers with one; more get RESOURCE_EXHAUSTED.
    /// </summary>
    public int MaxKeyExemptStreams { get; set; } = 16;
    /// <summary>HTTP/2 streams per connection (Kestrel).</summary>
    public int MaxStreamsPerConnection { get; set; } = 100;
    /// <summary>Jobs waiting to run; a start beyond it gets RESOURCE_EXHAUSTED.</summary>
    public int QueueCapacity { get; set; } = 64;
    /// <summary>Largest dataset upload, as sent (compressed, for gzip).</summary>
    public long MaxDatasetBytes { get; set; } = 8L * 1024 * 1024 * 1024;
    /// <summary>Largest dataset once decompressed (a gzip bomb is refused when its output passes this).</summary>
    public long MaxDecompressedDatasetBytes { get; set; } = 32L * 1024 * 1024 * 1024;
    /// <summary>Longest row (JSON line) of a dataset, in characters; rows are read through a buffer of this bound.</summary>
    public int MaxRowLength { get; set; } = 16 * 1024 * 1024;
    /// <summary>Largest model upload (all files).</summary>
    public long MaxModelBytes { get; set; } = 64L * 1024 * 1024 * 1024;
}

public sealed class AuthOptions
{
    /// <summary>"auto" (required unless every listen address is loopback), "true" or "false".</summary>
    public string Require { get; set; } = "auto";
    /// <summary>SHA-256 (lower-case hex) of accepted API keys; more are stored in the database (`keys add`).</summary>
    public string[] ApiKeyHashes { get; set; } = [];
}

public sealed class LabelingOptions
{
    /// <summary>Pairs per device batch, gathered from all open streams.</summary>
    public int MaxBatchSize { get; set; } = 16;
    /// <summary>How long the first pair of a batch waits for more.</summary>
    public int MaxWaitMilliseconds { get; set; } = 20;
    public int MaxLength { get; set; } = WeakTeacher.Engine.Data.TokenizationOptions.DefaultMaxLength;
    public int MaxPromptLength { get; set; } = WeakTeacher.Engine.Data.TokenizationOptions.DefaultMaxPromptLength;
    public string Template { get; set; } = "paper";
    /// <summary>The teacher POST /get_reward scores with when the URL names none (?teacher_model_id=).</summary>
    public string? RewardTeacherModelId { get; set; }
}

/// <summary>A setting the host cannot use; the host prints its message (naming the setting) and exits with code 2.</summary>
public sealed class ConfigurationException(string message) : Exception(message);
