using TorchSharp;
using WeakTeacher.Engine.Data;
using WeakTeacher.Engine.LogProbs;
using Xunit;
using static TorchSharp.torch;

namespace WeakTeacher.Tests.Training;

/// <summary>
/// Scored rows, labels and the id check come from the batch's host-side tensors (issue 12 point 6): on CUDA nothing is
/// read back from the device before the head and the backward are queued. Here (CPU) the host path is the only one a
/// collated batch takes; these tests pin that it gives what the device path gives and that bad ids fail on the host.
/// </summary>
public class HostSideRowsTests
{
    private static PreferenceBatch Batch()
    {
        var pairs = TrainingTestKit.XPreferences(3, 11)
            .Select(e => new PreferenceTokenizer(TrainingTestKit.Tokenizer, new TokenizationOptions()).Tokenize(e)).ToArray();
        return Collator.CollatePreferences(pairs, TrainingTestKit.Tokenizer.PadTokenId, CPU);
    }

    [Fact]
    public void TheBatchKeepsHostCopiesOfIdsAndResponseMask()
    {
        using var batch = Batch();
        Assert.Equal(DeviceType.CPU, batch.HostInputIds.device_type);
        Assert.True(batch.HostInputIds.eq(batch.InputIds).all().item<bool>());
        Assert.True(batch.HostResponseMask.eq(batch.ResponseMask).all().item<bool>());
    }

    [Fact]
    public void BatchOverloadsEqualTheTensorOverloadsBitForBit()
    {
        using var model = TrainingTestKit.Opt(7);
        using var batch = Batch();
        using var noGrad = no_grad();
        var fromBatch = ResponseLogProbs.Compute(model, batch);
        // tensors without host copies in a batch: clones, so nothing is shared with the batch
        var fromTensors = ResponseLogProbs.Compute(model, batch.InputIds.clone(), batch.AttentionMask.clone(), batch.ResponseMask.clone());
        Assert.True(fromBatch.eq(fromTensors).all().item<bool>());
        using var detailBatch = ResponseLogProbs.ComputeDetailed(model, batch, wpo: true);
        using var detailTensors = ResponseLogProbs.ComputeDetailed(model, batch.InputIds, batch.AttentionMask, batch.ResponseMask, wpo: true);
        foreach (var (a, b) in new[] { (detailBatch.SequenceLogps, detailTensors.SequenceLogps), (detailBatch.TokenLogps, detailTensors.TokenLogps),
                     (detailBatch.SequenceIndex, detailTensors.SequenceIndex), (detailBatch.TokenCounts, detailTensors.TokenCounts),
                     (detailBatch.LogitSums, detailTensors.LogitSums), (detailBatch.WpoLogWeights!, detailTensors.WpoLogWeights!) })
            Assert.True(a.eq(b).all().item<bool>());
        // response tokens per row: what the host mask says
        var expected = batch.HostResponseMask.narrow(1, 1, batch.SequenceLength - 1).sum(1);
        Assert.True(detailBatch.TokenCounts.eq(expected).all().item<bool>());
    }

    [Fact]
    public void AnIdOutsideTheVocabularyIsOneClearErrorFromTheHost()
    {
        using var model = TrainingTestKit.Opt(7);
        using var batch = Batch();
        batch.HostInputIds[1, 2] = tensor(64L);   // vocabulary is 64: the prompt token at row 1, column 2
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => ResponseLogProbs.Compute(model, batch));
        Assert.Contains("input_ids[1, 2] = 64 is outside the model's vocabulary [0, 64)", error.Message);
        batch.HostInputIds[1, 2] = tensor(-3L);
        Assert.Contains("input_ids[1, 2] = -3", Assert.Throws<ArgumentOutOfRangeException>(() => ResponseLogProbs.Compute(model, batch)).Message);
    }
}
