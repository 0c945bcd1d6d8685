using TorchSharp;
using TorchSharp.Modules;

namespace WeakTeacher.Engine.Models;

/// <summary>The dropout layers of a model (every family's, and LoRA's, are registered <see cref="Dropout"/> modules).</summary>
public static class Dropouts
{
    /// <summary>
    /// TRL's disable_dropout_in_model (trl/trainer/utils.py): p = 0 on every dropout module of <paramref name="model"/>,
    /// so that training-mode forwards match the eval-mode reference log-probs. Returns how many were set.
    /// </summary>
    public static int Disable(torch.nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        int count = 0;
        foreach (var (_, module) in model.named_modules())
            if (module is Dropout dropout)
            {
                dropout.p = 0;
                count++;
            }
        return count;
    }
}
