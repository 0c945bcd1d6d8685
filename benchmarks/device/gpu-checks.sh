#!/usr/bin/env bash
# Every GPU check of the engine (issue #2) and the kernels (issue #5) in one run on the GPU machine. Nothing is built
# there: benchmarks/device/pack.sh fills .device/ here first. Then, with the device tool:
#   run(command="bash benchmarks/device/gpu-checks.sh", carry=[".device"], timeout_s=590)
# Steps, each under its own time limit (about 9 minutes at most in all), logs under $OUT:
#   kernels      CudaKernels.Tests: GPU kernels against float64 (NaN-poisoned outputs), NVRTC for this card, pool
#   fixtures     tests/fixtures/hf-own/make_own_fixtures.py with the machine's transformers -> $OUT/hf-own.tar.gz
#   parity-cuda  WeakTeacher.Tests Models + Generation with WT_DEVICE=cuda: HF parity (shared and own fixtures) on CUDA
#   parity-cpu   the same on the CPU with the machine's libtorch (checks the new fixtures before they are committed)
#   kernelbench  KernelBench --device cuda -> $OUT/kernels-cuda.md
#   modelbench   ModelBench --device cuda (OPT-125M-sized) -> $OUT/model-cuda.md
# The step table is printed last. Commit the .md files to benchmarks/results/ and hf-own.tar.gz's folders to
# tests/fixtures/hf-own/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${OUT:-/tmp/wt-gpu-checks}
mkdir -p "$out"
logs=$(mktemp -d)
apps=/tmp/wt-apps
rm -rf "$apps" && mkdir -p "$apps"
if ! tar -xJf .device/gpu-checks.tar.xz -C "$apps"; then
  echo "gpu-checks: .device/gpu-checks.tar.xz missing or broken; run benchmarks/device/pack.sh here and carry .device" >&2
  exit 2
fi
export WT_KERNEL_CACHE=/tmp/wt-kernel-cache DOTNET_gcServer=0
rows=()

# summary of a log: xunit's totals line, else its last line
summarize() {
  local plain total
  plain=$(sed 's/\x1b\[[0-9;]*m//g' "$1")
  total=$(grep -a 'Total:' <<<"$plain" | tail -1 | sed 's/^ *//')
  [[ -n $total ]] && { echo "$total"; return; }
  grep -a -v '^\s*$' <<<"$plain" | tail -1 | cut -c1-110
}

step() {   # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  ((rc == 124 || rc == 137)) && echo "(stopped at the ${limit}s limit)" >>"$logs/$name.log"
  rows+=("$(printf '%-12s | %3s | %4ss | %s' "$name" "$rc" "$((SECONDS - t0))" "$(summarize "$logs/$name.log")")")
  tail -n 25 "$logs/$name.log"
}



step info 30 bash -c 'bash .device/on-device.sh true; nvidia-smi; python3 -c "import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__, \"cuda\", torch.version.cuda)"'

step kernels 100 bash .device/on-device.sh dotnet "$apps/CudaKernels.Tests/CudaKernels.Tests.dll"

own=$apps/WeakTeacher.Tests/fixtures/hf-own
step fixtures 60 python3 tests/fixtures/hf-own/make_own_fixtures.py "$logs/hf-own"
if compgen -G "$logs/hf-own/*/expected.safetensors" >/dev/null; then
  mkdir -p "$own" && cp -r "$logs"/hf-own/*/ "$own"/ && cp "$logs/hf-own/versions.json" "$own"/
  tar -C "$logs" -czf "$out/hf-own.tar.gz" hf-own
fi

parity=(-namespace WeakTeacher.Tests.Models -namespace WeakTeacher.Tests.Generation)
step parity-cuda 90 env WT_DEVICE=cuda bash .device/on-device.sh dotnet "$apps/WeakTeacher.Tests/WeakTeacher.Tests.dll" "${parity[@]}"
step parity-cpu 50 env WT_DEVICE=cpu bash .device/on-device.sh dotnet "$apps/WeakTeacher.Tests/WeakTeacher.Tests.dll" "${parity[@]}"

step kernelbench 150 bash .device/on-device.sh dotnet "$apps/KernelBench/KernelBench.dll" --device cuda --out "$out/kernels-cuda.md"
step modelbench 110 bash .device/on-device.sh dotnet "$apps/ModelBench/ModelBench.dll" --device cuda --out "$out/model-cuda.md"

tar -C "$logs" -czf "$out/logs.tar.gz" --exclude=hf-own .
for f in "$out"/kernels-cuda.md "$out"/model-cuda.md; do [[ -f $f ]] && { echo; cat "$f"; }; done
echo
echo "step         |  rc | time  | result"
printf '%s\n' "${rows[@]}" | tee "$out/summary.txt"
