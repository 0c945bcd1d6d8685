using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Google.Protobuf;
using WeakTeacher.Engine.Training;
using Xunit;

namespace WeakTeacher.Tests.Training;

/// <summary>
/// Every training run writes a TensorBoard event file beside metrics.jsonl. Read back here as TensorBoard reads it:
/// TFRecord framing with both CRCs checked, then the Event protos decoded with Google.Protobuf's reader (an
/// implementation independent of the writer).
/// </summary>
[Collection(TrainingCollection.Name)]
public class TensorBoardTests
{
    [Fact]
    public void Crc32CMatchesTheCastagnoliCheckValue()
    {
        // The standard check value of CRC-32C (RFC 3720, B.4): "123456789" -> 0xE3069283.
        Assert.Equal(0xE3069283u, TensorBoardWriter.Crc32C(Encoding.ASCII.GetBytes("123456789")));
        Assert.Equal(0x8A9136AAu, TensorBoardWriter.Crc32C(new byte[32])); // 32 zero bytes (RFC 3720, B.4)
    }

    [Fact]
    public void A_dpo_run_writes_events_with_trl_tags_equal_to_metrics_jsonl()
    {
        var examples = TrainingTestKit.XPreferences(8, 3);
        var config = new DpoConfig { BatchSize = 2, MaxSteps = 3, LearningRate = 5e-3 };
        var reference = ReferenceModel.FromFactory("ref-tb", () => TrainingTestKit.Opt(41));
        using var dir = new WeakTeacher.Tests.Data.TempDir();
        using (var policy = TrainingTestKit.Opt(41))
            new DpoTrainer(policy, TrainingTestKit.Tokenizer, config, reference).Train(examples, dir.Path, cancellationToken: TestContext.Current.CancellationToken);

        var files = Directory.GetFiles(dir.Path, "events.out.tfevents.*");
        var events = Read(Assert.Single(files));
        Assert.Equal("brain.Event:2", events[0].FileVersion);
        var scalars = events.Where(e => e.Values.Count > 0).ToList();
        var rows = File.ReadAllLines(Path.Combine(dir.Path, TrainingLog.MetricsFile)).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(3, rows.Count);
        Assert.Equal(rows.Count, scalars.Count);
        for (int i = 0; i < rows.Count; i++)
        {
            Assert.Equal(rows[i].GetProperty("step").GetInt64(), scalars[i].Step);
            var expected = rows[i].EnumerateObject().Where(p => p.Name != "step").ToDictionary(p => p.Name, p => p.Value.GetDouble());
            Assert.Equal(expected.Keys.Order(), scalars[i].Values.Keys.Order());
            foreach (var (tag, value) in expected)
                Assert.Equal((float)value, scalars[i].Values[tag]);
            Assert.True(scalars[i].WallTime > 1.5e9, $"wall_time {scalars[i].WallTime}");
        }
        foreach (var tag in new[] { "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm", "learning_rate" })
            Assert.Contains(tag, scalars[0].Values.Keys);
    }

    [Fact]
    public void A_resumed_writer_marks_the_restart_so_tensorboard_drops_later_points()
    {
        using var dir = new WeakTeacher.Tests.Data.TempDir();
        using (var w = new TensorBoardWriter(dir.Path, resumedAtStep: 3)) w.Write(4, new Dictionary<string, double> { ["loss"] = 0.5 });
        var events = Read(Assert.Single(Directory.GetFiles(dir.Path, "events.out.tfevents.*")));
        Assert.Equal(3, events.Count);
        Assert.Equal((3L, 1), (events[1].Step, events[1].SessionStatus)); // SessionLog START at the checkpoint's step
        Assert.Equal(0.5f, events[2].Values["loss"]);
    }

    private sealed record Event(double WallTime, long Step, string? FileVersion, int SessionStatus, Dictionary<string, float> Values);

    private static List<Event> Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var events = new List<Event>();
        int at = 0;
        while (at < bytes.Length)
        {
            var length = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at));
            Assert.Equal(Masked(bytes.AsSpan(at, 8)), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 8)));
            var payload = bytes.AsSpan(at + 12, length);
            Assert.Equal(Masked(payload), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 12 + length)));
            events.Add(Decode(payload.ToArray()));
            at += 12 + length + 4;
        }
        return events;
    }

    // TensorFlow's mask (crc32c.h), written out here; the CRC itself is checked against the published values above.
    private static uint Masked(ReadOnlySpan<byte> data)
    {
        uint crc = TensorBoardWriter.Crc32C(data);
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }

    private static Event Decode(byte[] payload)
    {
        var input = new CodedInputStream(payload);
        double wall = 0; long step = 0; string? version = null; int status = 0;
        var values = new Dictionary<string, float>();
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 1: wall = input.ReadDouble(); break;
                case 2: step = input.ReadInt64(); break;
                case 3: version = input.ReadString(); break;
                case 5:
                    var summary = new CodedInputStream(input.ReadBytes().ToByteArray());
                    while (summary.ReadTag() is var st && st != 0)
                    {
                        Assert.Equal(1, WireFormat.GetTagFieldNumber(st));
                        var value = new CodedInputStream(summary.ReadBytes().ToByteArray());
                        string name = ""; float simple = float.NaN;
                        while (value.ReadTag() is var vt && vt != 0)
                        {
                            if (WireFormat.GetTagFieldNumber(vt) == 1) name = value.ReadString();
                            else if (WireFormat.GetTagFieldNumber(vt) == 2) simple = value.ReadFloat();
                            else value.SkipLastField();
                        }
                        values.Add(name, simple);
                    }
                    break;
                case 6:
                    var log = new CodedInputStream(input.ReadBytes().ToByteArray());
                    while (log.ReadTag() is var lt && lt != 0)
                        if (WireFormat.GetTagFieldNumber(lt) == 1) status = log.ReadEnum(); else log.SkipLastField();
                    break;
                default: input.SkipLastField(); break;
            }
        }
        return new Event(wall, step, version, status, values);
    }
}
