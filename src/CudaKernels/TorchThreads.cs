using System.Runtime.InteropServices;

namespace WeakTeacher.CudaKernels;

/// <summary>
/// Runs the parts of a CPU kernel of the project's own on libtorch's OpenMP threads (GOMP_parallel of the libgomp that
/// libtorch itself loaded, the one mapped from libtorch_cpu.so's folder). A second pool (the .NET one, or OpenBLAS's
/// libgomp) would compete on every core with libtorch's workers, which spin for a while after each parallel op: the
/// decode step's few-row products ran 1.4x slower on the .NET pool than on this one (ModelBench --suite generate-profile).
/// Where that libgomp is not found the .NET pool runs the parts.
/// </summary>
internal static unsafe class TorchThreads
{
    private struct Job
    {
        public delegate*<void*, int, int, void> Body;
        public void* Data;
        public int Parts;
    }

    private sealed class Team
    {
        public delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void> Parallel;
        public delegate* unmanaged<int> ThreadNum;
        public delegate* unmanaged<int> NumThreads;
    }

    private static readonly Lazy<Team?> Torch = new(Find);

    /// <summary>Whether the parts run on libtorch's own threads (else on the .NET pool).</summary>
    public static bool OnTorchThreads => Torch.Value is not null;

    /// <summary>body(data, part, parts) for every part in [0, parts), on up to libtorch's thread count; returns when all are done.</summary>
    public static void For(int parts, delegate*<void*, int, int, void> body, void* data)
    {
        if (parts <= 1)
        {
            body(data, 0, 1);
            return;
        }
        var job = new Job { Body = body, Data = data, Parts = parts };
        if (Torch.Value is { } team)
        {
            // a team no larger than libtorch's (a larger request would start threads of its own); each takes every n-th part
            team.Parallel(&Part, &job, (uint)Math.Min(parts, Math.Max(1, TorchSharp.torch.get_num_threads())), 0);
            return;
        }
        nint d = (nint)data;
        Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, TorchSharp.torch.get_num_threads()) }, p => body((void*)d, p, parts));
    }

    [UnmanagedCallersOnly]
    private static void Part(void* state)
    {
        var team = Torch.Value!;
        var job = (Job*)state;
        for (int p = team.ThreadNum(); p < job->Parts; p += team.NumThreads()) job->Body(job->Data, p, job->Parts);
    }

    private static Team? Find()
    {
        if (!OperatingSystem.IsLinux()) return null;
        TorchSharp.torch.get_num_threads();   // libtorch (and its libgomp) loaded before the maps are read
        var mapped = Native.MappedLibraries.All();
        var torchDir = mapped.Where(p => Path.GetFileName(p) == "libtorch_cpu.so").Select(Path.GetDirectoryName).FirstOrDefault();
        var gomp = mapped.FirstOrDefault(p => torchDir is not null && Path.GetDirectoryName(p) == torchDir && Path.GetFileName(p).StartsWith("libgomp", StringComparison.Ordinal));
        if (gomp is null || !NativeLibrary.TryLoad(gomp, out var handle)) return null;
        if (!NativeLibrary.TryGetExport(handle, "GOMP_parallel", out var parallel)
            || !NativeLibrary.TryGetExport(handle, "omp_get_thread_num", out var threadNum)
            || !NativeLibrary.TryGetExport(handle, "omp_get_num_threads", out var numThreads)) return null;
        return new Team
        {
            Parallel = (delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void>)parallel,
            ThreadNum = (delegate* unmanaged<int>)threadNum,
            NumThreads = (delegate* unmanaged<int>)numThreads,
        };
    }
}
