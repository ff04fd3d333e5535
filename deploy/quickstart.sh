#!/usr/bin/env bash
# The main demo, on this machine's CPUs: sets up what is missing, builds, starts
# a coordinator and two workers on loopback, and runs what has landed so far:
#   1. a 2-rank `diagnose` job (the health check a user runs on a new allocation);
#   2. a tiny random Gemma 3 VL model saved by transformers (nothing is downloaded);
#   3. `convert` jobs: HF -> our sharded checkpoint (TP=2) -> HF again;
#   4. `gemmactl local generate` on the converted checkpoint;
#   5. `gemmactl data synth`: a synthetic receipt-OCR dataset with its tokenizer.
# Stops the cluster at the end; everything it wrote stays in the folder it prints.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bash "$GEMMA_ROOT/deploy/build.sh"

BIN="$GEMMA_BUILD_DIR/bin"
RUN_DIR="$(mktemp -d /tmp/gemma-quickstart.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

step "starting gemma-coordinator and 2 CPU workers (logs in $RUN_DIR)"
"$BIN/gemma-coordinator" --listen 127.0.0.1:0 --port-file "$RUN_DIR/port" --data-dir "$RUN_DIR/data" \
  >"$RUN_DIR/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s "$RUN_DIR/port" ]] && break; sleep 0.1; done
[[ -s "$RUN_DIR/port" ]] || { cat "$RUN_DIR/coordinator.log"; exit 1; }
export GEMMA_COORDINATOR="127.0.0.1:$(cat "$RUN_DIR/port")"
for i in 0 1; do
  "$BIN/gemma-worker" --device cpu >"$RUN_DIR/worker-$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 300); do
  "$BIN/gemmactl" workers -o json 2>/dev/null | grep -c '"device_kind": "cpu"' | grep -q '^2$' && break
  sleep 0.2
done
run "$BIN/gemmactl" status
run "$BIN/gemmactl" workers

step "1. a 2-rank diagnose job"
run "$BIN/gemmactl" submit -f "$GEMMA_ROOT/jobs/recipes/diagnose.yaml" --set parallel.dp=2 \
  --set diagnose.steps=20 --follow

step "2. a tiny random Gemma 3 VL model, saved by transformers"
run "$GEMMA_VENV/bin/python" "$GEMMA_ROOT/deploy/make_tiny_model.py" --out "$RUN_DIR/tiny-hf"

step "3. convert jobs: HF -> our checkpoint at TP=2 -> HF"
cat > "$RUN_DIR/to-ours.yaml" <<YAML
display_name: import-tiny
kind: convert
resources: {device: cpu}
convert: {input: $RUN_DIR/tiny-hf, output: $RUN_DIR/tiny-ckpt, tp: 2}
YAML
run "$BIN/gemmactl" submit -f "$RUN_DIR/to-ours.yaml" --follow
run "$BIN/gemmactl" submit -f "$RUN_DIR/to-ours.yaml" --set display_name=export-tiny \
  --set convert.input="$RUN_DIR/tiny-ckpt" --set convert.output="$RUN_DIR/tiny-hf-again" \
  --set convert.to=hf --set convert.tp=0 --follow
ls -l "$RUN_DIR/tiny-ckpt" "$RUN_DIR/tiny-hf-again" >&2

step "4. greedy generation from the converted checkpoint (token ids in, token ids out)"
run "$BIN/gemmactl" local generate --model "$RUN_DIR/tiny-ckpt" --prompt-ids 2,105,7,42,106 \
  --max-new-tokens 8

step "5. a synthetic receipt-OCR dataset and its SentencePiece tokenizer"
run "$BIN/gemmactl" data synth --kind ocr --out "$RUN_DIR/ocr" --n 16 --image-size 224
head -c 400 "$RUN_DIR/ocr/train.jsonl" >&2; echo >&2

step "the jobs this demo ran"
run "$BIN/gemmactl" list
gemma_log "done; stopping the cluster (files stay in $RUN_DIR)"
