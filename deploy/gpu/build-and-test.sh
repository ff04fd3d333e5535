#!/usr/bin/env bash
# Run ON THE GPU MACHINE (Ubuntu 24.04, CUDA 13, torch 2.11.0+cu130 in the
# system python), from the repository root, with .carry/debs carried along:
#   bash deploy/gpu/build-and-test.sh [ctest args...]
# Unpacks the carried Debian packages into a private prefix (never into /),
# builds the model library and its tests with CUDA (GEMMA_MODEL_ONLY), and
# runs the parity suite on the GPU (GEMMA_TEST_DEVICE=cuda).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
prefix="${GEMMA_GPU_PREFIX:-/tmp/gemma-prefix}"
build="${GEMMA_GPU_BUILD:-/tmp/gemma-gpu-build}"
python="${GEMMA_PYTHON:-$(command -v python3)}"
mkdir -p "$prefix"
for f in "$root"/.carry/debs/*.deb; do dpkg -x "$f" "$prefix"; done
# The runtime packages ship the real files; make the SONAME links ldconfig would.
ldconfig -n "$prefix/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
torch_prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" \
  -DGEMMA_MODEL_ONLY=ON -DGEMMA_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DGEMMA_USE_CCACHE=OFF -DGEMMA_PYTHON="$python" >/dev/null
cmake --build "$build" -j "$(nproc)" -- -k 0  # every error in one go
cd "$build"
# Eager attention: the parity references are HF eager, which gives fully
# masked (left-pad) rows the mean of the values where SDPA gives 0; the
# model_parity_sdpa test checks SDPA on the cases without such rows.
GEMMA_ATTENTION=eager GEMMA_TEST_DEVICE=cuda ctest --output-on-failure -j 4 "$@"
