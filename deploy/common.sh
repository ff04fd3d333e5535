# Shared settings for the deploy scripts (sourced, not run).
# Override any of these in the environment.
GEMMA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GEMMA_VENV="${GEMMA_VENV:-$HOME/.cache/gemma-venv}"
GEMMA_BUILD_DIR="${GEMMA_BUILD_DIR:-$GEMMA_ROOT/build}"
GEMMA_TORCH_VERSION="2.11.0"
GEMMA_TRANSFORMERS_VERSION="5.17.0"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"

gemma_log() { printf '\033[1m[gemma]\033[0m %s\n' "$*" >&2; }
gemma_jobs() { nproc 2>/dev/null || echo 2; }
