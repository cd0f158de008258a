#!/usr/bin/env bash
# Runs every test of beamflow: unit tests beside the code and the end-to-end tests in tests/
# that drive the real binaries. Installs what the tests need on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# the real AlignTK first: without a way to have it, say so in seconds, before installing anything
bash tests/aligntk.sh --check >/dev/null || exit 1

# Real parts the tests start or compare against. Missing ones are installed when we can; under
# CI a part that cannot be installed fails the run rather than skipping tests.
need_pkgs=()
command -v cc >/dev/null || need_pkgs+=(gcc)
command -v python3 >/dev/null || need_pkgs+=(python3)          # the AlignTK stand-ins
command -v pgrep >/dev/null || need_pkgs+=(procps)
command -v slurmctld >/dev/null || need_pkgs+=(slurm-wlm)      # a real one-node Slurm
command -v munged >/dev/null || need_pkgs+=(munge)
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)             # a real sshd on 127.0.0.1
command -v ssh >/dev/null || need_pkgs+=(openssh-client)
command -v curl >/dev/null || need_pkgs+=(curl)                     # an independent TLS client
command -v openssl >/dev/null || need_pkgs+=(openssl)               # fingerprints as openssl computes them
command -v ip >/dev/null || need_pkgs+=(iproute2)                   # network namespaces: three hosts
command -v promtool >/dev/null || need_pkgs+=(prometheus)             # promtool checks the metrics
command -v chromium >/dev/null || need_pkgs+=(chromium)               # renders the status page headless
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)        # verifies the unit files
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
  else
    echo "tests/run.sh: missing packages ${need_pkgs[*]}; install them (apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
fi

# the real AlignTK 1.0.2 the DAG tests run (built once, ~20 s; tests/aligntk.sh says from where)
ALIGNTK_BIN=$(bash tests/aligntk.sh)
export ALIGNTK_BIN

# the private one-node Slurm the Slurm tests use (they start it themselves too; this fails early
# and clearly). What this script starts, it stops when it ends; a cluster of ours that was
# already running (a developer's) is reused and left running.
if ! bash tests/slurm/start.sh --status; then
  trap 'bash tests/slurm/stop.sh' EXIT
fi
bash tests/slurm/start.sh >/dev/null

cargo build --workspace --bins --locked
cargo test --workspace --locked -- --test-threads="${BEAMFLOW_TEST_THREADS:-4}"
