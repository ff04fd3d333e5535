#!/usr/bin/env bash
# The main demo: sets up what is missing, builds, starts a coordinator and two
# CPU workers on loopback, and shows gemmactl talking to them. Stops them at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bash "$GEMMA_ROOT/deploy/build.sh"

BIN="$GEMMA_BUILD_DIR/bin"
RUN_DIR="$(mktemp -d /tmp/gemma-quickstart.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

gemma_log "starting gemma-coordinator (logs in $RUN_DIR)"
"$BIN/gemma-coordinator" --listen 127.0.0.1:0 --port-file "$RUN_DIR/port" --data-dir "$RUN_DIR/data" \
  >"$RUN_DIR/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s "$RUN_DIR/port" ]] && break; sleep 0.1; done
[[ -s "$RUN_DIR/port" ]] || { cat "$RUN_DIR/coordinator.log"; exit 1; }
export GEMMA_COORDINATOR="127.0.0.1:$(cat "$RUN_DIR/port")"
gemma_log "coordinator at $GEMMA_COORDINATOR"

for i in 0 1; do
  "$BIN/gemma-worker" --device cpu >"$RUN_DIR/worker-$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 300); do
  "$BIN/gemmactl" status -o json 2>/dev/null | grep -q '"workers_total": 2' && break
  sleep 0.2
done

set -x
"$BIN/gemmactl" status
"$BIN/gemmactl" workers
{ set +x; } 2>/dev/null
gemma_log "done; stopping the cluster"
