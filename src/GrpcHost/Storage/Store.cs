using Microsoft.Data.Sqlite;

namespace WeakTeacher.GrpcHost.Storage;

internal sealed record DatasetRecord(string Id, string Name, int Format, int Encoding, long Rows, long SizeBytes,
    string Sha256, DateTimeOffset CreatedAt, string Source, string FileName);

internal sealed record ModelRecord(string Id, string Name, string ModelType, long SizeBytes, DateTimeOffset CreatedAt,
    string Source, string FilesJson);

internal sealed record JobRecord(string Id, int Kind, int State, string ConfigJson, string? ProgressJson,
    string ArtifactsJson, string MetricsJson, string Error, string ErrorCode, DateTimeOffset CreatedAt,
    DateTimeOffset? StartedAt, DateTimeOffset? FinishedAt, int Attempts);

/// <summary>An API key as stored: its SHA-256, never the key; <paramref name="Prefix"/> is the key's first characters.</summary>
internal sealed record ApiKeyRecord(string Sha256, string Name, DateTimeOffset CreatedAt, string Prefix);

/// <summary>
/// Job, dataset, model and API-key records in SQLite (WAL) under the data folder. Every write is one statement or one
/// transaction, so a crash leaves either the old or the new record.
/// </summary>
internal sealed class Store
{
    private readonly string connectionString;

    public Store(string databasePath)
    {
        connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = databasePath,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Cache = SqliteCacheMode.Private,
            Pooling = true,
            DefaultTimeout = 30,
        }.ToString();
        using var connection = Open();
        Execute(connection, "PRAGMA journal_mode=WAL;");
        Execute(connection, """
            CREATE TABLE IF NOT EXISTS datasets(
              id TEXT PRIMARY KEY, name TEXT NOT NULL, format INTEGER NOT NULL, encoding INTEGER NOT NULL,
              rows INTEGER NOT NULL, size_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created_at TEXT NOT NULL,
              source TEXT NOT NULL, file_name TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS models(
              id TEXT PRIMARY KEY, name TEXT NOT NULL, model_type TEXT NOT NULL, size_bytes INTEGER NOT NULL,
              created_at TEXT NOT NULL, source TEXT NOT NULL, files_json TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS jobs(
              seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind INTEGER NOT NULL, state INTEGER NOT NULL,
              config_json TEXT NOT NULL, progress_json TEXT, artifacts_json TEXT NOT NULL DEFAULT '[]',
              metrics_json TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '', error_code TEXT NOT NULL DEFAULT '',
              created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, attempts INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE IF NOT EXISTS api_keys(
              sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL);
            """);
        // Idempotency keys (request_id) of job starts; added to databases made before it existed.
        if (!Columns(connection, "jobs").Contains("request_id")) Execute(connection, "ALTER TABLE jobs ADD COLUMN request_id TEXT;");
        Execute(connection, "CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs(request_id) WHERE request_id IS NOT NULL;");
        // A key's first characters, shown by `keys list` to tell keys apart; added to databases made before it existed.
        if (!Columns(connection, "api_keys").Contains("prefix")) Execute(connection, "ALTER TABLE api_keys ADD COLUMN prefix TEXT NOT NULL DEFAULT '';");
    }

    private static HashSet<string> Columns(SqliteConnection connection, string table)
    {
        using var command = Command(connection, $"SELECT name FROM pragma_table_info('{table}')");
        using var reader = command.ExecuteReader();
        var names = new HashSet<string>(StringComparer.Ordinal);
        while (reader.Read()) names.Add(reader.GetString(0));
        return names;
    }

    private SqliteConnection Open()
    {
        var connection = new SqliteConnection(connectionString);
        connection.Open();
        // WAL with NORMAL sync: a committed transaction survives a process kill (only an OS crash can lose the tail).
        Execute(connection, "PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;");
        return connection;
    }

    private static void Execute(SqliteConnection connection, string sql)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.ExecuteNonQuery();
    }

    private static SqliteCommand Command(SqliteConnection connection, string sql, params (string Name, object? Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters) command.Parameters.AddWithValue(name, value ?? DBNull.Value);
        return command;
    }

    private static string Time(DateTimeOffset t) => t.UtcDateTime.ToString("O");
    private static DateTimeOffset ParseTime(string s) => DateTimeOffset.Parse(s, null, System.Globalization.DateTimeStyles.RoundtripKind);
    private static DateTimeOffset? ParseTime(object value) => value is string s ? ParseTime(s) : null;

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
        using var command = Command(connection,
            "INSERT OR REPLACE INTO datasets VALUES($id,$name,$format,$encoding,$rows,$size,$sha,$created,$source,$file)",
            ("$id", d.Id), ("$name", d.Name), ("$format", d.Format), ("$encoding", d.Encoding), ("$rows", d.Rows),
            ("$size", d.SizeBytes), ("$sha", d.Sha256), ("$created", Time(d.CreatedAt)), ("$source", d.Source), ("$file", d.FileName));
        command.ExecuteNonQuery();
    }

    public DatasetRecord? GetDataset(string id) => QueryDatasets("WHERE id=$id", ("$id", id)).FirstOrDefault();
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
        using var command = Command(connection, "DELETE FROM datasets WHERE id=$id", ("$id", id));
        return command.ExecuteNonQuery() > 0;
    }

    // ---- models
    public void InsertModel(ModelRecord m)
    {
        using var connection = Open();
        using var command = Command(connection,
            "INSERT OR REPLACE INTO models VALUES($id,$name,$type,$size,$created,$source,$files)",
            ("$id", m.Id), ("$name", m.Name), ("$type", m.ModelType), ("$size", m.SizeBytes), ("$created", Time(m.CreatedAt)),
            ("$source", m.Source), ("$files", m.FilesJson));
        command.ExecuteNonQuery();
    }

    public ModelRecord? GetModel(string id) => QueryModels("WHERE id=$id", ("$id", id)).FirstOrDefault();
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
        using var command = Command(connection, "DELETE FROM models WHERE id=$id", ("$id", id));
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
            "INSERT INTO jobs(id,kind,state,config_json,created_at,request_id) VALUES($id,$kind,$state,$config,$created,$request) " +
            "ON CONFLICT(request_id) WHERE request_id IS NOT NULL DO NOTHING",
            ("$id", j.Id), ("$kind", j.Kind), ("$state", j.State), ("$config", j.ConfigJson), ("$created", Time(j.CreatedAt)),
            ("$request", string.IsNullOrEmpty(requestId) ? null : requestId));
        if (command.ExecuteNonQuery() > 0) return null;
        return JobByRequestId(requestId!) ?? throw new InvalidOperationException("job insert was skipped but no job holds its request_id");
    }

    public void DeleteJob(string id)
    {
        using var connection = Open();
        using var command = Command(connection, "DELETE FROM jobs WHERE id=$id", ("$id", id));
        command.ExecuteNonQuery();
    }

    public JobRecord? GetJob(string id) => QueryJobs("WHERE id=$id", ("$id", id)).FirstOrDefault();
    public JobRecord? JobByRequestId(string requestId) => QueryJobs("WHERE request_id=$r", ("$r", requestId)).FirstOrDefault();

    public IReadOnlyList<JobRecord> ListJobs(int? state, int? kind, int limit)
    {
        var where = new List<string>();
        var parameters = new List<(string, object?)>();
        if (state is not null) { where.Add("state=$state"); parameters.Add(("$state", state)); }
        if (kind is not null) { where.Add("kind=$kind"); parameters.Add(("$kind", kind)); }
        var clause = (where.Count > 0 ? "WHERE " + string.Join(" AND ", where) : "") + " ORDER BY seq DESC LIMIT $limit";
        parameters.Add(("$limit", limit));
        return QueryJobs(clause, parameters.ToArray());
    }

    /// <summary>Jobs that were queued or running when the host last stopped, oldest first.</summary>
    public IReadOnlyList<JobRecord> UnfinishedJobs(int queued, int running) =>
        QueryJobs("WHERE state IN ($q,$r) ORDER BY seq", ("$q", queued), ("$r", running));

    private List<JobRecord> QueryJobs(string where, params (string, object?)[] parameters)
    {
        using var connection = Open();
        using var command = Command(connection,
            "SELECT id,kind,state,config_json,progress_json,artifacts_json,metrics_json,error,error_code,created_at,started_at,finished_at,attempts FROM jobs " + where,
            parameters);
        using var reader = command.ExecuteReader();
        var list = new List<JobRecord>();
        while (reader.Read())
            list.Add(new JobRecord(reader.GetString(0), reader.GetInt32(1), reader.GetInt32(2), reader.GetString(3),
                reader.IsDBNull(4) ? null : reader.GetString(4), reader.GetString(5), reader.GetString(6), reader.GetString(7),
                reader.GetString(8), ParseTime(reader.GetString(9)), ParseTime(reader.GetValue(10)), ParseTime(reader.GetValue(11)),
                reader.GetInt32(12)));
        return list;
    }

    public void MarkJobStarted(string id, int state, DateTimeOffset at)
    {
        using var connection = Open();
        using var command = Command(connection,
            "UPDATE jobs SET state=$state, started_at=$at, attempts=attempts+1, error='', error_code='' WHERE id=$id",
            ("$id", id), ("$state", state), ("$at", Time(at)));
        command.ExecuteNonQuery();
    }

    public void UpdateJobProgress(string id, string progressJson)
    {
        using var connection = Open();
        using var command = Command(connection, "UPDATE jobs SET progress_json=$p WHERE id=$id", ("$id", id), ("$p", progressJson));
        command.ExecuteNonQuery();
    }

    /// <summary>Moves a job to a final state; only from one of <paramref name="fromStates"/> (so a cancel and a finish cannot both win).</summary>
    public bool FinishJob(string id, int state, int[] fromStates, string artifactsJson, string metricsJson, string error, string errorCode, DateTimeOffset at)
    {
        using var connection = Open();
        using var command = Command(connection,
            $"UPDATE jobs SET state=$state, artifacts_json=$a, metrics_json=$m, error=$e, error_code=$c, finished_at=$at " +
            $"WHERE id=$id AND state IN ({string.Join(",", fromStates)})",
            ("$id", id), ("$state", state), ("$a", artifactsJson), ("$m", metricsJson), ("$e", error), ("$c", errorCode), ("$at", Time(at)));
        return command.ExecuteNonQuery() > 0;
    }

    // ---- API keys
    public void InsertApiKey(string sha256, string name, string prefix)
    {
        using var connection = Open();
        using var command = Command(connection, "INSERT OR REPLACE INTO api_keys(sha256,name,created_at,prefix) VALUES($h,$n,$t,$p)",
            ("$h", sha256), ("$n", name), ("$t", Time(DateTimeOffset.UtcNow)), ("$p", prefix));
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
        using var command = Command(connection, "DELETE FROM api_keys WHERE sha256=$h", ("$h", sha256));
        return command.ExecuteNonQuery() > 0;
    }
}
