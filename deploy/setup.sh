#!/usr/bin/env bash
# Installs whatever is missing for building and testing on Debian 12 (root):
# the Debian packages, and a virtualenv with the torch wheel (LibTorch) and the
# parity-test reference (transformers). Idempotent; a second run takes seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev librocksdb-dev libyaml-cpp-dev nlohmann-json3-dev
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev
  libsentencepiece-dev libgtest-dev libgmock-dev libbenchmark-dev
  libgloo-dev  # headers only, for c10d ProcessGroupGloo.hpp (worker/comm.cc)
  slurmctld slurmd slurm-client munge
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# Debian's own python3 needs python3-venv for virtualenvs.
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi
if ((${#missing[@]})); then
  gemma_log "installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

want="torch==${GEMMA_TORCH_VERSION} transformers==${GEMMA_TRANSFORMERS_VERSION}"
stamp="$GEMMA_VENV/.gemma-stamp"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  gemma_log "creating virtualenv $GEMMA_VENV ($want)"
  [[ -x "$GEMMA_VENV/bin/python" ]] || python3 -m venv "$GEMMA_VENV"
  "$GEMMA_VENV/bin/pip" install -q --upgrade pip
  "$GEMMA_VENV/bin/pip" install -q "torch==${GEMMA_TORCH_VERSION}" \
    "transformers==${GEMMA_TRANSFORMERS_VERSION}" safetensors numpy pillow sentencepiece \
    peft protobuf
  echo "$want" > "$stamp"
fi
gemma_log "dependencies ready (venv $GEMMA_VENV)"
