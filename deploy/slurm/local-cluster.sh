#!/usr/bin/env bash
# A private one-node Slurm cluster on this machine, for tests and demos.
#   deploy/slurm/local-cluster.sh start STATE_DIR   # munged + slurmctld + slurmd; prints env to source
#   deploy/slurm/local-cluster.sh stop  STATE_DIR
# Everything (config, munge key and socket, spool, logs) lives in STATE_DIR, on
# private ports, so it neither needs nor touches a system Slurm. Needs root
# (Debian's slurmctld, slurmd, munge). Source STATE_DIR/env for sbatch/srun.
set -euo pipefail
cmd="${1:?usage: local-cluster.sh start|stop STATE_DIR}"
state="${2:?usage: local-cluster.sh start|stop STATE_DIR}"
mkdir -p "$state"
state="$(cd "$state" && pwd)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

stop() {
  for f in slurmd.pid slurmctld.pid munged.pid; do
    if [[ -f "$state/$f" ]]; then
      pid="$(cat "$state/$f")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$state/$f"
    fi
  done
}

if [[ "$cmd" == stop ]]; then
  stop
  exit 0
fi
[[ "$cmd" == start ]] || { echo "unknown command $cmd" >&2; exit 2; }
for b in munged slurmctld slurmd sbatch; do
  command -v "$b" >/dev/null || { echo "local-cluster: $b not installed (bash deploy/setup.sh)" >&2; exit 1; }
done

node="$(hostname -s)"
mkdir -p "$state/spool" "$state/ctld" "$state/munge"
# munge: a private key (mode 400, owned by the user munged runs as: root here,
# hence --force) and a private socket.
if [[ ! -f "$state/munge/munge.key" ]]; then
  dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 755 "$state/munge"
chmod 400 "$state/munge/munge.key"
munged --force --key-file="$state/munge/munge.key" --socket="$state/munge/munge.socket" \
  --pid-file="$state/munged.pid" --log-file="$state/munged.log" \
  --seed-file="$state/munge/munge.seed"

ctld_port="$(free_port)"
d_port="$(free_port)"
cat > "$state/slurm.conf" <<CONF
ClusterName=gemmalocal
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket
CredType=cred/munge
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
# More CPUs than the machine has: one CPU worker per "CPU", oversubscribed.
NodeName=$node NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
cat > "$state/env" <<ENV
export SLURM_CONF=$state/slurm.conf
ENV
export SLURM_CONF="$state/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "local-cluster: up (node $node, SLURM_CONF=$SLURM_CONF)" >&2
    exit 0
  fi
  sleep 0.2
done
echo "local-cluster: the node did not become idle; logs in $state" >&2
sinfo >&2 || true
tail -20 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
exit 1
