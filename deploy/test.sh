#!/usr/bin/env bash
# The test command: sets up what is missing, builds, and runs every test.
# Extra arguments go to ctest (e.g. -R workers -V).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start=$SECONDS
bash "$GEMMA_ROOT/deploy/build.sh"
gemma_log "running tests"
cd "$GEMMA_BUILD_DIR"
ctest --output-on-failure --timeout 900 -j "$(gemma_jobs)" "$@"
gemma_log "tests done in $((SECONDS - start))s"
