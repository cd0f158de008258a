#!/usr/bin/env bash
# Starts a one-node Slurm cluster on this host for the tests (munge, slurmctld, slurmd), with
# state in /tmp/beamflow-slurm and private ports. Idempotent: a running cluster is reused.
# Prints the path of slurm.conf on success; export it as SLURM_CONF.
set -euo pipefail
D=${BEAMFLOW_SLURM_DIR:-/tmp/beamflow-slurm}
CONF=$D/slurm.conf
export SLURM_CONF=$CONF

for bin in munged slurmctld slurmd sbatch squeue scancel; do
  command -v "$bin" >/dev/null || { echo "tests/slurm/start.sh: $bin is missing; apt-get install slurm-wlm munge" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "tests/slurm/start.sh: needs root (SlurmUser=root, munge key)" >&2; exit 1; }

if [ -f "$CONF" ] && scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|allocated'; then
  echo "$CONF"
  exit 0
fi

mkdir -p "$D/state" "$D/spool" /run/munge /var/log/munge /var/lib/munge /etc/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
# judge munged by whether it answers, not by whether a process of that name exists (one may be
# shutting down, or have left a stale socket behind)
if ! munge -n >/dev/null 2>&1; then
  pkill -x munged 2>/dev/null || true
  for _ in $(seq 50); do pgrep -x munged >/dev/null || break; sleep 0.1; done
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 100); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { echo "tests/slurm/start.sh: munged does not answer; see /var/log/munge/munged.log" >&2; exit 1; }

HOST=$(uname -n)
cat > "$CONF" <<CONF
ClusterName=beamflow
SlurmctldHost=$HOST
SlurmUser=root
SlurmctldPort=6917
SlurmdPort=6918
AuthType=auth/munge
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

pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 0.5
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
