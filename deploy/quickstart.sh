#!/usr/bin/env bash
# The main demo: the whole fine-tuning pipeline on this machine's CPUs, every
# job through a real coordinator and two real workers on loopback.
#
#   bash deploy/quickstart.sh [--keep] [--help]
#
#    0. setup and build (skipped with GEMMA_QUICKSTART_NO_BUILD=1)
#    1. a coordinator and 2 CPU workers; a 2-rank `diagnose` job
#    2. synthetic receipt-OCR data (`gemmactl data synth --kind ocr --level easy`:
#       large glyphs a tiny model can learn to read), split into training and
#       held-out receipts
#    3. a tiny random Gemma 3 VL model sized for that data's tokenizer,
#       converted HF -> our sharded checkpoint (TP=2) by a `convert` job
#    4. `eval` of the untrained model on the held-out receipts
#    5. `sft` at dp=2 on both workers
#    6. `peft` (LoRA) on top of the SFT model
#    7. `eval` of the SFT model and of the LoRA adapter; a before/after table
#    8. export: the SFT model to HF (a `convert` job), the adapter to an HF
#       PEFT adapter (`gemmactl local peft-export`)
#    9. a `generate` job on held-out receipts, and `gemmactl local generate` on
#       the HF export with an image
#
# Options:
#   --keep   leave the cluster running at the end and print how to use it
#   --help   this text
# Environment:
#   GEMMA_QUICKSTART_DIR=DIR     run folder (default: a new /tmp/gemma-quickstart.XXXXXX);
#                                a folder an earlier quickstart made is emptied first.
#                                With DIR=/tmp/gemma-tiny, jobs/recipes/tiny-*.yaml run as they are.
#   GEMMA_QUICKSTART_NO_BUILD=1  skip setup and build; use the programs already built
#   GEMMA_BIN=DIR                where the programs are (default: $GEMMA_BUILD_DIR/bin)
#   GEMMA_PYTHON=EXE             the Python with transformers (default: $GEMMA_VENV/bin/python)
#   GEMMA_BUILD_DIR, GEMMA_VENV  as for deploy/build.sh
# Writes DIR/summary.json: the table's numbers, the exports, the wall time.
# Exit status: 0 only when every step succeeded.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
keep=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "quickstart.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

t_start=$SECONDS
exec 3>&2  # the commands print here even when their own stderr goes to a log
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&3; }
run() { printf '\033[36m$ %s\033[0m\n' "$*" >&3; "$@"; }
die() { printf '\033[1;31mquickstart: %s\033[0m\n' "$*" >&2; exit 1; }

if [[ "${GEMMA_QUICKSTART_NO_BUILD:-0}" == 1 ]]; then
  gemma_log "GEMMA_QUICKSTART_NO_BUILD=1: no setup or build; programs from ${GEMMA_BIN:-$GEMMA_BUILD_DIR/bin}"
else
  bash "$GEMMA_ROOT/deploy/build.sh"
fi
BIN="$(cd "${GEMMA_BIN:-$GEMMA_BUILD_DIR/bin}" 2>/dev/null && pwd)" ||
  die "no folder ${GEMMA_BIN:-$GEMMA_BUILD_DIR/bin} (build first, or set GEMMA_BIN)"
PY="${GEMMA_PYTHON:-$GEMMA_VENV/bin/python}"
for p in gemma-coordinator gemma-worker gemmactl gemmactl-local gemma-spm-helper; do
  [[ -x "$BIN/$p" ]] || die "$BIN/$p is missing (build first, or set GEMMA_BIN)"
done
command -v "$PY" >/dev/null || die "$PY is missing (run deploy/setup.sh)"
qdir="${GEMMA_QUICKSTART_DIR:-}"
[[ -z "$qdir" || "$qdir" == /* ]] || qdir="$PWD/$qdir"
# The commands print as you would type them: from the repository root, with
# the programs on PATH.
export PATH="$BIN:$PATH"
cd "$GEMMA_ROOT"

# The run folder: a new one, or one an earlier quickstart made (its marker).
if [[ -n "$qdir" ]]; then
  Q="$qdir"
  if [[ -d "$Q" && -n "$(ls -A "$Q")" ]]; then
    [[ -f "$Q/.gemma-quickstart" ]] ||
      die "$Q is neither empty nor a quickstart folder; choose another GEMMA_QUICKSTART_DIR"
    if [[ -s "$Q/pids" ]]; then  # the cluster an earlier --keep left running
      while read -r pid; do  # only if that pid is still one of our programs
        if grep -qa 'gemma-coordinator\|gemma-worker' "/proc/$pid/cmdline" 2>/dev/null; then
          kill "$pid" 2>/dev/null || true
        fi
      done <"$Q/pids"
      sleep 1
    fi
    find "$Q" -mindepth 1 -delete
  fi
  mkdir -p "$Q"
  Q="$(cd "$Q" && pwd)"
else
  Q="$(mktemp -d /tmp/gemma-quickstart.XXXXXX)"
fi
touch "$Q/.gemma-quickstart"

pids=()
cleanup() {
  local rc=$?
  if ((keep == 0 || rc != 0)); then
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f "$Q/pids"
  fi
  if ((rc != 0)); then
    printf '\033[1;31mquickstart failed (exit %d)\033[0m; the logs are %s/*.log\n' "$rc" "$Q" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Every job goes through `gemmactl submit -f RECIPE --set KEY=VALUE ... --follow`,
# which streams the job's progress and exits 0 only when it SUCCEEDED (and
# set -e ends the demo otherwise).
submit() { run gemmactl submit "$@" --follow; }

step "1. a coordinator and 2 CPU workers on loopback (logs in $Q)"
gemma-coordinator --listen 127.0.0.1:0 --port-file "$Q/port" --data-dir "$Q/coordinator" \
  >"$Q/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s "$Q/port" ]] && break; sleep 0.1; done
[[ -s "$Q/port" ]] || { cat "$Q/coordinator.log" >&2; die "the coordinator did not start"; }
GEMMA_COORDINATOR="127.0.0.1:$(cat "$Q/port")"
export GEMMA_COORDINATOR
# The two workers share this machine's cores: one math thread each, or their
# thread pools fight over the same cores and training runs many times slower.
for i in 0 1; do
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" gemma-worker --device cpu >"$Q/worker-$i.log" 2>&1 &
  pids+=($!)
done
printf '%s\n' "${pids[@]}" >"$Q/pids"
workers=0
for _ in $(seq 300); do
  workers="$(gemmactl workers -o json 2>/dev/null | grep -c '"device_kind": "cpu"' || true)"
  [[ "$workers" == 2 ]] && break
  sleep 0.2
done
[[ "$workers" == 2 ]] || die "expected 2 workers, $workers attached (see $Q/worker-*.log)"
run gemmactl workers
echo >&2
submit -f jobs/recipes/diagnose.yaml --job-id diagnose --set parallel.dp=2 --set diagnose.steps=10

step "2. synthetic receipt-OCR data (easy level): 600 receipts, the last 100 held out"
run gemmactl data synth --kind ocr --level easy --out "$Q/ocr" --n 600 --seed 3 --image-size 64 \
  --quiet 2>"$Q/synth.log"
head -n 500 "$Q/ocr/train.jsonl" >"$Q/ocr/train-split.jsonl"
tail -n 100 "$Q/ocr/train.jsonl" >"$Q/ocr/held-out.jsonl"
printf 'one receipt (the image is %s):\n  %s\n' "$Q/ocr/images/000000.png" \
  "$(head -n 1 "$Q/ocr/train-split.jsonl")" >&2

step "3. a tiny random Gemma 3 VL model for that tokenizer; HF -> our checkpoint (TP=2)"
# One 16-pixel patch per glyph of the 4 x 4 grid, one image token per patch.
run "$PY" deploy/make_tiny_model.py --out "$Q/hf" --tokenizer "$Q/ocr/tokenizer.model" \
  --image-size 64 --patch-size 16 --mm-tokens 16 --layers 2 --vision-layers 1 \
  --sliding-window 128 2>"$Q/make_tiny_model.log"
submit -f jobs/recipes/convert.yaml --job-id import --set convert.input="$Q/hf" \
  --set convert.output="$Q/model" --set convert.tp=2

# The tiny recipes name files under /tmp/gemma-tiny; these --set point them here.
# (Our checkpoint has no tokenizer.model: the jobs on it name the data's; the
# sft and peft jobs copy it into their outputs.)
tok=(--set model.tokenizer="$Q/ocr/tokenizer.model")
data=(--set data.train="$Q/ocr/train-split.jsonl" --set data.eval="$Q/ocr/held-out.jsonl")

step "4. eval BEFORE training: the random model on the 100 held-out receipts"
submit -f jobs/recipes/tiny-eval.yaml --job-id eval-before --set model.path="$Q/model" "${tok[@]}" \
  --set data.eval="$Q/ocr/held-out.jsonl" --set eval.report="$Q/eval-before.json"

step "5. sft at dp=2 on both workers: watch the loss fall and the accuracy rise"
submit -f jobs/recipes/tiny-sft.yaml --job-id sft --set parallel.dp=2 --set model.path="$Q/model" \
  "${tok[@]}" "${data[@]}" --set checkpoint.root="$Q/sft-ckpt" --set output="$Q/sft"

step "6. peft: LoRA adapters (r=8) trained on top of the SFT model, dp=2"
submit -f jobs/recipes/tiny-peft.yaml --job-id peft --set parallel.dp=2 --set model.path="$Q/sft" \
  "${data[@]}" --set checkpoint.root="$Q/peft-ckpt" --set output="$Q/peft"

step "7. eval AFTER training: the SFT model, and the SFT model + LoRA adapter"
submit -f jobs/recipes/tiny-eval.yaml --job-id eval-sft --set model.path="$Q/sft" \
  --set data.eval="$Q/ocr/held-out.jsonl" --set eval.report="$Q/eval-sft.json"
submit -f jobs/recipes/tiny-eval.yaml --job-id eval-peft --set model.path="$Q/peft" \
  --set data.eval="$Q/ocr/held-out.jsonl" --set eval.report="$Q/eval-peft.json"

step "before / after, on the held-out receipts (generation metrics on the first 8)"
"$PY" - "$Q" <<'PY'
import json, os, sys
q = sys.argv[1]
runs = [("before", "random init"), ("sft", "after SFT"), ("peft", "SFT + LoRA")]
rows = [("loss", "loss", "{:.3f}"), ("perplexity", "perplexity", "{:.1f}"),
        ("token accuracy", "token_accuracy", "{:.3f}"), ("exact match", "exact_match", "{:.3f}"),
        ("CER", "cer", "{:.3f}"), ("field F1", "field_f1", "{:.3f}")]
summary = {"dir": q}
for key, _ in runs:
    path = os.path.join(q, f"eval-{key}.json")
    rep = json.load(open(path))
    gen = rep.get("generation", {})
    summary[key] = {"report": path, "examples": rep["examples"], "tokens": rep["tokens"],
                    "loss": rep["loss"], "perplexity": rep["perplexity"],
                    "token_accuracy": rep["token_accuracy"],
                    "generate_examples": gen.get("examples"), "exact_match": gen.get("exact_match"),
                    "cer": gen.get("cer"), "field_f1": gen.get("field_f1")}
width = max(len(r[0]) for r in rows)
print(f"{'':{width}}  " + "".join(f"{label:>14}" for _, label in runs))
for label, field, fmt in rows:
    cells = ("-" if summary[k][field] is None else fmt.format(summary[k][field]) for k, _ in runs)
    print(f"{label:{width}}  " + "".join(f"{c:>14}" for c in cells))
b, s = summary["before"], summary["sft"]
print(f"\n{b['examples']} held-out receipts, {b['tokens']} target tokens: token accuracy "
      f"{b['token_accuracy']:.3f} -> {s['token_accuracy']:.3f}, loss {b['loss']:.2f} -> {s['loss']:.2f}")
json.dump(summary, open(os.path.join(q, "summary.json"), "w"), indent=2)
PY

step "8. export: the SFT model to HF (a convert job), the adapter to an HF PEFT adapter"
submit -f jobs/recipes/convert.yaml --job-id export --set convert.input="$Q/sft" \
  --set convert.output="$Q/export/sft-hf" --set convert.to=hf
run cp "$Q/sft/tokenizer.model" "$Q/export/sft-hf/"
run gemmactl local peft-export --adapter "$Q/peft" --out "$Q/export/peft-adapter" \
  --base-name "$Q/export/sft-hf" --quiet
ls -l "$Q/export/sft-hf" "$Q/export/peft-adapter" >&2
for f in sft-hf/config.json sft-hf/model.safetensors peft-adapter/adapter_config.json \
  peft-adapter/adapter_model.safetensors; do
  [[ -s "$Q/export/$f" ]] || die "the export wrote no $Q/export/$f"
done

step "9. generate: a generate job (SFT + LoRA) on 4 held-out receipts"
head -n 4 "$Q/ocr/held-out.jsonl" >"$Q/ocr/generate-input.jsonl"
submit -f jobs/recipes/tiny-generate.yaml --job-id generate --set model.path="$Q/peft" \
  --set generate.input="$Q/ocr/generate-input.jsonl" --set generate.output="$Q/generate.jsonl"
"$PY" - "$Q/generate.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['id']} ({len(r['tokens'])} tokens, {r['finish_reason']})\n"
          f"  output:    {r['output']}\n  reference: {r.get('reference', '')}")
PY
echo >&2
run gemmactl local generate --model "$Q/export/sft-hf" --image "$Q/ocr/images/000599.png" \
  --prompt "Describe this image." --max-new-tokens 160

step "the jobs this demo ran"
run gemmactl list

"$PY" - "$Q" "$((SECONDS - t_start))" <<'PY'
import json, os, sys
q, seconds = sys.argv[1], int(sys.argv[2])
path = os.path.join(q, "summary.json")
summary = json.load(open(path))
summary.update(seconds=seconds, ok=True, exports={
    "sft_hf": os.path.join(q, "export/sft-hf"),
    "peft_adapter": os.path.join(q, "export/peft-adapter"),
    "generate": os.path.join(q, "generate.jsonl")})
json.dump(summary, open(path, "w"), indent=2)
PY
gemma_log "done in $((SECONDS - t_start)) s; everything is in $Q (numbers: $Q/summary.json)"
if ((keep)); then
  cat >"$Q/env" <<ENV
export GEMMA_COORDINATOR=$GEMMA_COORDINATOR
export PATH="$BIN:\$PATH"
ENV
  cat >&2 <<MSG

The cluster is still up (--keep): a coordinator at $GEMMA_COORDINATOR and 2 CPU workers.
  source $Q/env          # sets GEMMA_COORDINATOR, puts gemmactl on PATH
  gemmactl list; gemmactl workers; gemmactl status
  gemmactl get jobs/sft -o json; gemmactl logs jobs/sft; gemmactl ckpt list jobs/sft
  gemmactl submit -f jobs/recipes/tiny-eval.yaml --set model.path=$Q/sft \\
    --set data.eval=$Q/ocr/held-out.jsonl --set eval.report=$Q/eval-again.json --follow
Stop it:  kill \$(cat $Q/pids)
MSG
fi
