#!/usr/bin/env bash
# Stops the private Slurm cluster tests/slurm/start.sh started: only the processes its pid
# files name, and only when each is still the program it started (a pid may have been reused).
set -uo pipefail
D=${BEAMFLOW_SLURM_DIR:-/tmp/beamflow-slurm}
pids=()
pairs=()
for f in "$D"/slurmd.pid "$D"/slurmd.*.pid; do pairs+=("$f:slurmd"); done
for pair in "${pairs[@]}" "$D/slurmctld.pid:slurmctld" "$D/munge/munged.pid:munged"; do
  f=${pair%%:*}; name=${pair##*:}
  [ -f "$f" ] || continue
  pid=$(cat "$f" 2>/dev/null)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill "$pid" 2>/dev/null && pids+=("$pid")
  fi
  rm -f "$f"
done
for _ in $(seq 50); do
  alive=0
  for p in "${pids[@]}"; do [ -d "/proc/$p" ] && alive=1; done
  [ $alive = 0 ] && exit 0
  sleep 0.2
done
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
exit 0
