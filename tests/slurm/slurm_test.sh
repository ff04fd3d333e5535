#!/usr/bin/env bash
# A real one-node Slurm cluster (munged, slurmctld, slurmd from Debian) on this
# machine: the coordinator and a pool of 4 workers go through `sbatch`, the
# workers register with their Slurm ids, a 4-rank job runs on them to its end,
# and scancel takes them away again.
#   tests/slurm/slurm_test.sh BIN_DIR SOURCE_DIR
set -euo pipefail
BIN="$(cd "$1" && pwd)"
SRC="$(cd "$2" && pwd)"
if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP: slurmd needs root"
  exit 77
fi
state="$(mktemp -d /tmp/gemma-slurm.XXXXXX)"
cluster="$SRC/deploy/slurm/local-cluster.sh"
fail() { keep_state=1; echo "FAIL: $* (state in $state)"; for f in "$state"/*.out "$state"/*.log; do [[ -f $f ]] && { echo "--- $f"; tail -30 "$f"; }; done; exit 1; }
teardown() {
  [[ -n "${SLURM_CONF:-}" ]] && scancel --full -u root >/dev/null 2>&1 || true
  bash "$cluster" stop "$state" || true
  [[ "${keep_state:-0}" == 1 ]] || rm -rf "$state"
}
trap teardown EXIT
bash "$cluster" start "$state" || fail "cluster did not start"
source "$state/env"
export GEMMA_BIN="$BIN"
cd "$state"

wait_for() {  # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do (( SECONDS < deadline )) || return 1; sleep 0.2; done
}

# 1. The coordinator as a Slurm job.
cjob="$(sbatch --parsable --chdir="$state" "$SRC/deploy/slurm/coordinator.sbatch" --listen 127.0.0.1:0)"
wait_for 60 test -s "$state/gemma-coordinator-$cjob.addr" || fail "coordinator job $cjob wrote no address"
export GEMMA_COORDINATOR="$(cat "$state/gemma-coordinator-$cjob.addr")"
echo "coordinator job $cjob at $GEMMA_COORDINATOR"

# 2. A pool of 4 CPU workers through sbatch + srun.
wjob="$(sbatch --parsable --chdir="$state" --ntasks=4 "$SRC/deploy/slurm/workers.sbatch" --device cpu)"
count_workers() {
  "$BIN/gemmactl" workers -o json 2>/dev/null | grep -c "\"slurm_job_id\": \"$wjob\"" || true
}
workers_are() { [[ "$(count_workers)" -eq "$1" ]]; }
wait_for 120 workers_are 4 || fail "expected 4 workers of job $wjob, got $(count_workers)"
json="$("$BIN/gemmactl" workers -o json)"
for p in 0 1 2 3; do
  grep -q "\"slurm_procid\": $p" <<<"$json" || [[ $p -eq 0 ]] || fail "no worker with SLURM_PROCID $p"
done
echo "4 workers of Slurm job $wjob attached"

# 3. A 4-rank job runs on the Slurm-started pool to its end.
"$BIN/gemmactl" submit -f "$SRC/jobs/recipes/diagnose.yaml" --set parallel.dp=4 \
  --set diagnose.steps=5 --set diagnose.matrix_size=64 --follow > "$state/job.out" 2>&1 \
  || { cat "$state/job.out"; fail "the diagnose job on the Slurm pool did not succeed"; }
grep -q SUCCEEDED "$state/job.out" || { cat "$state/job.out"; fail "no SUCCEEDED in the job's events"; }
echo "a 4-rank diagnose job succeeded on the pool"

# 4. scancel: the workers go away and the coordinator sees it.
scancel "$wjob"
wait_for 60 workers_are 0 || fail "workers still attached after scancel"
echo "workers detached after scancel"
scancel "$cjob"
wait_for 30 bash -c "! squeue -h -j $cjob 2>/dev/null | grep -q ." || fail "coordinator job still running"
rm -rf "$state"/spool "$state"/ctld
echo "PASS"
