#!/usr/bin/env bash
# Starts a private one-node Slurm cluster for the tests: its own munged (own key, socket and
# pid file under $D/munge, which Slurm is pointed at with AuthInfo), its own slurmctld and
# slurmd on private ports, state in $D. It never touches a munge or Slurm it did not start:
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
up() {
  ours "$M/munged.pid" munged && ours "$D/slurmctld.pid" slurmctld && ours "$D/slurmd.pid" slurmd &&
    scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|allocated'
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

mkdir -p "$D/state" "$D/spool" "$M"
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
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
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
NodeName=$HOST CPUs=4 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -c -f "$CONF"
slurmd -c -f "$CONF" 2>/dev/null || slurmd -f "$CONF"
for _ in $(seq 100); do
  state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
  case "$state" in
    idle*|mixed*|allocated*) echo "$CONF"; exit 0 ;;
    down*|drain*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
echo "tests/slurm/start.sh: the node did not come up; see $D/slurmctld.log and $D/slurmd.log" >&2
sinfo >&2 || true
exit 1
