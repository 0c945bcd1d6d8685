#!/usr/bin/env python3
"""What a user would run instead of the engine: PyTorch eager, doing DPO the way TRL does by default.

One forward over [chosen; rejected], full-vocabulary logits, selective log-softmax (log_softmax + gather over the
response tokens), sigmoid DPO loss, AdamW; per step a policy forward+backward and a reference forward (and the variant
with precomputed reference log-probs); labelling (teacher + reference, no grad) in pairs/s; generation with the KV cache
in tokens/s; peak memory from torch.cuda.max_memory_allocated. OPT-125M and OPT-1.3B configs, random weights.

On a GPU node: Hugging Face transformers' OPTForCausalLM (bf16, attn_implementation="sdpa"), 16 pairs x 512 tokens.
Without transformers (this CPU machine, Debian's PyTorch 1.13) the same workloads run on a plain-PyTorch model of
OPT's shape (pre-norm blocks, ReLU FFN, tied head) with --quick sizes: it checks the script, not the numbers.

  python3 benchmarks/torch_baseline.py [--device cuda|cpu] [--quick] [--out FILE.md]
The table has the columns of ModelBench's GPU table: | model | workload | shape | ms/step | throughput | peak MiB |.
"""
import argparse, math, time
import torch
import torch.nn.functional as F

SIZES = {"opt-125m": dict(hidden=768, layers=12, heads=12, ffn=3072), "opt-1.3b": dict(hidden=2048, layers=24, heads=32, ffn=8192)}
VOCAB = 50272


class PlainOpt(torch.nn.Module):
    """OPT's shape in plain PyTorch, for machines without transformers."""

    def __init__(self, hidden, layers, heads, ffn, vocab=VOCAB, positions=2050):
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Embedding(positions, hidden)
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict(dict(
            ln1=torch.nn.LayerNorm(hidden), qkv=torch.nn.Linear(hidden, 3 * hidden), out=torch.nn.Linear(hidden, hidden),
            ln2=torch.nn.LayerNorm(hidden), fc1=torch.nn.Linear(hidden, ffn), fc2=torch.nn.Linear(ffn, hidden))) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(hidden)

    def forward(self, ids, past=None):
        b, t = ids.shape
        start = 0 if past is None else past[0][0].shape[2]
        x = self.embed(ids) + self.pos(torch.arange(start, start + t, device=ids.device) + 2)
        new_past = []
        for i, blk in enumerate(self.blocks):
            q, k, v = blk["qkv"](blk["ln1"](x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            if past is not None:
                k, v = torch.cat([past[i][0], k], 2), torch.cat([past[i][1], v], 2)
            new_past.append((k, v))
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=ids.device).tril(k.shape[2] - t)
            a = (scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
            x = x + blk["out"](a)
            x = x + blk["fc2"](F.relu(blk["fc1"](blk["ln2"](x))))
        return self.norm(x) @ self.embed.weight.t(), new_past


def build(name, device, dtype):
    try:
        from transformers import OPTConfig, OPTForCausalLM
    except ImportError:
        return PlainOpt(**SIZES[name]).to(device, dtype), "plain-torch"
    s = SIZES[name]
    config = OPTConfig(vocab_size=VOCAB, hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                       ffn_dim=s["ffn"], max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0)
    model = OPTForCausalLM._from_config(config, attn_implementation="sdpa", torch_dtype=dtype).to(device)
    return model, "transformers"


def logits_of(model, ids):
    out = model(ids)
    return out[0] if isinstance(out, tuple) else out.logits


def sequence_logps(model, ids, response_mask):
    """TRL's concatenated forward: full-vocabulary logits, selective log-softmax over the response tokens."""
    logits = logits_of(model, ids)[:, :-1].float()
    labels = ids[:, 1:]
    logp = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    return (logp * response_mask[:, 1:]).sum(-1)


def dpo_loss(policy, reference, beta=0.1):
    b = policy.shape[0] // 2
    logits = (policy[:b] - policy[b:]) - (reference[:b] - reference[b:])
    return -F.logsigmoid(beta * logits).mean()


def timed(fn, device, warm, iters):
    for _ in range(warm):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="opt-125m,opt-1.3b")
    p.add_argument("--out")
    a = p.parse_args()
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pairs, length, new_tokens, warm, iters = (16, 512, 64, 2, 5) if not a.quick else (2, 32, 4, 1, 1)
    rows = ["| model | workload | shape | ms/step | throughput | peak MiB |", "| --- | --- | --- | --- | --- | --- |"]
    torch.manual_seed(0)
    for name in a.models.split(","):
        if a.quick and name != "opt-125m":
            continue
        policy, impl = build(name, device, dtype)
        reference, _ = build(name, device, dtype)
        reference.eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
        ids = torch.randint(3, VOCAB, (2 * pairs, length), device=device)
        mask = torch.zeros(2 * pairs, length, device=device)
        mask[:, length // 2:] = 1
        shape = f"{pairs} pairs x {length}"

        def record(workload, ms, throughput):
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            rows.append(f"| {name} ({impl}) | {workload} | {shape} | {ms:.1f} | {throughput} | {peak:.0f} |")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

        def step(with_reference):
            with torch.no_grad():
                ref = sequence_logps(reference, ids, mask) if with_reference else precomputed
            loss = dpo_loss(sequence_logps(policy, ids, mask), ref)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        with torch.no_grad():
            precomputed = sequence_logps(reference, ids, mask)
        ms = timed(lambda: step(True), device, warm, iters)
        record("dpo step (policy + reference)", ms, f"{2 * pairs * length / ms * 1000:.0f} tok/s")
        ms = timed(lambda: step(False), device, warm, iters)
        record("dpo step (precomputed reference)", ms, f"{2 * pairs * length / ms * 1000:.0f} tok/s")

        def label():
            with torch.no_grad():
                sequence_logps(policy, ids, mask), sequence_logps(reference, ids, mask)
        ms = timed(label, device, warm, iters)
        record("labelling (teacher + reference)", ms, f"{pairs / ms * 1000:.1f} pairs/s")

        prompt = ids[:pairs, : length // 2]

        def generate():
            with torch.no_grad():
                if impl == "transformers":
                    policy.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    do_sample=False, use_cache=True, pad_token_id=1)
                    return
                logits, past = policy(prompt)
                token = logits[:, -1:].argmax(-1)
                for _ in range(new_tokens - 1):
                    logits, past = policy(token, past)
                    token = logits[:, -1:].argmax(-1)
        ms = timed(generate, device, 1, max(1, iters // 2))
        record(f"generation ({new_tokens} new, KV cache)", ms, f"{pairs * new_tokens / ms * 1000:.0f} tok/s")
        del policy, reference, optimizer
    text = f"PyTorch {torch.__version__} eager on {device} ({dtype}), TRL-style DPO\n\n" + "\n".join(rows) + "\n"
    print(text)
    if a.out:
        open(a.out, "w").write(text)


if __name__ == "__main__":
    main()
