namespace WeakTeacher.Engine.Data;

/// <summary>
/// SplitMix64: a tiny generator whose stream depends only on the seed (not on the .NET version, unlike
/// <see cref="Random"/>'s unseeded algorithm), so shuffles and A/B swaps replay exactly on resume and across machines.
/// </summary>
public struct SeededRandom
{
    private ulong state;

    public SeededRandom(long seed) => state = (ulong)seed;

    /// <summary>A generator for one stream (for example one epoch) of a seed.</summary>
    public SeededRandom(long seed, long stream) => state = Mix((ulong)seed ^ Mix((ulong)stream + 0x9E3779B97F4A7C15UL));

    public ulong NextUInt64()
    {
        state += 0x9E3779B97F4A7C15UL;
        return Mix(state);
    }

    /// <summary>Uniform integer in [0, <paramref name="exclusiveMax"/>), without modulo bias.</summary>
    public int NextInt(int exclusiveMax)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(exclusiveMax);
        ulong bound = (ulong)exclusiveMax;
        ulong limit = ulong.MaxValue - ulong.MaxValue % bound;
        ulong draw;
        do draw = NextUInt64(); while (draw >= limit);
        return (int)(draw % bound);
    }

    /// <summary>In-place Fisher-Yates shuffle.</summary>
    public void Shuffle<T>(Span<T> items)
    {
        for (int i = items.Length - 1; i > 0; i--)
        {
            int j = NextInt(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }

    /// <summary>A fair coin for item <paramref name="index"/> of a seed, independent of every other item.</summary>
    public static bool Bit(long seed, long index) => (new SeededRandom(seed, index).NextUInt64() >> 63) != 0;

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
