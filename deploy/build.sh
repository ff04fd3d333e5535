#!/usr/bin/env bash
# Sets up what is missing, then configures (once) and builds everything.
# Extra arguments go to CMake's configure step, e.g. -DGEMMA_WITH_CUDA=ON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bash "$GEMMA_ROOT/deploy/setup.sh"

torch_prefix="$("$GEMMA_VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
if [[ ! -f "$GEMMA_BUILD_DIR/build.ninja" || $# -gt 0 ]]; then
  gemma_log "configuring $GEMMA_BUILD_DIR"
  cmake -S "$GEMMA_ROOT" -B "$GEMMA_BUILD_DIR" -G Ninja \
    -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DGEMMA_PYTHON="$GEMMA_VENV/bin/python" "$@" >/dev/null
fi
gemma_log "building ($(gemma_jobs) jobs)"
cmake --build "$GEMMA_BUILD_DIR" -j "$(gemma_jobs)"
