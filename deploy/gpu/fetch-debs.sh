#!/usr/bin/env bash
# Run HERE (a machine with Debian's package registry): downloads the Debian
# packages that a model-only build needs on the GPU machine, which has no
# package registry, into .carry/debs (git-ignored; name `.carry` in the device
# tool's `carry`). About 2.5 MB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$root/.carry/debs"
cd "$root/.carry/debs"
apt-get download libabsl-dev libabsl20220623 nlohmann-json3-dev libgtest-dev libgmock-dev googletest
ls -la
