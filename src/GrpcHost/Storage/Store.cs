using System.Data.Common;
using Microsoft.Data.Sqlite;
using Npgsql;
using WeakTeacher.Engine.Runtime;
using JobState = WeakTeacher.Grpc.V1.JobState;

namespace WeakTeacher.GrpcHost.Storage;

internal sealed record DatasetRecord(string Id, string Name, int Format, int Encoding, long Rows, long SizeBytes,
    string Sha256, DateTimeOffset CreatedAt, string Source, string FileName);

internal sealed record ModelRecord(string Id, string Name, string ModelType, long SizeBytes, DateTimeOffset CreatedAt,
    string Source, string FilesJson);

internal sealed record JobRecord(string Id, int Kind, int State, string ConfigJson, string? ProgressJson,
    string ArtifactsJson, string MetricsJson, string Error, string ErrorCode, DateTimeOffset CreatedAt,
    DateTimeOffset? StartedAt, DateTimeOffset? FinishedAt, int Attempts, string? ParentId = null, int ShardIndex = 0,
    int Children = 0, int WaitingChildren = 0);

/// <summary>An API key as stored: its SHA-256, never the key; <paramref name="Prefix"/> is the key's first characters.</summary>
internal sealed record ApiKeyRecord(string Sha256, string Name, DateTimeOffset CreatedAt, string Prefix);

/// <summary>What a lease renewal found: still held, held with a cancel requested by a client, or lost (the job is
/// another host's now, or it ended).</summary>
internal enum LeaseState { Held, CancelRequested, Lost }

/// <summary>A job this host has claimed: its record (attempts counted) and whether a client asked to cancel it meanwhile.</summary>
internal sealed record JobClaim(JobRecord Job, bool CancelRequested);

/// <summary>
/// Job, dataset, model and API-key records: in SQLite (WAL) under the data folder, the embedded default for one host, or
/// in PostgreSQL (JobStore:PostgreSql), shared by several hosts over one data folder. One class for both: the SQL is
/// written to run on either, and the few differences (schema types, the database clock, row locking) are the
/// <see cref="Dialect"/>'s. Every write is one statement or one transaction, so a crash leaves either the old or the
/// new record. Jobs are claimed under a lease the running host renews; a job whose lease lapsed (its host died) is
/// claimed again by any host.
/// </summary>
internal sealed class Store
{
    private sealed record Dialect(
        string Name,
        string SequenceColumn,
        // milliseconds since the Unix epoch on the database's clock, so hosts with skewed clocks agree on leases
        string NowMs,
        // after the claim's inner SELECT: lock the row, skipping rows other hosts are claiming
        string LockRow,
        string ColumnsOf);

    private static readonly Dialect SqliteDialect = new("SQLite", "seq INTEGER PRIMARY KEY AUTOINCREMENT",
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)", "",
        "SELECT name FROM pragma_table_info(@table)");

    private static readonly Dialect PostgreSqlDialect = new("PostgreSQL", "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)", "FOR UPDATE SKIP LOCKED",
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = @table");

    private readonly Func<DbConnection> open;
    private readonly Dialect dialect;

    /// <summary>True when the records are in PostgreSQL, where other hosts may share them.</summary>
    public bool Shared => dialect == PostgreSqlDialect;
    /// <summary>Where the records are, for the log (no password).</summary>
    public string Description { get; }

    /// <summary>The store the configuration names: PostgreSQL when JobStore:PostgreSql is set, else SQLite in the data folder.</summary>
    public static Store Open(ServiceOptions options, DataLayout layout) =>
        string.IsNullOrWhiteSpace(options.JobStore.PostgreSql) ? new Store(layout.DatabasePath) : PostgreSql(options.JobStore.PostgreSql, options.JobStore.Lease);

    public Store(string databasePath)
    {
        var connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = databasePath,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Cache = SqliteCacheMode.Private,
            Pooling = true,
            DefaultTimeout = 30,
        }.ToString();
        dialect = SqliteDialect;
        Description = $"SQLite {databasePath}";
        open = () =>
        {
            var connection = new SqliteConnection(connectionString);
            connection.Open();
            // WAL with NORMAL sync: a committed transaction survives a process kill (only an OS crash can lose the tail).
            Execute(connection, "PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;");
            return connection;
        };
        using (var connection = Open()) Execute(connection, "PRAGMA journal_mode=WAL;");
        CreateSchema();
    }

    private Store(NpgsqlDataSource dataSource, string description)
    {
        dialect = PostgreSqlDialect;
        Description = description;
        open = dataSource.OpenConnection;
        CreateSchema();
    }

    private static Store PostgreSql(string connectionString, TimeSpan lease)
    {
        NpgsqlConnectionStringBuilder builder;
        try { builder = new NpgsqlConnectionStringBuilder(connectionString); }
        catch (ArgumentException e) { throw new ConfigurationException($"JobStore:PostgreSql: not a valid connection string ({e.Message})"); }
        var description = $"PostgreSQL {builder.Host}:{builder.Port}/{builder.Database}";
        // A host that stalls inside a transaction (frozen VM, GC pause, lost network) keeps its row locks: the job it
        // holds stays locked past its lease, and other hosts' claims (FOR UPDATE SKIP LOCKED) skip it for as long as
        // the stall lasts. The server ends such a session after a third of the lease (our transactions are a few
        // statements sent back to back), so the lock is gone before the lease lapses. The setting's own value wins.
        if (builder.Options?.Contains("idle_in_transaction_session_timeout", StringComparison.Ordinal) != true)
            builder.Options = $"{builder.Options} -c idle_in_transaction_session_timeout={IdleInTransactionTimeout(lease).TotalMilliseconds:F0}".Trim();
        try { return new Store(NpgsqlDataSource.Create(builder), description); }
        catch (Exception e) when (e is NpgsqlException or System.Net.Sockets.SocketException or TimeoutException)
        {
            throw new ConfigurationException($"JobStore:PostgreSql: cannot use {description}: {e.Message.Split('\n')[0]}");
        }
    }

    /// <summary>How long a PostgreSQL session of this host may sit idle inside a transaction: a third of the lease, at least 1 s.</summary>
    private static TimeSpan IdleInTransactionTimeout(TimeSpan lease) => TimeSpan.FromMilliseconds(Math.Max(1000, Math.Round(lease.TotalMilliseconds / 3)));

    private void CreateSchema()
    {
        using var connection = Open();
        using var transaction = connection.BeginTransaction();
        // Hosts starting together create the schema one at a time.
        if (Shared) Execute(connection, "SELECT pg_advisory_xact_lock(7314159265)", transaction);
        Execute(connection, $"""
            CREATE TABLE IF NOT EXISTS datasets(
              id TEXT PRIMARY KEY, name TEXT NOT NULL, format INTEGER NOT NULL, encoding INTEGER NOT NULL,
              rows BIGINT NOT NULL, size_bytes BIGINT NOT NULL, sha256 TEXT NOT NULL, created_at TEXT NOT NULL,
              source TEXT NOT NULL, file_name TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS models(
              id TEXT PRIMARY KEY, name TEXT NOT NULL, model_type TEXT NOT NULL, size_bytes BIGINT NOT NULL,
              created_at TEXT NOT NULL, source TEXT NOT NULL, files_json TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS jobs(
              {dialect.SequenceColumn}, id TEXT NOT NULL UNIQUE, kind INTEGER NOT NULL, state INTEGER NOT NULL,
              config_json TEXT NOT NULL, progress_json TEXT, artifacts_json TEXT NOT NULL DEFAULT '[]',
              metrics_json TEXT NOT NULL DEFAULT '{"{}"}', error TEXT NOT NULL DEFAULT '', error_code TEXT NOT NULL DEFAULT '',
              created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, attempts INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE IF NOT EXISTS api_keys(
              sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL);
            -- One row per time a host took a job: who, from when, its lease as last renewed, and how it ended
            -- (empty while running or when the host died), so that "never two hosts at once" can be checked.
            CREATE TABLE IF NOT EXISTS job_attempts(
              job_id TEXT NOT NULL, attempt INTEGER NOT NULL, owner TEXT NOT NULL, started_ms BIGINT NOT NULL,
              lease_expires_ms BIGINT NOT NULL, ended_ms BIGINT, outcome TEXT NOT NULL DEFAULT '',
              PRIMARY KEY(job_id, attempt));
            """, transaction);
        // Columns added since the first schema, for databases made before them: idempotency keys (request_id) of job
        // starts, the lease (owner, its expiry, a client's cancel for whichever host runs it), a key's first characters.
        AddColumn(connection, transaction, "jobs", "request_id", "TEXT");
        AddColumn(connection, transaction, "jobs", "owner", "TEXT");
        AddColumn(connection, transaction, "jobs", "lease_expires_ms", "BIGINT");
        AddColumn(connection, transaction, "jobs", "cancel_requested", "INTEGER NOT NULL DEFAULT 0");
        AddColumn(connection, transaction, "api_keys", "prefix", "TEXT NOT NULL DEFAULT ''");
        // Sharded jobs: a child's parent and index; a parent's number of children and of those not yet succeeded (a
        // parent is claimable again, to merge, only when none is waiting).
        AddColumn(connection, transaction, "jobs", "parent_id", "TEXT");
        AddColumn(connection, transaction, "jobs", "shard_index", "INTEGER NOT NULL DEFAULT 0");
        AddColumn(connection, transaction, "jobs", "children", "INTEGER NOT NULL DEFAULT 0");
        AddColumn(connection, transaction, "jobs", "waiting_children", "INTEGER NOT NULL DEFAULT 0");
        Execute(connection, "CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs(request_id) WHERE request_id IS NOT NULL;", transaction);
        Execute(connection, "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);", transaction);
        Execute(connection, "CREATE INDEX IF NOT EXISTS jobs_parent ON jobs(parent_id) WHERE parent_id IS NOT NULL;", transaction);
        transaction.Commit();
    }

    private void AddColumn(DbConnection connection, DbTransaction transaction, string table, string column, string type)
    {
        using var command = Command(connection, dialect.ColumnsOf, ("@table", table));
        command.Transaction = transaction;
        using (var reader = command.ExecuteReader())
            while (reader.Read()) if (reader.GetString(0) == column) return;
        Execute(connection, $"ALTER TABLE {table} ADD COLUMN {column} {type};", transaction);
    }

    private DbConnection Open() => open();

    private static void Execute(DbConnection connection, string sql, DbTransaction? transaction = null)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.Transaction = transaction;
        command.ExecuteNonQuery();
    }

    private static DbCommand Command(DbConnection connection, string sql, params (string Name, object? Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            var parameter = command.CreateParameter();
            parameter.ParameterName = name;
            parameter.Value = value ?? DBNull.Value;
            command.Parameters.Add(parameter);
        }
        return command;
    }

    private static string Time(DateTimeOffset t) => t.UtcDateTime.ToString("O");
    private static DateTimeOffset ParseTime(string s) => DateTimeOffset.Parse(s, null, System.Globalization.DateTimeStyles.RoundtripKind);
    private static DateTimeOffset? ParseTime(object value) => value is string s ? ParseTime(s) : null;

    /// <summary>
    /// Waits for, then holds until disposed, a lock named <paramref name="name"/> across every host sharing the store:
    /// PostgreSQL's session advisory lock on a connection of its own, so a host that dies while holding it releases it
    /// with its connection. The embedded store serves one host, whose callers need no lock.
    /// </summary>
    public async Task<IAsyncDisposable> HoldLockAsync(string name, CancellationToken ct)
    {
        if (!Shared) return new Held(null);
        var connection = (NpgsqlConnection)Open();
        try
        {
            await using var command = new NpgsqlCommand("SELECT pg_advisory_lock(hashtext(@name))", connection);
            command.Parameters.AddWithValue("name", "wt:" + name);
            command.CommandTimeout = 0; // as long as the holder takes
            await command.ExecuteNonQueryAsync(ct);
            return new Held(connection);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    private sealed class Held(NpgsqlConnection? connection) : IAsyncDisposable
    {
        // closing the session releases its advisory locks (a pooled connection is reset with DISCARD ALL)
        public async ValueTask DisposeAsync()
        {
            if (connection is null) return;
            try
            {
                await using var unlock = new NpgsqlCommand("SELECT pg_advisory_unlock_all()", connection);
                await unlock.ExecuteNonQueryAsync();
            }
            catch (NpgsqlException) { } // the session is gone, and its locks with it
            finally { await connection.DisposeAsync(); }
        }
    }

    public void Ping()
    {
        using var connection = Open();
        using var command = Command(connection, "SELECT 1");
        command.ExecuteScalar();
    }

    // ---- datasets
    public void InsertDataset(DatasetRecord d)
    {
        using var connection = Open();
        Insert(connection, null, d);
    }

    private static void Insert(DbConnection connection, DbTransaction? transaction, DatasetRecord d)
    {
        using var command = Command(connection,
            "INSERT INTO datasets(id,name,format,encoding,rows,size_bytes,sha256,created_at,source,file_name) " +
            "VALUES(@id,@name,@format,@encoding,@rows,@size,@sha,@created,@source,@file) ON CONFLICT(id) DO UPDATE SET " +
            "name=excluded.name, format=excluded.format, encoding=excluded.encoding, rows=excluded.rows, size_bytes=excluded.size_bytes, " +
            "sha256=excluded.sha256, created_at=excluded.created_at, source=excluded.source, file_name=excluded.file_name",
            ("@id", d.Id), ("@name", d.Name), ("@format", d.Format), ("@encoding", d.Encoding), ("@rows", d.Rows),
            ("@size", d.SizeBytes), ("@sha", d.Sha256), ("@created", Time(d.CreatedAt)), ("@source", d.Source), ("@file", d.FileName));
        command.Transaction = transaction;
        command.ExecuteNonQuery();
    }

    public DatasetRecord? GetDataset(string id) => QueryDatasets("WHERE id=@id", ("@id", id)).FirstOrDefault();
    public IReadOnlyList<DatasetRecord> ListDatasets() => QueryDatasets("ORDER BY created_at, id");

    private List<DatasetRecord> QueryDatasets(string where, params (string, object?)[] parameters)
    {
        using var connection = Open();
        using var command = Command(connection,
            "SELECT id,name,format,encoding,rows,size_bytes,sha256,created_at,source,file_name FROM datasets " + where, parameters);
        using var reader = command.ExecuteReader();
        var list = new List<DatasetRecord>();
        while (reader.Read())
            list.Add(new DatasetRecord(reader.GetString(0), reader.GetString(1), reader.GetInt32(2), reader.GetInt32(3),
                reader.GetInt64(4), reader.GetInt64(5), reader.GetString(6), ParseTime(reader.GetString(7)), reader.GetString(8), reader.GetString(9)));
        return list;
    }

    public bool DeleteDataset(string id)
    {
        using var connection = Open();
        using var command = Command(connection, "DELETE FROM datasets WHERE id=@id", ("@id", id));
        return command.ExecuteNonQuery() > 0;
    }

    // ---- models
    public void InsertModel(ModelRecord m)
    {
        using var connection = Open();
        Insert(connection, null, m);
    }

    private static void Insert(DbConnection connection, DbTransaction? transaction, ModelRecord m)
    {
        using var command = Command(connection,
            "INSERT INTO models(id,name,model_type,size_bytes,created_at,source,files_json) VALUES(@id,@name,@type,@size,@created,@source,@files) " +
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name, model_type=excluded.model_type, size_bytes=excluded.size_bytes, " +
            "created_at=excluded.created_at, source=excluded.source, files_json=excluded.files_json",
            ("@id", m.Id), ("@name", m.Name), ("@type", m.ModelType), ("@size", m.SizeBytes), ("@created", Time(m.CreatedAt)),
            ("@source", m.Source), ("@files", m.FilesJson));
        command.Transaction = transaction;
        command.ExecuteNonQuery();
    }

    public ModelRecord? GetModel(string id) => QueryModels("WHERE id=@id", ("@id", id)).FirstOrDefault();
    public IReadOnlyList<ModelRecord> ListModels() => QueryModels("ORDER BY created_at, id");

    private List<ModelRecord> QueryModels(string where, params (string, object?)[] parameters)
    {
        using var connection = Open();
        using var command = Command(connection,
            "SELECT id,name,model_type,size_bytes,created_at,source,files_json FROM models " + where, parameters);
        using var reader = command.ExecuteReader();
        var list = new List<ModelRecord>();
        while (reader.Read())
            list.Add(new ModelRecord(reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.GetInt64(3),
                ParseTime(reader.GetString(4)), reader.GetString(5), reader.GetString(6)));
        return list;
    }

    public bool DeleteModel(string id)
    {
        using var connection = Open();
        using var command = Command(connection, "DELETE FROM models WHERE id=@id", ("@id", id));
        return command.ExecuteNonQuery() > 0;
    }

    // ---- jobs
    /// <summary>
    /// Inserts a job. With a <paramref name="requestId"/> that an earlier job already holds, inserts nothing and returns
    /// that job (the unique index decides, so two concurrent retries cannot both insert); otherwise returns null.
    /// </summary>
    public JobRecord? InsertJob(JobRecord j, string? requestId = null)
    {
        using var connection = Open();
        using var command = Command(connection,
            "INSERT INTO jobs(id,kind,state,config_json,created_at,request_id) VALUES(@id,@kind,@state,@config,@created,@request) " +
            "ON CONFLICT(request_id) WHERE request_id IS NOT NULL DO NOTHING",
            ("@id", j.Id), ("@kind", j.Kind), ("@state", j.State), ("@config", j.ConfigJson), ("@created", Time(j.CreatedAt)),
            ("@request", string.IsNullOrEmpty(requestId) ? null : requestId));
        if (command.ExecuteNonQuery() > 0) return null;
        return JobByRequestId(requestId!) ?? throw new InvalidOperationException("job insert was skipped but no job holds its request_id");
    }

    public void DeleteJob(string id)
    {
        using var connection = Open();
        using var command = Command(connection, "DELETE FROM jobs WHERE id=@id", ("@id", id));
        command.ExecuteNonQuery();
    }

    public JobRecord? GetJob(string id) => QueryJobs("WHERE id=@id", ("@id", id)).FirstOrDefault();
    public JobRecord? JobByRequestId(string requestId) => QueryJobs("WHERE request_id=@r", ("@r", requestId)).FirstOrDefault();

    public IReadOnlyList<JobRecord> ListJobs(int? state, int? kind, int limit)
    {
        var where = new List<string>();
        var parameters = new List<(string, object?)>();
        if (state is not null) { where.Add("state=@state"); parameters.Add(("@state", state)); }
        if (kind is not null) { where.Add("kind=@kind"); parameters.Add(("@kind", kind)); }
        var clause = (where.Count > 0 ? "WHERE " + string.Join(" AND ", where) : "") + " ORDER BY seq DESC LIMIT @limit";
        parameters.Add(("@limit", limit));
        return QueryJobs(clause, parameters.ToArray());
    }

    public int CountJobs(JobState state)
    {
        using var connection = Open();
        using var command = Command(connection, "SELECT COUNT(*) FROM jobs WHERE state=@s", ("@s", (int)state));
        return Convert.ToInt32(command.ExecuteScalar());
    }

    /// <summary>Queued, or running without a live lease (its host died or let go) and not waiting for its shards.</summary>
    private string Claimable =>
        $"state=@queued OR (state=@running AND waiting_children=0 AND (lease_expires_ms IS NULL OR lease_expires_ms < {dialect.NowMs}))";

    /// <summary>
    /// Takes the oldest job that is queued, or running under a lease that lapsed (its host died), for <paramref name="owner"/>:
    /// running, leased until <paramref name="lease"/> from now on the database's clock, attempts counted, an attempt
    /// row written. Hosts claiming at once each get a different job (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: one
    /// writer). Null when no job is waiting.
    /// </summary>
    public JobClaim? ClaimJob(string owner, TimeSpan lease, DateTimeOffset at)
    {
        using var connection = Open();
        using var transaction = connection.BeginTransaction();
        string id;
        int attempt;
        long leaseExpires;
        bool cancelRequested;
        using (var claim = Command(connection,
            $"UPDATE jobs SET state=@running, owner=@owner, lease_expires_ms={dialect.NowMs} + @lease, started_at=@at, " +
            "attempts=attempts+1, error='', error_code='' " +
            $"WHERE seq = (SELECT seq FROM jobs WHERE {Claimable} ORDER BY seq LIMIT 1 {dialect.LockRow}) " +
            "RETURNING id, attempts, lease_expires_ms, cancel_requested",
            ("@running", (int)JobState.Running), ("@queued", (int)JobState.Queued), ("@owner", owner),
            ("@lease", (long)lease.TotalMilliseconds), ("@at", Time(at))))
        {
            claim.Transaction = transaction;
            using var reader = claim.ExecuteReader();
            if (!reader.Read()) return null;
            (id, attempt, leaseExpires, cancelRequested) = (reader.GetString(0), reader.GetInt32(1), reader.GetInt64(2), reader.GetInt32(3) != 0);
        }
        using (var record = Command(connection,
            $"INSERT INTO job_attempts(job_id, attempt, owner, started_ms, lease_expires_ms) VALUES(@id, @attempt, @owner, {dialect.NowMs}, @lease)",
            ("@id", id), ("@attempt", attempt), ("@owner", owner), ("@lease", leaseExpires)))
        {
            record.Transaction = transaction;
            record.ExecuteNonQuery();
        }
        transaction.Commit();
        return new JobClaim(GetJob(id)!, cancelRequested);
    }

    /// <summary>Extends <paramref name="owner"/>'s lease on a running job (and its attempt's record) to <paramref name="lease"/> from now.</summary>
    public LeaseState RenewLease(string id, int attempt, string owner, TimeSpan lease)
    {
        using var connection = Open();
        using var transaction = connection.BeginTransaction();
        long leaseExpires;
        bool cancelRequested;
        using (var renew = Command(connection,
            $"UPDATE jobs SET lease_expires_ms={dialect.NowMs} + @lease WHERE id=@id AND owner=@owner AND state=@running AND attempts=@attempt " +
            "RETURNING lease_expires_ms, cancel_requested",
            ("@id", id), ("@owner", owner), ("@running", (int)JobState.Running), ("@attempt", attempt), ("@lease", (long)lease.TotalMilliseconds)))
        {
            renew.Transaction = transaction;
            using var reader = renew.ExecuteReader();
            if (!reader.Read()) return LeaseState.Lost;
            (leaseExpires, cancelRequested) = (reader.GetInt64(0), reader.GetInt32(1) != 0);
        }
        Failpoints.Hit(Failpoints.LeaseRenewing);
        using (var record = Command(connection, "UPDATE job_attempts SET lease_expires_ms=@lease WHERE job_id=@id AND attempt=@attempt",
            ("@id", id), ("@attempt", attempt), ("@lease", leaseExpires)))
        {
            record.Transaction = transaction;
            record.ExecuteNonQuery();
        }
        transaction.Commit();
        return cancelRequested ? LeaseState.CancelRequested : LeaseState.Held;
    }

    /// <summary>Closes an attempt's record: when and how it ended (succeeded, failed, cancelled, stopped, lease lost).</summary>
    public void EndAttempt(string id, int attempt, string outcome)
    {
        using var connection = Open();
        using var command = Command(connection,
            $"UPDATE job_attempts SET ended_ms={dialect.NowMs}, outcome=@outcome WHERE job_id=@id AND attempt=@attempt AND ended_ms IS NULL",
            ("@id", id), ("@attempt", attempt), ("@outcome", outcome));
        command.ExecuteNonQuery();
    }

    /// <summary>
    /// Gives up the leases of running jobs so they can be claimed at once rather than when the lease lapses: one job
    /// (a host stopping), every job of one owner (a host restarted under its id), or every job (<paramref name="owner"/>
    /// null: the embedded store, whose only host is this one). Returns how many jobs wait to run.
    /// </summary>
    public int ReleaseLeases(string? owner, string? jobId = null)
    {
        using var connection = Open();
        var parameters = new List<(string, object?)> { ("@running", (int)JobState.Running) };
        if (owner is not null) parameters.Add(("@owner", owner));
        if (jobId is not null) parameters.Add(("@id", jobId));
        using (var command = Command(connection,
            "UPDATE jobs SET lease_expires_ms=NULL WHERE state=@running" + (owner is null ? "" : " AND owner=@owner") + (jobId is null ? "" : " AND id=@id"),
            [.. parameters]))
            command.ExecuteNonQuery();
        using var count = Command(connection,
            $"SELECT COUNT(*) FROM jobs WHERE {Claimable}",
            ("@running", (int)JobState.Running), ("@queued", (int)JobState.Queued));
        return Convert.ToInt32(count.ExecuteScalar());
    }

    /// <summary>
    /// Asks whichever host runs the job to cancel it (it sees the request when it next renews its lease). A job waiting
    /// for its shards, which no host holds, is cancelled here; its queued shards are cancelled and its running ones asked
    /// to stop, in the same transaction. Returns true when the job is cancelled now.
    /// </summary>
    public bool RequestCancel(string id, DateTimeOffset at)
    {
        using var connection = Open();
        using var transaction = connection.BeginTransaction();
        Run(connection, transaction, "UPDATE jobs SET cancel_requested=1 WHERE id=@id AND state=@running", ("@id", id), ("@running", (int)JobState.Running));
        int ended = Run(connection, transaction,
            "UPDATE jobs SET state=@cancelled, error='cancelled by a client', error_code='CANCELLED', finished_at=@at " +
            "WHERE id=@id AND state=@running AND waiting_children > 0",
            ("@id", id), ("@running", (int)JobState.Running), ("@cancelled", (int)JobState.Cancelled), ("@at", Time(at)));
        EndChildren(connection, transaction, id, at);
        transaction.Commit();
        return ended > 0;
    }

    /// <summary>
    /// Splits a running job that <paramref name="owner"/>'s attempt holds into <paramref name="children"/> (queued, each
    /// with the parent's id), in one transaction: the parent gives up its lease and waits, unclaimable, until every child
    /// succeeded (<see cref="FinishJob"/> counts them down). False when the lease was lost or the job was split already.
    /// </summary>
    public bool SplitJob(string id, int attempt, string owner, IReadOnlyList<JobRecord> children)
    {
        using var connection = Open();
        using var transaction = connection.BeginTransaction();
        if (Run(connection, transaction,
                "UPDATE jobs SET children=@n, waiting_children=@n, owner=NULL, lease_expires_ms=NULL " +
                "WHERE id=@id AND owner=@owner AND attempts=@attempt AND state=@running AND children=0",
                ("@id", id), ("@owner", owner), ("@attempt", attempt), ("@running", (int)JobState.Running), ("@n", children.Count)) == 0)
            return false;
        foreach (var c in children)
            Run(connection, transaction,
                "INSERT INTO jobs(id,kind,state,config_json,created_at,parent_id,shard_index) VALUES(@id,@kind,@state,@config,@created,@parent,@index)",
                ("@id", c.Id), ("@kind", c.Kind), ("@state", (int)JobState.Queued), ("@config", c.ConfigJson), ("@created", Time(c.CreatedAt)),
                ("@parent", id), ("@index", c.ShardIndex));
        transaction.Commit();
        return true;
    }

    public IReadOnlyList<JobRecord> ChildJobs(string parentId) => QueryJobs("WHERE parent_id=@p ORDER BY shard_index", ("@p", parentId));

    /// <summary>The children of a parent that ended: queued ones are cancelled, running ones asked to cancel.</summary>
    private void EndChildren(DbConnection connection, DbTransaction transaction, string parentId, DateTimeOffset at)
    {
        Run(connection, transaction,
            "UPDATE jobs SET state=@cancelled, error='its parent job ended first', error_code='CANCELLED', finished_at=@at " +
            "WHERE parent_id=@p AND state=@queued",
            ("@p", parentId), ("@queued", (int)JobState.Queued), ("@cancelled", (int)JobState.Cancelled), ("@at", Time(at)));
        Run(connection, transaction, "UPDATE jobs SET cancel_requested=1 WHERE parent_id=@p AND state=@running",
            ("@p", parentId), ("@running", (int)JobState.Running));
    }

    /// <summary>
    /// What a child's end does to its parent, in the child's finishing transaction: a success counts the parent's waiting
    /// children down (at zero the parent is claimable again, to merge); a failure or cancel ends the parent with the
    /// child's error and stops its siblings.
    /// </summary>
    private void EndOfChild(DbConnection connection, DbTransaction transaction, string id, int state, string error, string errorCode, DateTimeOffset at)
    {
        string? parent = null;
        int index = 0;
        using (var command = Command(connection, "SELECT parent_id, shard_index FROM jobs WHERE id=@id", ("@id", id)))
        {
            command.Transaction = transaction;
            using var reader = command.ExecuteReader();
            if (reader.Read() && !reader.IsDBNull(0)) (parent, index) = (reader.GetString(0), reader.GetInt32(1));
        }
        if (parent is null) return;
        if (state == (int)JobState.Succeeded)
        {
            Run(connection, transaction, "UPDATE jobs SET waiting_children=waiting_children-1 WHERE id=@p AND state=@running AND waiting_children > 0",
                ("@p", parent), ("@running", (int)JobState.Running));
            return;
        }
        var verb = state == (int)JobState.Cancelled ? "was cancelled" : "failed";
        if (Run(connection, transaction,
                "UPDATE jobs SET state=@state, error=@e, error_code=@c, finished_at=@at, lease_expires_ms=NULL WHERE id=@p AND state IN (@queued, @running)",
                ("@p", parent), ("@state", state), ("@e", $"shard {index} ({id}) {verb}: {error}"), ("@c", errorCode), ("@at", Time(at)),
                ("@queued", (int)JobState.Queued), ("@running", (int)JobState.Running)) > 0)
            EndChildren(connection, transaction, parent, at);
    }

    private static int Run(DbConnection connection, DbTransaction transaction, string sql, params (string Name, object? Value)[] parameters)
    {
        using var command = Command(connection, sql, parameters);
        command.Transaction = transaction;
        return command.ExecuteNonQuery();
    }

    private List<JobRecord> QueryJobs(string where, params (string, object?)[] parameters)
    {
        using var connection = Open();
        using var command = Command(connection,
            "SELECT id,kind,state,config_json,progress_json,artifacts_json,metrics_json,error,error_code,created_at,started_at,finished_at,attempts," +
            "parent_id,shard_index,children,waiting_children FROM jobs " + where,
            parameters);
        using var reader = command.ExecuteReader();
        var list = new List<JobRecord>();
        while (reader.Read())
            list.Add(new JobRecord(reader.GetString(0), reader.GetInt32(1), reader.GetInt32(2), reader.GetString(3),
                reader.IsDBNull(4) ? null : reader.GetString(4), reader.GetString(5), reader.GetString(6), reader.GetString(7),
                reader.GetString(8), ParseTime(reader.GetString(9)), ParseTime(reader.GetValue(10)), ParseTime(reader.GetValue(11)),
                reader.GetInt32(12), reader.IsDBNull(13) ? null : reader.GetString(13), reader.GetInt32(14), reader.GetInt32(15), reader.GetInt32(16)));
        return list;
    }

    public void UpdateJobProgress(string id, string progressJson)
    {
        using var connection = Open();
        using var command = Command(connection, "UPDATE jobs SET progress_json=@p WHERE id=@id", ("@id", id), ("@p", progressJson));
        command.ExecuteNonQuery();
    }

    /// <summary>
    /// Moves a job to a final state; only from one of <paramref name="fromStates"/> (so a cancel and a finish cannot both
    /// win) and, with <paramref name="holder"/>, only while that owner's attempt holds the job (a host whose lease
    /// lapsed cannot overwrite the host that took the job over). The job's output models and datasets are listed in the
    /// same transaction: none is visible before the job's success, and a kill leaves either all of them with the
    /// succeeded job or none. A shard's end reaches its parent in the same transaction too (<see cref="EndOfChild"/>).
    /// </summary>
    public bool FinishJob(string id, int state, int[] fromStates, string artifactsJson, string metricsJson, string error, string errorCode,
        DateTimeOffset at, (string Owner, int Attempt)? holder = null, IReadOnlyList<ModelRecord>? models = null, IReadOnlyList<DatasetRecord>? datasets = null)
    {
        using var connection = Open();
        using var transaction = connection.BeginTransaction();
        var parameters = new List<(string, object?)>
        {
            ("@id", id), ("@state", state), ("@a", artifactsJson), ("@m", metricsJson), ("@e", error), ("@c", errorCode), ("@at", Time(at)),
        };
        if (holder is { } h) parameters.AddRange([("@owner", h.Owner), ("@attempt", h.Attempt)]);
        using var command = Command(connection,
            $"UPDATE jobs SET state=@state, artifacts_json=@a, metrics_json=@m, error=@e, error_code=@c, finished_at=@at, lease_expires_ms=NULL " +
            $"WHERE id=@id AND state IN ({string.Join(",", fromStates)})" + (holder is null ? "" : " AND owner=@owner AND attempts=@attempt"),
            [.. parameters]);
        command.Transaction = transaction;
        if (command.ExecuteNonQuery() == 0) return false; // disposed uncommitted: rolled back
        EndOfChild(connection, transaction, id, state, error, errorCode, at);
        // the holder's attempt ends with the job, so no reader sees a finished job whose attempt still runs
        if (holder is { } end)
            Run(connection, transaction,
                $"UPDATE job_attempts SET ended_ms={dialect.NowMs}, outcome=@outcome WHERE job_id=@id AND attempt=@attempt AND ended_ms IS NULL",
                ("@id", id), ("@attempt", end.Attempt), ("@outcome", ((JobState)state).ToString().ToLowerInvariant()));
        foreach (var m in models ?? []) Insert(connection, transaction, m);
        foreach (var d in datasets ?? []) Insert(connection, transaction, d);
        transaction.Commit();
        return true;
    }

    // ---- API keys
    public void InsertApiKey(string sha256, string name, string prefix)
    {
        using var connection = Open();
        using var command = Command(connection, "INSERT INTO api_keys(sha256,name,created_at,prefix) VALUES(@h,@n,@t,@p) " +
            "ON CONFLICT(sha256) DO UPDATE SET name=excluded.name, created_at=excluded.created_at, prefix=excluded.prefix",
            ("@h", sha256), ("@n", name), ("@t", Time(DateTimeOffset.UtcNow)), ("@p", prefix));
        command.ExecuteNonQuery();
    }

    public IReadOnlyList<string> ApiKeyHashes() => ApiKeyRecords().Select(k => k.Sha256).ToList();

    public IReadOnlyList<ApiKeyRecord> ApiKeyRecords()
    {
        using var connection = Open();
        using var command = Command(connection, "SELECT sha256, name, created_at, prefix FROM api_keys ORDER BY created_at, sha256");
        using var reader = command.ExecuteReader();
        var list = new List<ApiKeyRecord>();
        while (reader.Read())
            list.Add(new ApiKeyRecord(reader.GetString(0), reader.GetString(1), ParseTime(reader.GetString(2)), reader.GetString(3)));
        return list;
    }

    public bool DeleteApiKey(string sha256)
    {
        using var connection = Open();
        using var command = Command(connection, "DELETE FROM api_keys WHERE sha256=@h", ("@h", sha256));
        return command.ExecuteNonQuery() > 0;
    }
}
