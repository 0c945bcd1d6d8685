using WeakTeacher.Engine.Runtime;
using Xunit;

namespace WeakTeacher.Tests.Runtime;

/// <summary>WT_FAILPOINTS, the crash tests' fault-injection setting: the forms it takes and its errors.</summary>
public sealed class FailpointsTests
{
    [Fact]
    public void EveryFormOfTheSettingArmsWhatItNames()
    {
        var armed = Failpoints.Parse($" {Failpoints.TrainingStepDone}@18 , {Failpoints.LeaseRenewing}:freeze,{Failpoints.ModelSaveStaged}@2:freeze ");
        Assert.Equal(new Failpoints.Arming(18, Freeze: false), armed[Failpoints.TrainingStepDone]);
        Assert.Equal(new Failpoints.Arming(1, Freeze: true), armed[Failpoints.LeaseRenewing]);
        Assert.Equal(new Failpoints.Arming(2, Freeze: true), armed[Failpoints.ModelSaveStaged]);
        Assert.Empty(Failpoints.Parse(null));
        Assert.Empty(Failpoints.Parse(""));
    }

    [Theory]
    [InlineData("training.step@0")]
    [InlineData("training.step@-1")]
    [InlineData("training.step@x")]
    [InlineData("training.step:stop")]
    [InlineData("@3")]
    [InlineData(":freeze")]
    public void AMalformedEntryIsRefusedNamingTheVariableAndTheEntry(string entry)
    {
        var e = Assert.Throws<ArgumentException>(() => Failpoints.Parse(entry));
        Assert.Contains(Failpoints.Variable, e.Message);
        Assert.Contains($"'{entry}'", e.Message);
    }
}
