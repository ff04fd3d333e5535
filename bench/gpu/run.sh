#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repository root (device tool, .carry/debs
# carried; see deploy/gpu/build-and-test.sh): builds the CUDA model library,
# runs the CUDA kernels' unit tests and the GPU parity suite, then our
# model_bench and transformers' (bench/hf_model_bench.py) one after the
# other on the same GPU, same config, and prints the ratios. Results go to
# $OUT/bench.jsonl when OUT is set.
#   bash bench/gpu/run.sh [--preset 4b] [--seq 4096] [--quick] [--cuda-graphs both|all|0|1] [--fused 1|0|both] [--chained 1|0|both] [--skip-transformers]
# Decode prints a row per variant of ours (growing cache eager, CUDA graphs;
# `all` adds the static cache eager) against transformers. `--fused both`
# adds rows of ours without the fused CUDA kernels (model/fused_ops.h);
# `--chained both` rows with them launched unchained (model/cuda_launch.cuh).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
preset=4b seq=4096 images=1 steps=10 warmup=3 new_tokens=256 skip_parity=0 skip_hf=0 modes="sft lora decode" cuda_graphs=both fused=1 chained=1
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --images) images="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    --skip-parity) skip_parity=1; shift ;;
    --skip-transformers) skip_hf=1; shift ;;
    --cuda-graphs) cuda_graphs="$2"; shift 2 ;;
    --fused) fused="$2"; shift 2 ;;
    --chained) chained="$2"; shift 2 ;;
    --quick) steps=3 warmup=1 new_tokens=64; shift ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
out="${OUT:-/tmp/gemma-bench}"; mkdir -p "$out"
build="${GEMMA_GPU_BUILD:-/tmp/gemma-gpu-build}"
python="${GEMMA_PYTHON:-$(command -v python3)}"
if [ "$skip_parity" = 1 ]; then
  bash "$root/deploy/gpu/build-and-test.sh" -R NOTHING_AT_ALL >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
else
  # The CUDA kernels' unit tests first (seconds), then the parity suite.
  bash "$root/deploy/gpu/build-and-test.sh" -j 8 \
    -R "FusedCuda|FusedOps|DecodeAttention|Gemv|StaticDecoder|CudaGraph|MoeGrouped" \
    >"$out/build.log" 2>&1; rc=$?
  grep -E "tests passed|Failed|FAILED" "$out/build.log" | tail -20
  [ $rc = 0 ] || echo "CUDA unit tests: exit $rc"
  (cd "$build" && GEMMA_ATTENTION=eager GEMMA_TEST_DEVICE=cuda \
     LD_LIBRARY_PATH="/tmp/gemma-prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
     ctest -L parity -j 8 --output-on-failure >"$out/parity.log" 2>&1); rc=$?
  grep -E "tests passed|rel diff|cosine|Failed|FAILED" "$out/parity.log" | tail -60
  [ $rc = 0 ] || echo "parity suite: exit $rc"
fi
export LD_LIBRARY_PATH="/tmp/gemma-prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bench="$build/bin/model_bench"
cfg="$out/config-$preset"; mkdir -p "$cfg"
[ -x "$bench" ] || { echo "model_bench was not built (see $out/build.log)"; tail -30 "$out/build.log"; exit 1; }
"$bench" --preset "$preset" --write-config "$cfg" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
res="$out/bench.jsonl"
for mode in $modes; do
  common=(--mode "$mode" --seq "$seq" --images "$images" --steps "$steps" --warmup "$warmup" --new-tokens "$new_tokens")
  echo "== $mode: ours"
  "$bench" --preset "$preset" "${common[@]}" --cuda-graphs "$cuda_graphs" --fused "$fused" --chained "$chained" 2>&1 | tee -a "$res" | tail -8
  [ "$skip_hf" = 1 ] && continue
  echo "== $mode: transformers"
  "$python" "$root/bench/hf_model_bench.py" --config "$cfg" "${common[@]}" 2>&1 | tee -a "$res.hf.log" | tail -3
  tail -1 "$res.hf.log" | grep '^{' >>"$res" || true
done
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
"$python" - "$res" "$gpu_name" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
gpu = sys.argv[2]
by = {}
for r in rows:
    key = r["impl"] + (":" + r["variant"] if "variant" in r else "")
    if r.get("fused_kernels") is False:
        key += ":unfused"
    elif r.get("chained_launches") is False:
        key += ":unchained"
    by.setdefault(r["mode"], {})[key] = r
peak_tflops = 989.0  # H100 and H200 SXM dense bf16
# HBM bytes/s: H200 SXM 4.8 TB/s (HBM3e), H100 SXM 3.35 TB/s (HBM3).
bandwidth, hbm = (4.8e12, "H200 SXM 4.8 TB/s") if "H200" in gpu else (3.35e12, "H100 SXM 3.35 TB/s")
labels = {"ours:dynamic": "eager, growing cache", "ours:static": "eager, static cache",
          "ours:graphs": "CUDA graphs, static cache", "ours": "eager"}
labels.update({k + ":unfused": v + ", no fused kernels" for k, v in list(labels.items())}
              | {k + ":unchained": v + ", unchained launches" for k, v in list(labels.items())})
for mode, d in by.items():
    h = d.get("transformers")
    for key, o in d.items():
        if mode not in ("sft", "lora") or not key.startswith("ours"):
            continue
        line = f"{mode}: {key} {o['tokens_per_s']:.0f} tok/s ({o['tflops']:.0f} TFLOP/s, MFU {100*o['tflops']/peak_tflops:.1f}%), peak {o['peak_gib']:.1f} GiB"
        if h:
            line += f"; transformers {h['tokens_per_s']:.0f} tok/s, peak {h['peak_gib']:.1f} GiB; ratio {o['tokens_per_s']/h['tokens_per_s']:.2f}x"
        print(line)
    if mode != "decode":
        continue
    for key, o in d.items():
        if not key.startswith("ours"):
            continue
        bound = bandwidth / o["weight_bytes"]
        tps = o["decode_tokens_per_s"]
        line = (f"decode, ours ({labels.get(key, key)}): {tps:.1f} tok/s = {100*tps/bound:.1f}% "
                f"of the {bound:.0f} tok/s bandwidth bound ({hbm})")
        if "setup_s" in o:
            line += f", setup {1000*o['setup_s']:.0f} ms/call"
        if "tokens_match_static_eager" in o:
            line += f", tokens == static eager: {o['tokens_match_static_eager']}"
        if h:
            ht = h["decode_tokens_per_s"]
            line += f"; transformers {ht:.1f} tok/s ({100*ht/bound:.1f}%); ratio {tps/ht:.2f}x"
        print(line)
PY
