#!/usr/bin/env python3
"""What a user would run instead of the engine: PyTorch eager, doing DPO the way TRL does by default.

One forward over [chosen; rejected] right-padded to the batch's longest, full-vocabulary logits, selective log-softmax
(log_softmax + gather over the response tokens), sigmoid DPO loss, gradient clipping, AdamW; per step a policy
forward+backward and a reference forward (and the variant with precomputed reference log-probs); labelling (teacher +
reference, no grad) in pairs/s; greedy generation with the KV cache, left-padded as transformers' generate does.

Two modes:
  python3 benchmarks/torch_baseline.py [--device cuda|cpu] [--quick] [--out FILE.md]
      the GPU table (OPT-125M and OPT-1.3B configs, random weights, 16 pairs x 512; --quick: 2 x 32 on opt-125m), in
      the columns of ModelBench's GPU table: | model | workload | shape | ms/step | throughput | peak MiB |.
  python3 benchmarks/torch_baseline.py --record SPEC.json --result RESULT.json
      one side of the benchmark of record (ModelBench --suite record writes SPEC, runs this and the engine alternately,
      and reads RESULT): the weights from the engine's Hugging Face checkpoint folders (config.json + model.safetensors,
      read here with numpy, or by transformers where it is installed), the spec's pairs in its batches (input order, as
      a plain script or TRL's dataloader gives them), timings per pass, peak RSS of the timed part, the BLAS mapped.

On a GPU node the model is transformers' OPTForCausalLM (bf16, attn_implementation="sdpa"); without transformers (this
CPU machine, Debian's PyTorch 1.13) it is OptModel below: OPT as transformers computes it (pre-norm blocks, ReLU FFN,
learned positions offset by 2 and counted over real tokens, tied head), with transformers' parameter names.
"""
import argparse, json, math, os, time
import torch
import torch.nn.functional as F

SIZES = {"opt-125m": dict(hidden=768, layers=12, heads=12, ffn=3072), "opt-1.3b": dict(hidden=2048, layers=24, heads=32, ffn=8192)}
VOCAB = 50272


class OptLayer(torch.nn.Module):
    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.heads = heads
        self.self_attn = torch.nn.ModuleDict(dict(q_proj=torch.nn.Linear(hidden, hidden), k_proj=torch.nn.Linear(hidden, hidden),
                                                  v_proj=torch.nn.Linear(hidden, hidden), out_proj=torch.nn.Linear(hidden, hidden)))
        self.self_attn_layer_norm = torch.nn.LayerNorm(hidden)
        self.fc1 = torch.nn.Linear(hidden, ffn)
        self.fc2 = torch.nn.Linear(ffn, hidden)
        self.final_layer_norm = torch.nn.LayerNorm(hidden)

    def forward(self, x, bias, past):
        b, t, _ = x.shape
        a = self.self_attn
        h = self.self_attn_layer_norm(x)
        split = lambda y: y.view(b, t, self.heads, -1).transpose(1, 2)
        q, k, v = split(a["q_proj"](h) * (x.shape[-1] // self.heads) ** -0.5), split(a["k_proj"](h)), split(a["v_proj"](h))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        attended = ((q @ k.transpose(-1, -2) + bias).softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + a["out_proj"](attended)
        return x + self.fc2(F.relu(self.fc1(self.final_layer_norm(x)))), (k, v)


class OptModel(torch.nn.Module):
    """OPT in plain PyTorch, for machines without transformers; state_dict names are transformers' without 'model.decoder.'."""

    def __init__(self, hidden, layers, heads, ffn, vocab=VOCAB, positions=2048):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, hidden)
        self.embed_positions = torch.nn.Embedding(positions + 2, hidden)
        self.layers = torch.nn.ModuleList(OptLayer(hidden, heads, ffn) for _ in range(layers))
        self.final_layer_norm = torch.nn.LayerNorm(hidden)

    def forward(self, ids, attention_mask=None, past=None):
        """Logits [B, T, V] and the new key/value cache. attention_mask [B, past + T] (1 real, 0 padding) as transformers'."""
        b, t = ids.shape
        start = 0 if past is None else past[0][0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(b, start + t, dtype=torch.long, device=ids.device)
        positions = (attention_mask.cumsum(1) * attention_mask - 1).clamp_min(0)[:, start:] + 2
        x = self.embed_tokens(ids) + self.embed_positions(positions)
        causal = torch.ones(t, start + t, dtype=torch.bool, device=ids.device).tril(start)
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=ids.device).masked_fill(~allowed, torch.finfo(x.dtype).min)
        new_past = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, bias, None if past is None else past[i])
            new_past.append(kv)
        return self.final_layer_norm(x) @ self.embed_tokens.weight.t(), new_past


def read_safetensors(path):
    """name -> tensor, from a .safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    import numpy as np
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            raw = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.int16).to(torch.int32) << 16
            out[name] = raw.view(torch.float32).reshape(info["shape"]).clone()
        else:
            out[name] = torch.from_numpy(np.frombuffer(data, dtype=dtypes[info["dtype"]], count=math.prod(info["shape"]) or 0,
                                                       offset=begin).reshape(info["shape"]).copy())
    return out


def load(folder, device, dtype):
    """The engine's checkpoint folder as a model: transformers' OPTForCausalLM where installed, else OptModel."""
    try:
        from transformers import OPTForCausalLM
        return OPTForCausalLM.from_pretrained(folder, torch_dtype=dtype, attn_implementation="sdpa").to(device), "transformers"
    except ImportError:
        pass
    config = json.load(open(os.path.join(folder, "config.json")))
    if config.get("model_type") != "opt" or not config.get("do_layer_norm_before", True):
        raise SystemExit(f"{folder}: only pre-norm OPT checkpoints are supported without transformers")
    model = OptModel(config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"], config["ffn_dim"],
                     config["vocab_size"], config["max_position_embeddings"])
    weights = {k.removeprefix("model.decoder."): v for k, v in read_safetensors(os.path.join(folder, "model.safetensors")).items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise SystemExit(f"{folder}: weights do not match OPT's names (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device, dtype), "plain-torch"


def build(name, device, dtype):
    try:
        from transformers import OPTConfig, OPTForCausalLM
    except ImportError:
        return OptModel(**SIZES[name]).to(device, dtype), "plain-torch"
    s = SIZES[name]
    config = OPTConfig(vocab_size=VOCAB, hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                       ffn_dim=s["ffn"], max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0)
    model = OPTForCausalLM._from_config(config, attn_implementation="sdpa", torch_dtype=dtype).to(device)
    return model, "transformers"


def logits_of(model, ids, attention_mask=None):
    out = model(ids, attention_mask=attention_mask)
    return out[0] if isinstance(out, tuple) else out.logits


def sequence_logps(model, ids, response_mask, attention_mask=None):
    """TRL's concatenated forward: full-vocabulary logits, selective log-softmax over the response tokens."""
    logits = logits_of(model, ids, attention_mask)[:, :-1].float()
    labels = ids[:, 1:]
    logp = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    return (logp * response_mask[:, 1:]).sum(-1)


def dpo_loss(policy, reference, beta=0.1):
    """Sigmoid DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta ((pi_c - pi_r) - (ref_c - ref_r)))."""
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


def table(a):
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
                greedy(policy, impl, prompt, torch.ones_like(prompt), new_tokens)
        ms = timed(generate, device, 1, max(1, iters // 2))
        record(f"generation ({new_tokens} new, KV cache)", ms, f"{pairs * new_tokens / ms * 1000:.0f} tok/s")
        del policy, reference, optimizer
    text = f"PyTorch {torch.__version__} eager on {device} ({dtype}), TRL-style DPO\n\n" + "\n".join(rows) + "\n"
    print(text)
    if a.out:
        open(a.out, "w").write(text)


def greedy(model, impl, prompt, prompt_mask, new_tokens):
    """Greedy decoding of exactly new_tokens tokens with the KV cache; the new ids [B, new_tokens]."""
    if impl == "transformers":
        out = model.generate(prompt, attention_mask=prompt_mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, use_cache=True, pad_token_id=1)
        return out[:, prompt.shape[1]:]
    mask = prompt_mask
    logits, past = model(prompt, mask)
    token = logits[:, -1:].argmax(-1)
    out = [token]
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, torch.ones_like(token)], 1)
        logits, past = model(token, mask, past)
        token = logits[:, -1:].argmax(-1)
        out.append(token)
    return torch.cat(out, 1)


# ---- the benchmark of record's PyTorch side ----

def peak_rss_reset():
    """Resets VmHWM (Linux: writing 5 to /proc/self/clear_refs), so the peak read later is the timed part's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def status_mib(field):
    """VmHWM (peak) or VmRSS (now) of this process, in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def loaded_blas():
    """The BLAS/OpenMP libraries mapped into this process, from /proc/self/maps."""
    names = set()
    for line in open("/proc/self/maps"):
        parts = line.split()
        if len(parts) >= 6:
            base = os.path.basename(parts[-1])
            if any(k in base.lower() for k in ("blas", "mkl", "lapack")) or base.startswith(("libgomp", "libiomp", "libtorch_cpu")):
                names.add(base)
    return ", ".join(sorted(names)) or "none mapped"


def pad_right(sequences, pad):
    """[N, T] ids right-padded to the longest, the real-token mask, the response mask; sequences are (prompt, response)."""
    width = max(len(p) + len(r) for p, r in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    response = torch.zeros(len(sequences), width)
    for i, (p, r) in enumerate(sequences):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, : len(p) + len(r)] = 1
        response[i, len(p): len(p) + len(r)] = 1
    return ids, mask, response


def record(spec_path, result_path):
    spec = json.load(open(spec_path))
    base_rss = status_mib("VmRSS")  # the runtime alone, before any model
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device, dtype, kind, pad = torch.device("cpu"), torch.float32, spec["workload"], spec["pad_id"]
    pairs = spec.get("pairs", [])
    batches = spec["batches"]
    result = dict(side="pytorch", runtime=f"PyTorch {torch.__version__} eager", threads=torch.get_num_threads())

    def collate(batch):
        # [chosen; rejected] of the batch's pairs in one right-padded tensor, as TRL's concatenated forward
        seqs = [(pairs[i][0], pairs[i][1]) for i in batch] + [(pairs[i][0], pairs[i][2]) for i in batch]
        return pad_right(seqs, pad)

    collated = [collate(b) for b in batches] if kind != "generate" else []
    real = sum(int(m.sum()) for _, m, _ in collated)
    cells = sum(m.numel() for _, m, _ in collated)
    policy, impl = load(spec["policy"], device, dtype)
    result["model"] = impl
    warm = spec.get("warmup_batches", 1)

    if kind in ("dpo", "dpo_ref"):
        # TRL: the reference is the initial policy (a second copy); precompute_ref_log_probs keeps only its log-probs
        reference, _ = load(spec["policy"], device, dtype)
        reference.eval().requires_grad_(False)
        with torch.no_grad():
            precomputed = [sequence_logps(reference, ids, resp, mask) for ids, mask, resp in collated]
        result["check"] = [float(v) for p in precomputed for v in p]
        if kind == "dpo":
            del reference
        policy.train()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=spec["lr"], weight_decay=0.0)
        losses = []

        def step(k):
            ids, mask, resp = collated[k]
            if kind == "dpo_ref":
                with torch.no_grad():
                    ref = sequence_logps(reference, ids, resp, mask)
            else:
                ref = precomputed[k]
            loss = dpo_loss(sequence_logps(policy, ids, resp, mask), ref, spec["beta"])
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), spec["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append((float(loss), float(norm)))
        run = step
    elif kind == "label":
        reference, _ = load(spec["reference"], device, dtype)
        policy.eval().requires_grad_(False)
        reference.eval().requires_grad_(False)
        rewards = {}

        def run(k):
            ids, mask, resp = collated[k]
            with torch.no_grad():
                r = sequence_logps(policy, ids, resp, mask) - sequence_logps(reference, ids, resp, mask)
            n = len(batches[k])
            for j, i in enumerate(batches[k]):
                rewards[i] = (float(r[j]), float(r[n + j]))
    elif kind == "generate":
        policy.eval().requires_grad_(False)
        prompts = spec["prompts"]
        new_tokens = spec["new_tokens"]
        left = []
        for b in batches:
            width = max(len(prompts[i]) for i in b)
            ids = torch.full((len(b), width), pad, dtype=torch.long)
            mask = torch.zeros(len(b), width, dtype=torch.long)
            for j, i in enumerate(b):
                ids[j, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[j, width - len(prompts[i]):] = 1
            left.append((ids, mask))
        real = sum(len(p) for p in prompts)
        cells = sum(m.numel() for _, m in left)
        generated = {}

        def run(k):
            with torch.no_grad():
                out = greedy(policy, impl, *left[k], new_tokens)
            for j, i in enumerate(batches[k]):
                generated[i] = out[j].tolist()
    else:
        raise SystemExit(f"{spec_path}: unknown workload '{kind}'")

    for k in range(min(warm, len(batches))):
        run(k)
    peak_rss_reset()
    times = []
    for _ in range(spec["iters"]):
        t0 = time.perf_counter()
        for k in range(len(batches)):
            run(k)
        times.append((time.perf_counter() - t0) * 1000)
    result.update(times_ms=times, real_tokens=real, cells=cells, peak_rss_mib=status_mib("VmHWM"), base_rss_mib=base_rss, blas=loaded_blas())
    if kind in ("dpo", "dpo_ref"):
        result["first_loss"], result["first_grad_norm"] = losses[0]
    elif kind == "label":
        result["check"] = [v for i in range(len(pairs)) for v in rewards[i]]
    else:
        result["generated"] = [generated[i] for i in range(len(spec["prompts"]))]
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(result_path + ".tmp", result_path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="opt-125m,opt-1.3b")
    p.add_argument("--out")
    p.add_argument("--record", metavar="SPEC.json", help="run one side of the benchmark of record (ModelBench --suite record)")
    p.add_argument("--result", metavar="RESULT.json")
    a = p.parse_args()
    if a.record:
        if not a.result:
            p.error("--record needs --result")
        record(a.record, a.result)
    else:
        table(a)


if __name__ == "__main__":
    main()
