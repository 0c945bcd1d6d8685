using TorchSharp;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Runtime;

/// <summary>
/// One seed for everything random in a run: torch's default generators (CPU and, once initialised, CUDA) and
/// the engine's own <see cref="System.Random"/> streams, which are derived per purpose so that adding a new
/// consumer does not shift the numbers an existing one sees.
/// Call after <see cref="TorchDevice.Initialize(RuntimeOptions?)"/>: seeding touches libtorch.
/// </summary>
public static class Seeds
{
    private static long _seed;
    private static bool _set;

    /// <summary>The last seed given to <see cref="Set"/>, or null.</summary>
    public static long? Current => _set ? _seed : null;

    /// <summary>Seeds torch (CPU and CUDA) and resets the engine's derived streams.</summary>
    public static void Set(long seed)
    {
        torch.manual_seed(seed);
        if (TorchDevice.CudaReady) torch.cuda.manual_seed_all(seed);
        _seed = seed;
        _set = true;
    }

    /// <summary>
    /// A <see cref="System.Random"/> for <paramref name="stream"/> (e.g. "shuffle", "split"), deterministic
    /// given the seed of <see cref="Set"/> (0 when none was set) and the stream's name.
    /// </summary>
    public static Random NewRandom(string stream) => new(Derive(_seed, stream));

    /// <summary>A torch generator on <paramref name="device"/> seeded with <paramref name="seed"/>.</summary>
    public static Generator NewGenerator(long seed, Device? device = null)
        => new((ulong)seed, device ?? new Device(DeviceType.CPU, -1));

    /// <summary>A stable 32-bit seed from a seed and a name (FNV-1a; string.GetHashCode is randomised per process).</summary>
    public static int Derive(long seed, string stream)
    {
        ulong h = 14695981039346656037UL;
        void Mix(byte b) { h ^= b; h *= 1099511628211UL; }
        for (int i = 0; i < 8; i++) Mix((byte)(seed >> (8 * i)));
        foreach (char c in stream) { Mix((byte)c); Mix((byte)(c >> 8)); }
        return (int)(h ^ (h >> 32)) & int.MaxValue;
    }
}
