#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repository root (.carry/debs carried, as
# bench/gpu/run.sh): builds model_bench with CUDA, then profiles one SFT (or
# LoRA) step of ours (Kineto, bench/kineto_profile.h) and of transformers
# (torch.profiler), after a short timed run of each. Under $OUT: ours/ and
# hf/ with kernels.csv (ours also ops.csv and trace.json.gz).
#   bash bench/gpu/profile.sh [--preset 4b] [--seq 4096] [--mode sft] [--no-hf] [-- extra model_bench flags]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
preset=4b seq=4096 mode=sft hf=1 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --no-hf) hf=0; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
out="${OUT:-/tmp/gemma-profile}"; mkdir -p "$out/ours" "$out/hf"
build="${GEMMA_GPU_BUILD:-/tmp/gemma-gpu-build}"
python="${GEMMA_PYTHON:-$(command -v python3)}"
t0=$SECONDS
if [ ! -x "$build/bin/model_bench" ]; then
  bash "$root/deploy/gpu/build-and-test.sh" -R NOTHING_AT_ALL >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
fi
echo "build: $((SECONDS - t0)) s"
export LD_LIBRARY_PATH="/tmp/gemma-prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cfg="$out/config"; mkdir -p "$cfg"
"$build/bin/model_bench" --preset "$preset" --write-config "$cfg" || exit 1
common=(--mode "$mode" --seq "$seq" --images 1 --steps 5 --warmup 2)
echo "== ours"
"$build/bin/model_bench" --preset "$preset" "${common[@]}" --profile "$out/ours" "${extra[@]}" 2>&1 | grep -v "^ERROR\|^WARNING\|^STAGE"
gzip -f "$out/ours/trace.json"
if [ "$hf" = 1 ]; then
  echo "== transformers"
  PYTHONUNBUFFERED=1 "$python" "$root/bench/hf_model_bench.py" --config "$cfg" "${common[@]}" --profile "$out/hf" 2>&1 | grep -v "^ERROR\|^WARNING\|^STAGE" | tail -34
fi
echo "total: $((SECONDS - t0)) s"
