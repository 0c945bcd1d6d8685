using WeakTeacher.GrpcHost.Storage;

namespace WeakTeacher.GrpcHost.Security;

/// <summary>`keys hash &lt;key&gt;` and `keys add &lt;name&gt; [--DataDir dir]`: API key management without storing keys.</summary>
internal static class Keys
{
    public static int Run(string[] args)
    {
        if (args.Length >= 3 && args[1] == "hash")
        {
            Console.WriteLine(ApiKeys.Hash(args[2]));
            return 0;
        }
        if (args.Length >= 3 && args[1] == "add")
        {
            var dataDir = "data";
            for (int i = 3; i + 1 < args.Length; i++)
                if (args[i] is "--DataDir" or "--data-dir") dataDir = args[i + 1];
            var layout = new DataLayout(dataDir);
            var store = new Store(layout.DatabasePath);
            var key = ApiKeys.NewKey();
            store.InsertApiKey(ApiKeys.Hash(key), args[2]);
            Console.WriteLine(key);
            Console.Error.WriteLine($"API key '{args[2]}' added to {layout.DatabasePath} (only its SHA-256 is stored; keep the key above).");
            return 0;
        }
        Console.Error.WriteLine("usage: keys hash <key> | keys add <name> [--DataDir <dir>]");
        return 2;
    }
}
