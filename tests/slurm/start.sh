#!/usr/bin/env bash
# Starts a private Slurm cluster of three nodes for the tests: its own munged (own key, socket
# and pid file under $D/munge, which Slurm is pointed at with AuthInfo), its own slurmctld, and
# three slurmd on this host (Slurm's multiple-slurmd: `slurmd -N bf1`, each node with its own
# port, spool, pid and log file), state in $D. Three nodes, so that a test can occupy some of
# them and see a launcher fit the rest (backfill). It never touches a munge or Slurm it did not start:
# no /etc/munge key is written, no daemon is stopped by name. Idempotent: our running cluster
# is reused. Prints the path of slurm.conf on success; export it as SLURM_CONF.
# `start.sh --status` only says (exit 0) whether our cluster is up; tests/slurm/stop.sh stops it.
set -euo pipefail
D=${BEAMFLOW_SLURM_DIR:-/tmp/beamflow-slurm}
M=$D/munge
CONF=$D/slurm.conf
SOCK=$M/munge.socket
export SLURM_CONF=$CONF
here=$(dirname "$0")

for bin in munged munge unmunge slurmctld slurmd sbatch squeue scancel; do
  command -v "$bin" >/dev/null || { echo "tests/slurm/start.sh: $bin is missing; apt-get install slurm-wlm munge" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "tests/slurm/start.sh: needs root (SlurmUser=root, munged as user munge)" >&2; exit 1; }

# a pid file of ours whose process is alive and is the program we started
ours() { # pidfile name
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
NODES="bf1 bf2 bf3"
up() {
  ours "$M/munged.pid" munged && ours "$D/slurmctld.pid" slurmctld || return 1
  for n in $NODES; do ours "$D/slurmd.$n.pid" slurmd || return 1; done
  scontrol ping 2>/dev/null | grep -q UP && [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cE 'idle|mixed|allocated')" = 3 ]
}
if [ "${1:-}" = "--status" ]; then
  up
  exit $?
fi
if up; then
  echo "$CONF"
  exit 0
fi
# whatever of ours is left over from an earlier run (and only that) goes first
bash "$here/stop.sh" >/dev/null 2>&1 || true

mkdir -p "$D/state" "$M"
for n in $NODES; do mkdir -p "$D/spool/$n"; done
chown munge:munge "$M"
chmod 0711 "$M"          # munged: others may reach the socket, not list or write
if [ ! -s "$M/munge.key" ]; then
  dd if=/dev/urandom of="$M/munge.key" bs=1024 count=1 status=none
fi
chown munge:munge "$M/munge.key"
chmod 0400 "$M/munge.key"
runuser -u munge -- munged --socket="$SOCK" --key-file="$M/munge.key" --pid-file="$M/munged.pid" \
  --log-file="$M/munged.log" --seed-file="$M/munged.seed"
for _ in $(seq 100); do munge -S "$SOCK" -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -S "$SOCK" -n | unmunge -S "$SOCK" >/dev/null || { echo "tests/slurm/start.sh: our munged does not answer on $SOCK; see $M/munged.log" >&2; exit 1; }

HOST=$(uname -n)
cat > "$CONF" <<CONF
ClusterName=beamflow
SlurmctldHost=$HOST
SlurmUser=root
SlurmctldPort=6917
SlurmdPort=6918
AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.%n.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
InactiveLimit=0
MinJobAge=30
# the backfill scheduler looks every 2 s (not 30): pending jobs get their expected start soon
SchedulerParameters=bf_interval=2
NodeName=bf1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6921 CPUs=2 State=UNKNOWN
NodeName=bf2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6922 CPUs=2 State=UNKNOWN
NodeName=bf3 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6923 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -c -f "$CONF"
for n in $NODES; do
  slurmd -c -f "$CONF" -N "$n" 2>/dev/null || slurmd -f "$CONF" -N "$n"
done
for _ in $(seq 150); do
  if [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cE 'idle|mixed|allocated')" = 3 ]; then
    echo "$CONF"; exit 0
  fi
  for n in $(sinfo -h -N -t down,drain -o %N 2>/dev/null); do
    scontrol update nodename="$n" state=resume 2>/dev/null || true
  done
  sleep 0.2
done
echo "tests/slurm/start.sh: the nodes did not come up; see $D/slurmctld.log and $D/slurmd.*.log" >&2
sinfo >&2 || true
exit 1
