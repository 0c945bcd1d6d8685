using TorchSharp;
using WeakTeacher.CudaKernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace WeakTeacher.Engine.Models;

/// <summary>
/// A linear projection y = x W^T + b with an optional LoRA adapter y += (alpha / r) * B(A(dropout(x))).
/// Parameter names match Hugging Face (weight, bias) and PEFT (lora_A.weight [r, in], lora_B.weight [out, r]).
/// GPT-2's Conv1D stores W as [in, out]; <see cref="FanInFanOut"/> keeps that layout so checkpoints load as-is.
/// </summary>
public sealed class Projection : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    public Parameter? bias;
    private Linear? lora_A;
    private Linear? lora_B;
    private Dropout? lora_dropout;

    public Projection(long inFeatures, long outFeatures, bool hasBias, bool fanInFanOut = false) : base("Projection")
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        FanInFanOut = fanInFanOut;
        weight = new Parameter(fanInFanOut ? empty(inFeatures, outFeatures) : empty(outFeatures, inFeatures));
        bias = hasBias ? new Parameter(zeros(outFeatures)) : null;
        // nn.Linear's default init; checkpoints overwrite it, pretraining from scratch re-initialises it
        nn.init.kaiming_uniform_(weight, Math.Sqrt(5));
        RegisterComponents();
    }

    public long InFeatures { get; }
    public long OutFeatures { get; }
    public bool FanInFanOut { get; }
    public int LoraRank { get; private set; }
    public double LoraScaling { get; private set; }
    public bool HasLora => lora_A is not null;

    public override Tensor forward(Tensor x)
    {
        // OpenBLAS on the CPU where installed (HostBlas: oneMKL inside libtorch is slower on AMD), else torch's product
        Tensor y = HostBlas.TryLinear(x, weight, bias, FanInFanOut) ?? (FanInFanOut
            ? (bias is null ? x.matmul(weight) : torch.addmm(bias, x.reshape(-1, InFeatures), weight, 1, 1).reshape(OutShape(x)))
            : nn.functional.linear(x, weight, bias));
        if (lora_A is null || lora_B is null) return y;
        using var scope = NewDisposeScope();
        var update = lora_B.forward(lora_A.forward(lora_dropout!.forward(x))).Mul(LoraScaling);
        return y.Add(update).MoveToOuterDisposeScope();
    }

    private long[] OutShape(Tensor x)
    {
        var shape = x.shape.ToArray();
        shape[^1] = OutFeatures;
        return shape;
    }

    /// <summary>
    /// Adds a LoRA adapter (A ~ kaiming-uniform, B = 0, as PEFT initialises it) and freezes W and b. A is drawn from
    /// <paramref name="generator"/> when given, so that two runs of the same training job start from the same adapter.
    /// </summary>
    public void AttachLora(int rank, double alpha, double dropout, Generator? generator = null)
    {
        if (rank <= 0) throw new ArgumentOutOfRangeException(nameof(rank), rank, "LoRA rank must be positive");
        if (HasLora) throw new InvalidOperationException("This projection already has a LoRA adapter.");
        var device = weight.device;
        var dtype = weight.dtype;
        lora_A = nn.Linear(InFeatures, rank, hasBias: false, device: device, dtype: dtype);
        lora_B = nn.Linear(rank, OutFeatures, hasBias: false, device: device, dtype: dtype);
        using (no_grad())
        {
            // kaiming_uniform_(a = sqrt(5)) is U(-1/sqrt(in), 1/sqrt(in)); drawn here so the generator can be chosen
            double bound = 1.0 / Math.Sqrt(InFeatures);
            lora_A.weight!.copy_(rand(lora_A.weight!.shape, ScalarType.Float32, generator: generator).Mul(2 * bound).Sub(bound).to(dtype, device));
            lora_B.weight!.zero_();
        }
        // a registered child (PEFT's lora_dropout), so train()/eval() and disable_dropout reach it
        lora_dropout = nn.Dropout(dropout);
        lora_dropout.train(training);
        LoraRank = rank;
        LoraScaling = alpha / rank;
        register_module("lora_dropout", lora_dropout);
        register_module("lora_A", lora_A);
        register_module("lora_B", lora_B);
        weight.requires_grad = false;
        if (bias is not null) bias.requires_grad = false;
    }

    /// <summary>Folds the adapter into W (W += scaling * B A) and removes it.</summary>
    public void MergeLora()
    {
        if (lora_A is null || lora_B is null) return;
        using (no_grad())
        using (NewDisposeScope())
        {
            var delta = lora_B.weight!.matmul(lora_A.weight!).Mul(LoraScaling); // [out, in]
            weight.AddInPlace(FanInFanOut ? delta.t() : delta);
        }
        RemoveLora();
        weight.requires_grad = true;
        if (bias is not null) bias.requires_grad = true;
    }

    private void RemoveLora()
    {
        lora_A?.Dispose();
        lora_B?.Dispose();
        lora_dropout?.Dispose();
        lora_A = lora_B = null;
        lora_dropout = null;
        LoraRank = 0;
        LoraScaling = 0;
        // re-register the remaining parameters only (TorchSharp has no unregister)
        _internal_submodules.Remove("lora_dropout");
        _internal_submodules.Remove("lora_A");
        _internal_submodules.Remove("lora_B");
    }
}
