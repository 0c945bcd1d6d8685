using System.Text.Json;
using WeakTeacher.Engine.Synthetic;
using Xunit;

namespace WeakTeacher.Tests.Synthetic;

public sealed class SyntheticTaskTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "wt-synth-tests-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
    }

    private static SyntheticTaskOptions Small(int seed) => new()
    {
        Seed = seed, LabelledPairs = 48, UnlabelledPairs = 96, EvalPrompts = 24, PretrainCorpusSize = 80,
    };

    private static Dictionary<string, byte[]> SaveAndRead(SyntheticTask task, string dir)
    {
        task.Save(dir);
        return Directory.GetFiles(dir).ToDictionary(f => Path.GetFileName(f) ?? f, File.ReadAllBytes);
    }

    [Fact]
    public void SameSeedGivesByteIdenticalFiles_DifferentSeedDiffers()
    {
        var a = SaveAndRead(SyntheticTask.Generate(Small(7)), Path.Combine(_root, "a"));
        var b = SaveAndRead(SyntheticTask.Generate(Small(7)), Path.Combine(_root, "b"));
        var c = SaveAndRead(SyntheticTask.Generate(Small(8)), Path.Combine(_root, "c"));

        Assert.Equal(6, a.Count);
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        foreach (var (name, bytes) in a) Assert.True(bytes.AsSpan().SequenceEqual(b[name]), $"{name} differs between two runs with one seed");
        foreach (var name in new[] { SyntheticTask.LabelledFile, SyntheticTask.UnlabelledFile, SyntheticTask.EvalPromptsFile, SyntheticTask.PretrainFile })
            Assert.False(a[name].AsSpan().SequenceEqual(c[name]), $"{name} is the same for seeds 7 and 8");
    }

    [Fact]
    public void HumanLabelsAgreeWithGoldOnAboutSeventyPercent()
    {
        var task = SyntheticTask.Generate(new SyntheticTaskOptions
        {
            Seed = 11, LabelledPairs = 0, UnlabelledPairs = 4000, EvalPrompts = 0, PretrainCorpusSize = 0,
        });
        Assert.InRange(task.UnlabelledHumanGoldAgreement, 0.66, 0.74);
        // The calibrated temperature gives ~70% expected agreement on a fresh sample too, not only on its own.
        double expected = SyntheticTask.ExpectedAgreement(task.Unlabelled.Select(p => p.GoldA - p.GoldB).ToList(), task.HumanTemperature);
        Assert.InRange(expected, 0.68, 0.72);
        // Noisy, not arbitrary: no pair is a gold tie, and gold gaps are moderate (hard pairs).
        Assert.All(task.Unlabelled, p => Assert.True(Math.Abs(p.GoldA - p.GoldB) >= 0.1));
        var gaps = task.Unlabelled.Select(p => Math.Abs(p.GoldA - p.GoldB)).Order().ToList();
        Assert.InRange(gaps[gaps.Count / 2], 1.0, 3.5);
    }

    [Fact]
    public void CalibrationMatchesTheClosedFormForEqualGaps()
    {
        // sigmoid(1 / T) = 0.7  <=>  T = 1 / ln(0.7 / 0.3)
        double t = SyntheticTask.CalibrateTemperature([1.0, -1.0, 1.0], 0.7);
        Assert.Equal(1.0 / Math.Log(0.7 / 0.3), t, 6);
        Assert.Equal(0.7, SyntheticTask.ExpectedAgreement([1.0, -1.0], t), 9);
        Assert.Throws<ArgumentOutOfRangeException>(() => SyntheticTask.CalibrateTemperature([1.0], 0.4));
    }

    [Fact]
    public void DefaultTemperatureIsTheCalibratedOne()
    {
        // The constant must follow the generator and the gold reward: re-run the search it came from.
        double calibrated = SyntheticTask.CalibrateHumanTemperature();
        Assert.InRange(calibrated, SyntheticTask.DefaultHumanTemperature - 0.03, SyntheticTask.DefaultHumanTemperature + 0.03);
    }

    [Fact]
    public void TemperatureControlsLabelNoise()
    {
        var options = new SyntheticTaskOptions { Seed = 3, LabelledPairs = 0, UnlabelledPairs = 800, EvalPrompts = 0, PretrainCorpusSize = 0 };
        var sharp = SyntheticTask.Generate(options with { HumanTemperature = 0.05 });
        var noisy = SyntheticTask.Generate(options with { HumanTemperature = 1000 });
        Assert.True(sharp.UnlabelledHumanGoldAgreement > 0.97);
        Assert.InRange(noisy.UnlabelledHumanGoldAgreement, 0.44, 0.56);
        // Only the labels change with the temperature; the pairs are the same texts.
        Assert.Equal(sharp.Unlabelled.Select(p => p.ResponseA), noisy.Unlabelled.Select(p => p.ResponseA));
    }

    [Fact]
    public void FilesHaveTheDocumentedFields()
    {
        var task = SyntheticTask.Generate(Small(5));
        string dir = Path.Combine(_root, "files");
        task.Save(dir);

        var labelled = File.ReadAllLines(Path.Combine(dir, SyntheticTask.LabelledFile));
        Assert.Equal(48, labelled.Length);
        for (int i = 0; i < labelled.Length; i++)
        {
            using var doc = JsonDocument.Parse(labelled[i]);
            Assert.Equal(task.Labelled[i].Prompt, doc.RootElement.GetProperty("prompt").GetString());
            Assert.Equal(task.Labelled[i].Chosen, doc.RootElement.GetProperty("chosen").GetString());
            Assert.Equal(task.Labelled[i].Rejected, doc.RootElement.GetProperty("rejected").GetString());
            Assert.NotEqual(task.Labelled[i].Chosen, task.Labelled[i].Rejected);
        }

        var unlabelled = File.ReadAllLines(Path.Combine(dir, SyntheticTask.UnlabelledFile));
        var gold = File.ReadAllLines(Path.Combine(dir, SyntheticTask.UnlabelledGoldFile));
        Assert.Equal(96, unlabelled.Length);
        Assert.Equal(96, gold.Length);
        var g = new GoldReward();
        for (int i = 0; i < unlabelled.Length; i++)
        {
            using var doc = JsonDocument.Parse(unlabelled[i]);
            using var goldDoc = JsonDocument.Parse(gold[i]);
            var row = doc.RootElement;
            int label = row.GetProperty("label").GetInt32();
            Assert.Contains(label, new[] { 0, 1 });
            Assert.Equal(label, goldDoc.RootElement.GetProperty("human_label").GetInt32());
            // The stored gold label is the gold reward's preference between the two stored texts.
            double ga = g.Score(row.GetProperty("prompt").GetString()!, row.GetProperty("response_a").GetString()!);
            double gb = g.Score(row.GetProperty("prompt").GetString()!, row.GetProperty("response_b").GetString()!);
            Assert.Equal(ga > gb ? 0 : 1, goldDoc.RootElement.GetProperty("gold_label").GetInt32());
        }

        var trainPrompts = task.Labelled.Select(p => p.Prompt).Concat(task.Unlabelled.Select(p => p.Prompt)).ToHashSet();
        var evalLines = File.ReadAllLines(Path.Combine(dir, SyntheticTask.EvalPromptsFile));
        Assert.Equal(24, evalLines.Length);
        foreach (var line in evalLines)
        {
            using var doc = JsonDocument.Parse(line);
            string prompt = doc.RootElement.GetProperty("prompt").GetString()!;
            Assert.DoesNotContain(prompt, trainPrompts);
            Assert.NotEqual(SyntheticPromptKind.Unknown, SyntheticPrompt.Parse(prompt).Kind);
        }

        var corpus = File.ReadAllLines(Path.Combine(dir, SyntheticTask.PretrainFile));
        Assert.Equal(80, corpus.Length);
        foreach (var line in corpus)
        {
            using var doc = JsonDocument.Parse(line);
            string text = doc.RootElement.GetProperty("text").GetString()!;
            Assert.StartsWith("Question: ", text);
            Assert.Contains("\n\nAnswer: ", text);
        }

        using var meta = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, SyntheticTask.MetadataFile)));
        Assert.Equal(task.HumanTemperature, meta.RootElement.GetProperty("human_temperature").GetDouble());
        Assert.Equal(96, meta.RootElement.GetProperty("counts").GetProperty("unlabelled").GetInt32());
    }

    [Fact]
    public void TextsAreShortAndPromptsOfEveryKind()
    {
        var task = SyntheticTask.Generate(new SyntheticTaskOptions { Seed = 2, LabelledPairs = 400, UnlabelledPairs = 0, EvalPrompts = 0, PretrainCorpusSize = 0 });
        var kinds = task.Labelled.Select(p => SyntheticPrompt.Parse(p.Prompt).Kind).ToHashSet();
        Assert.Equal(Enum.GetValues<SyntheticPromptKind>().Where(k => k != SyntheticPromptKind.Unknown).ToHashSet(), kinds);
        Assert.All(task.Labelled, p => Assert.InRange(TextTools.Words(p.Prompt).Count, 3, 20));
        var lengths = task.Labelled.SelectMany(p => new[] { p.Chosen, p.Rejected }).Select(r => TextTools.Words(r).Count).Order().ToList();
        Assert.InRange(lengths[lengths.Count / 2], 5, 30);
        Assert.True(lengths[^1] <= 70, $"longest response has {lengths[^1]} words");
    }

    [Fact]
    public void GeneratorWritesOnlyKnownWordsUnlessMalformedWithJunk()
    {
        var rng = new SyntheticRandom(42);
        for (int i = 0; i < 500; i++)
        {
            var prompt = SyntheticPrompt.Sample(rng);
            var aspects = ResponseAspects.Sample(rng) with { Malformation = Malformation.None };
            string response = ResponseGenerator.Generate(prompt, aspects, rng);
            foreach (var w in TextTools.Words(prompt.Text + " " + response))
                Assert.True(char.IsDigit(w[0]) || SyntheticWorld.Lexicon.Contains(w), $"'{w}' in '{prompt.Text}' / '{response}' is not in the lexicon");
            // The parser recovers what the sampler built.
            var parsed = SyntheticPrompt.Parse(prompt.Text);
            Assert.Equal(prompt.Kind, parsed.Kind);
            Assert.Equal(prompt.Truth, parsed.Truth);
            Assert.Equal(prompt.Value, parsed.Value);
        }
    }

    [Fact]
    public void InvalidOptionsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => SyntheticTask.Generate(new SyntheticTaskOptions { LabelledPairs = -1 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => SyntheticTask.Generate(new SyntheticTaskOptions { HumanTemperature = 0 }));
    }
}
