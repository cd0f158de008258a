#!/usr/bin/env bash
# Runs every test of beamflow: unit tests beside the code and the end-to-end tests in tests/
# that drive the real binaries. Installs what the tests need on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# what installers and builders of parts print goes here; the terminal gets a line per phase
setup_log=${BEAMFLOW_SETUP_LOG:-${TMPDIR:-/tmp}/beamflow-test-setup.log}
: >"$setup_log"
phase() { echo "tests/run.sh: $*" >&2; }

# the real AlignTK first: without a way to have it, say so in seconds, before installing anything
way=$(bash tests/aligntk.sh --check) || exit 1
phase "$way"

# Real parts the tests start or compare against. Missing ones are installed when we can; under
# CI a part that cannot be installed fails the run rather than skipping tests.
need_pkgs=()
command -v cc >/dev/null || need_pkgs+=(gcc)
command -v python3 >/dev/null || need_pkgs+=(python3)          # the AlignTK stand-ins
command -v pgrep >/dev/null || need_pkgs+=(procps)
command -v slurmctld >/dev/null || need_pkgs+=(slurm-wlm)      # a real three-node Slurm
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
    phase "installing ${need_pkgs[*]} (output in $setup_log)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"; } >>"$setup_log" 2>&1 ||
      { tail -20 "$setup_log" >&2; echo "tests/run.sh: installing ${need_pkgs[*]} failed; see $setup_log" >&2; exit 1; }
  else
    echo "tests/run.sh: missing packages ${need_pkgs[*]}; install them (apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
fi

# the real AlignTK 1.0.2 the DAG tests run (built once, ~20 s; tests/aligntk.sh says from where)
phase "AlignTK: building if needed (output in $setup_log)"
ALIGNTK_BIN=$(bash tests/aligntk.sh 2>>"$setup_log") ||
  { tail -20 "$setup_log" >&2; echo "tests/run.sh: building AlignTK failed; see $setup_log" >&2; exit 1; }
export ALIGNTK_BIN
phase "AlignTK: $ALIGNTK_BIN"

# the private three-node Slurm the Slurm tests use (they start it themselves too; this fails early
# and clearly). What this script starts, it stops when it ends; a cluster of ours that was
# already running (a developer's) is reused and left running.
if ! bash tests/slurm/start.sh --status; then
  trap 'bash tests/slurm/stop.sh' EXIT
fi
phase "starting a private three-node Slurm"
bash tests/slurm/start.sh >/dev/null 2>>"$setup_log" ||
  { tail -20 "$setup_log" >&2; echo "tests/run.sh: Slurm did not start; see $setup_log" >&2; exit 1; }
phase "building and running the tests"

cargo build --workspace --bins --locked
cargo test --workspace --locked -- --test-threads="${BEAMFLOW_TEST_THREADS:-4}"
