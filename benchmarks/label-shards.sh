#!/usr/bin/env bash
# Sharded labelling's speed-up on this machine (issue 16 point 1): `wt label` as one process, then as N shard
# processes started at once (as a scheduler's array would), then `wt label merge`; wall time of each, and a check that
# every merged set is byte-identical to the single run's.
#   [WT_BIN=folder with wt.dll] benchmarks/label-shards.sh TEACHER_DIR UNLABELLED.jsonl WORK_DIR [REPEAT]
# The input is the embedded task's unlabelled set repeated REPEAT times (default 8), so each shard has several batches.
set -euo pipefail
teacher=$1; input=$2; work=$3; repeat=${4:-8}
wt="dotnet ${WT_BIN:-$(cd "$(dirname "$0")/.." && pwd)/src/Cli/bin/Release/net10.0}/wt.dll"
mkdir -p "$work"; rm -rf "$work"/out-*
data="$work/unlabelled-x$repeat.jsonl"; : > "$data"
for _ in $(seq "$repeat"); do cat "$input" >> "$data"; done
rows=$(wc -l < "$data")
now() { date +%s.%N; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; rows: $rows"
echo "| processes | threads each | wall s (shards) | merge s | speed-up vs 1x1 | load average at start |"
echo "|---|---|---|---|---|---|"
base=""
for config in "1 1" "1 2" "2 1" "4 1"; do
  set -- $config; n=$1; t=$2; out="$work/out-$n-$t"; load=$(cut -d' ' -f1-3 /proc/loadavg)
  start=$(now)
  if [ "$n" = 1 ]; then
    $wt label --teacher "$teacher" --input "$data" --out "$out" --threads "$t" > "$out.log" 2>&1
  else
    pids=()
    for i in $(seq 0 $((n - 1))); do
      $wt label --teacher "$teacher" --input "$data" --out "$out" --threads "$t" --shard-index "$i" --shard-count "$n" > "$out.$i.log" 2>&1 & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
  fi
  mid=$(now)
  merge=0
  if [ "$n" != 1 ]; then $wt label merge --out "$out" > "$out.merge.log" 2>&1; merge=$(echo "$(now) - $mid" | bc); fi
  wall=$(echo "$mid - $start" | bc)
  [ -z "$base" ] && base=$wall
  printf '| %s | %s | %.1f | %.1f | %.2f | %s |\n' "$n" "$t" "$wall" "$merge" "$(echo "$base / $wall" | bc -l)" "$load"
done
# The merged sets against the single run (the labelled file(s) the single run wrote).
for out in "$work"/out-*; do [ -d "$out" ] || continue
  (cd "$out" && find . -maxdepth 1 -type f -name '*.jsonl*' | sort | xargs sha256sum) > "$out.sums"
done
for s in "$work"/out-*.sums; do
  if cmp -s "$s" "$work/out-1-1.sums"; then echo "$(basename "$s" .sums): identical to out-1-1"; else echo "$(basename "$s" .sums): DIFFERS"; fi
done
