#!/usr/bin/env bash
# Every GPU check of the engine and the kernels in one run on the GPU machine. Nothing is built there:
# benchmarks/device/pack.sh fills .device/ here first. Then, with the device tool:
#   run(command="bash benchmarks/device/gpu-checks.sh", carry=[".device"], timeout_s=540)
# The whole run is capped at WT_BUDGET_S (450 s): each step gets its own limit or what is left of the budget, whichever
# is less, and a step with under 10 s left is skipped (its row says so). So the tool's timeout is never what stops it.
# Written under $OUT as the run goes (the device tool brings back at most 8 files, so the logs share one file):
#   $OUT/steps.log     every step's output, appended live under a "== step" header (a kill keeps all of it)
#   $OUT/summary.txt   one row per step, written as each step ends
# Steps (limit):
#   kernels      (100 s) CudaKernels.Tests: GPU kernels against float64 (NaN-poisoned outputs), NVRTC for this card, pool
#   fixtures      (60 s) tests/fixtures/hf-own/make_own_fixtures.py with the machine's transformers -> $OUT/hf-own.tar.gz
#   parity-cuda   (80 s) WeakTeacher.Tests Models + Generation with WT_DEVICE=cuda: HF parity on CUDA
#   engine-dpo   (150 s) ModelBench --suite dpo --dtype bfloat16: the engine's DPO step (with / without the reference
#                        forward, per-stage breakdown), labelling, generation; OPT-125M and OPT-1.3B configs, 16 pairs x
#                        512 tokens -> $OUT/engine-dpo-cuda.md (the baseline's table format)
#   torch-baseline (90 s) benchmarks/torch_baseline.py: transformers + PyTorch eager, TRL-style -> $OUT/baseline-cuda.md
#   kernelbench   (90 s) KernelBench --device cuda -> $OUT/kernels-cuda.md
#   modelbench    (90 s) ModelBench --device cuda --dtype bfloat16 -> $OUT/model-cuda.md
# (engine-dpo and torch-baseline come before the kernel and model benchmarks: their one table is the run's headline
# figure, so the budget cuts the secondary tables first.)
# Before the steps, untimed: the .NET runtime is unpacked once (into a temporary folder, then renamed, so a kill never
# leaves half a runtime) and the library paths are found once (one python3 import of torch) and exported.
# Dry run here (WT_DRY_RUN=1, what `./build.sh device-dry-run` does): the CPU libtorch of the build output instead of
# PyTorch's, no nvidia-smi or transformers, WT_DEVICE=cpu and --quick CPU benchmarks, each step capped at
# WT_DRY_STEP_S (60 s): it checks the runtime unpacking, the paths, the per-step logs and the summary rows.
# Commit the .md files to benchmarks/results/ and hf-own.tar.gz's folders to tests/fixtures/hf-own/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${OUT:-/tmp/wt-gpu-checks}
dry=${WT_DRY_RUN:-0}
budget=${WT_BUDGET_S:-450}
mkdir -p "$out"
: >"$out/summary.txt"
: >"$out/steps.log"
t_start=$SECONDS

fail() { echo "gpu-checks: $*" | tee -a "$out/summary.txt" >&2; exit 2; }

# --- untimed set-up, once -------------------------------------------------------------------------------------------
work=${WT_DEVICE_WORK:-/tmp/wt-device}
apps=$work/apps
export DOTNET_ROOT=$work/dotnet DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_gcServer=0
unpack() {   # unpack TARBALL DEST: into DEST.partial, renamed when complete (a marker file says it is)
  [[ -f $2/.complete ]] && return 0
  rm -rf "$2" "$2.partial" && mkdir -p "$2.partial" && tar -xJf "$1" -C "$2.partial" && touch "$2.partial/.complete" && mv "$2.partial" "$2"
}
runtime=$(ls .device/dotnet-runtime-*.tar.xz 2>/dev/null | head -1)
[[ -n $runtime && -f .device/gpu-checks.tar.xz ]] || fail ".device/ is missing its tarballs; run benchmarks/device/pack.sh here and carry .device"
unpack "$runtime" "$DOTNET_ROOT" || fail "could not unpack $runtime"
unpack .device/gpu-checks.tar.xz "$apps" || fail "could not unpack .device/gpu-checks.tar.xz"
export PATH=$DOTNET_ROOT:$PATH
if [[ $dry == 1 ]]; then
  TORCH_LIB=${TORCH_LIB:-$(dirname "$(ls ~/.nuget/packages/libtorch-cpu-linux-x64/*/runtimes/linux-x64/native/libtorch.so 2>/dev/null | sort -V | tail -1)")}
  CUDA_LIB=${CUDA_LIB:-}
  export WT_DEVICE=cpu
else
  TORCH_LIB=${TORCH_LIB:-$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
  CUDA_LIB=${CUDA_LIB:-$(readlink -f "$(dirname "$(readlink -f "$(command -v nvcc)")")/../lib64")}
  export WT_DEVICE=cuda
fi
[[ -f $TORCH_LIB/libtorch.so ]] || fail "no libtorch.so in TORCH_LIB='$TORCH_LIB'"
export TORCH_LIB CUDA_LIB WT_KERNEL_CACHE=$work/kernel-cache
export LD_LIBRARY_PATH=$TORCH_LIB${CUDA_LIB:+:$CUDA_LIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{
  echo "set-up: $((SECONDS - t_start)) s (untimed); TORCH_LIB=$TORCH_LIB CUDA_LIB=$CUDA_LIB dry=$dry budget=${budget}s"
  echo "step           |  rc | time  | result"
} | tee -a "$out/summary.txt"
t0_steps=$SECONDS

# summary of a step's part of steps.log (from byte $1 on): xunit's totals line, else its last line
summarize() {
  local plain total
  plain=$(tail -c +"$(($1 + 1))" "$out/steps.log" | sed 's/\x1b\[[0-9;]*m//g')
  total=$(grep -a 'Total:\|total:' <<<"$plain" | tail -1 | sed 's/^ *//')
  [[ -n $total ]] && { echo "$total"; return; }
  grep -a -v '^\s*$' <<<"$plain" | tail -1 | cut -c1-110
}

row() { printf '%-14s | %3s | %4ss | %s\n' "$1" "$2" "$3" "$4" | tee -a "$out/summary.txt"; }

step() {   # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 t0=$SECONDS rc left from
  shift 2
  left=$((budget - (SECONDS - t0_steps)))
  [[ $dry == 1 ]] && ((limit > ${WT_DRY_STEP_S:-60})) && limit=${WT_DRY_STEP_S:-60}
  ((limit > left)) && limit=$left
  if ((limit < 10)); then row "$name" - 0 "skipped: ${left}s of the ${budget}s budget left"; return; fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$out/steps.log"
  from=$(stat -c %s "$out/steps.log")
  timeout --kill-after=5 "$limit" "$@" >>"$out/steps.log" 2>&1
  rc=$?
  ((rc == 124 || rc == 137)) && echo "(stopped at the ${limit}s limit)" >>"$out/steps.log"
  row "$name" "$rc" "$((SECONDS - t0))" "$(summarize "$from")"
}

if [[ $dry == 1 ]]; then
  step info 20 bash -c 'echo "dry run on $(uname -n): $(nproc) CPUs"; dotnet --list-runtimes'
else
  step info 20 bash -c 'nvidia-smi; python3 -c "import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__, \"cuda\", torch.version.cuda)"'
fi

step kernels 100 dotnet "$apps/CudaKernels.Tests/CudaKernels.Tests.dll"

own=$apps/WeakTeacher.Tests/fixtures/hf-own
if [[ $dry == 1 ]]; then
  row fixtures - 0 "skipped: dry run (needs transformers)"
else
  step fixtures 60 python3 tests/fixtures/hf-own/make_own_fixtures.py "$work/hf-own"
  if compgen -G "$work/hf-own/*/expected.safetensors" >/dev/null; then
    mkdir -p "$own" && cp -r "$work"/hf-own/*/ "$own"/ && cp "$work/hf-own/versions.json" "$own"/
    tar -C "$work" -czf "$out/hf-own.tar.gz" hf-own
  fi
fi

step parity-$WT_DEVICE 80 dotnet "$apps/WeakTeacher.Tests/WeakTeacher.Tests.dll" -namespace WeakTeacher.Tests.Models -namespace WeakTeacher.Tests.Generation

bench=(--device "$WT_DEVICE")
[[ $dry == 1 ]] && bench+=(--quick)
# bfloat16 on the card; the dry run's CPU has no bf16 matmul units (libtorch emulates them, ~10x slower), so float32
# there: it checks the step, the MixedPrecision path itself is tested by WeakTeacher.Tests
dpo_dtype=bfloat16
[[ $dry == 1 ]] && dpo_dtype=float32
step engine-dpo 150 dotnet "$apps/ModelBench/ModelBench.dll" "${bench[@]}" --suite dpo --dtype "$dpo_dtype" --out "$out/engine-dpo-$WT_DEVICE.md"
# the PyTorch baseline beside it (transformers there; Debian's PyTorch and the plain-torch model in the dry run)
python=python3
[[ $dry == 1 && -x /usr/bin/python3 ]] && python=/usr/bin/python3
step torch-baseline 90 "$python" benchmarks/torch_baseline.py "${bench[@]}" --out "$out/baseline-$WT_DEVICE.md"
step kernelbench 90 dotnet "$apps/KernelBench/KernelBench.dll" "${bench[@]}" --out "$out/kernels-$WT_DEVICE.md"
step modelbench 90 dotnet "$apps/ModelBench/ModelBench.dll" "${bench[@]}" --dtype bfloat16 --out "$out/model-$WT_DEVICE.md"

echo "total: $((SECONDS - t_start)) s, steps $((SECONDS - t0_steps)) s of the ${budget}s budget" | tee -a "$out/summary.txt"
# (an if, not &&: a table a timed-out step did not write must not become the script's exit status)
for f in "$out"/engine-dpo-*.md "$out"/baseline-*.md "$out"/kernels-*.md "$out"/model-*.md; do if [[ -f $f ]]; then echo; cat "$f"; fi; done
