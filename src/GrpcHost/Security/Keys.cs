using Grpc.Core;
using WeakTeacher.GrpcHost.Storage;
using WeakTeacher.GrpcHost.Validation;

namespace WeakTeacher.GrpcHost.Security;

/// <summary>
/// `keys hash|add|list|revoke`: API key management without storing keys. The data folder comes from the host's own
/// configuration (appsettings.json, WT_DataDir, --DataDir / --DataDir=dir), so a key lands where the host reads it.
/// </summary>
internal static class Keys
{
    private const string Usage = "usage: keys hash <key> | keys add <name> | keys list | keys revoke <id or name>  [--DataDir <dir>]";
    private const int PrefixLength = 8;

    public static int Run(string[] args, ServiceOptions options)
    {
        var words = Positional(args);
        var verb = words.Count >= 2 ? words[1] : "";
        try
        {
            switch (verb)
            {
                case "hash" when words.Count == 3:
                    Console.WriteLine(ApiKeys.Hash(words[2]));
                    return 0;
                case "add" when words.Count == 3:
                    return Add(words[2], Open(options));
                case "list" when words.Count == 2:
                    return List(options, Open(options));
                case "revoke" when words.Count == 3:
                    return Revoke(words[2], options, Open(options));
                default:
                    Console.Error.WriteLine(Usage);
                    return 2;
            }
        }
        catch (RpcException e) // a name refused by Names.CheckName
        {
            Console.Error.WriteLine($"error: {e.Status.Detail}");
            return 2;
        }
    }

    /// <summary>The id a key is listed and revoked by: the start of its SHA-256 (which says nothing of the key).</summary>
    public static string IdOf(string sha256) => sha256[..12];

    private static (DataLayout Layout, Store Store) Open(ServiceOptions options)
    {
        var layout = new DataLayout(options.DataDir);
        return (layout, Store.Open(options, layout));
    }

    private static int Add(string name, (DataLayout Layout, Store Store) db)
    {
        Names.CheckName("name", name);
        var key = ApiKeys.NewKey();
        var hash = ApiKeys.Hash(key);
        db.Store.InsertApiKey(hash, name, key[..PrefixLength]);
        Console.WriteLine(key);
        Console.Error.WriteLine($"API key '{name}' (id {IdOf(hash)}) added to {db.Layout.DatabasePath} (only its SHA-256 is stored; keep the key above).");
        return 0;
    }

    private static int List(ServiceOptions options, (DataLayout Layout, Store Store) db)
    {
        Console.WriteLine($"{"ID",-12}  {"NAME",-24}  {"CREATED (UTC)",-20}  {"PREFIX",-8}  SOURCE");
        foreach (var k in db.Store.ApiKeyRecords())
            Console.WriteLine($"{IdOf(k.Sha256),-12}  {k.Name,-24}  {k.CreatedAt.UtcDateTime:yyyy-MM-dd HH:mm:ss}  {(k.Prefix.Length > 0 ? k.Prefix + "…" : "?"),-8}  database");
        foreach (var hash in options.Auth.ApiKeyHashes)
            Console.WriteLine($"{IdOf(hash.Trim().ToLowerInvariant().PadRight(12)),-12}  {"-",-24}  {"-",-20}  {"-",-8}  Auth:ApiKeyHashes");
        return 0;
    }

    private static int Revoke(string idOrName, ServiceOptions options, (DataLayout Layout, Store Store) db)
    {
        var keys = db.Store.ApiKeyRecords();
        var matches = keys.Where(k => IdOf(k.Sha256) == idOrName.ToLowerInvariant()).ToList();
        if (matches.Count == 0) matches = keys.Where(k => k.Name == idOrName).ToList();
        if (matches.Count > 1)
        {
            Console.Error.WriteLine($"error: {matches.Count} keys are named '{idOrName}' (ids {string.Join(", ", matches.Select(k => IdOf(k.Sha256)))}); revoke one by its id");
            return 2;
        }
        if (matches.Count == 0)
        {
            bool configured = options.Auth.ApiKeyHashes.Any(h => h.Trim().StartsWith(idOrName, StringComparison.OrdinalIgnoreCase) && idOrName.Length >= 12);
            Console.Error.WriteLine(configured
                ? $"error: key {idOrName} is set in the configuration (Auth:ApiKeyHashes); remove it there"
                : $"error: no API key with id or name '{idOrName}' in {db.Layout.DatabasePath} (see `keys list`)");
            return 2;
        }
        db.Store.DeleteApiKey(matches[0].Sha256);
        Console.Error.WriteLine($"API key '{matches[0].Name}' (id {IdOf(matches[0].Sha256)}) revoked; a running host refuses it from its next request.");
        return 0;
    }

    /// <summary>The words of the command line, without its --Name value / --Name=value settings (the configuration's).</summary>
    private static List<string> Positional(string[] args)
    {
        var words = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i].StartsWith("--", StringComparison.Ordinal))
            {
                if (!args[i].Contains('=')) i++;
                continue;
            }
            words.Add(args[i]);
        }
        return words;
    }
}
