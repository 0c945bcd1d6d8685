using WeakTeacher.Engine;
using WeakTeacher.Engine.Runtime;
using Xunit;

namespace WeakTeacher.Tests.Runtime;

/// <summary>
/// The write fence of work folders shared by hosts: inside a fenced run that no longer holds its job, an atomic write is
/// refused before it touches anything (the published file and another writer's temporary file stay as they were); the
/// fence reaches the tasks the run starts and ends with its scope.
/// </summary>
public sealed class WriteFenceTests : IDisposable
{
    private readonly string dir = Path.Combine(Path.GetTempPath(), "wt-fence-" + Guid.NewGuid().ToString("N"));

    public WriteFenceTests() => Directory.CreateDirectory(dir);

    public void Dispose() => Directory.Delete(dir, recursive: true);

    [Fact]
    public async Task A_run_that_lost_its_job_cannot_replace_or_clean_up_files_and_a_run_that_holds_it_can()
    {
        var path = Path.Combine(dir, "labels.jsonl");
        AtomicFile.WriteAllText(path, "published by the new holder\n");
        // the new holder's write in flight: its temporary file, which a writer's leftover clean-up would delete
        var inFlight = path + ".tmp-0123456789abcdef";
        File.WriteAllText(inFlight, "half written");

        string? refusal = "attempt 1's lease was last confirmed 12.0s ago (lease 10s)";
        using (WriteFence.Enter(() => refusal))
        {
            var e = Assert.Throws<FencedWriteException>(() => AtomicFile.WriteAllText(path, "late write of the stalled holder\n"));
            Assert.Contains("attempt 1's lease", e.Message);
            Assert.IsAssignableFrom<OperationCanceledException>(e); // the run stops as a cancelled one, not a failed one
            // the fence reaches work the run hands to other threads
            await Assert.ThrowsAsync<FencedWriteException>(() => Task.Run(() => AtomicFile.WriteAllText(path, "from a task\n"), TestContext.Current.CancellationToken));
            Assert.Equal("published by the new holder\n", File.ReadAllText(path));
            Assert.Equal("half written", File.ReadAllText(inFlight));

            refusal = null; // while the lease is held the same write goes through
            AtomicFile.WriteAllText(path, "written while holding the lease\n");
            Assert.Equal("written while holding the lease\n", File.ReadAllText(path));
            refusal = "lost";
        }
        AtomicFile.WriteAllText(path, "outside any fenced run\n"); // the CLI and tests: no fence
        Assert.Equal("outside any fenced run\n", File.ReadAllText(path));
    }
}
