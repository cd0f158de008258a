#!/usr/bin/env bash
# The real AlignTK 1.0.2 for the tests: prints the folder holding its binaries (find_rst,
# register, align, apply_map …), building them once per prefix. Where it comes from, first
# found first:
#   1. ALIGNTK_BIN     a folder of binaries already built
#   2. ALIGNTK_SRC     the source tarball (aligntk-1.0.2-src.tar.gz)
#   3. ../shared/aligntk/aligntk-1.0.2-src.tar.gz beside the checkout, when present
#   4. the public upstream repository, ALIGNTK_GIT (https://github.com/tomuram/aligntk) at
#      ALIGNTK_COMMIT (e0317cf44fcdb71da305f3564e31db6e3158aca9, AlignTK 1.0.2): git checks
#      the content by the commit hash
# The build goes into ALIGNTK_PREFIX (default /tmp/aligntk-1.0.2).
#
# usage: tests/aligntk.sh            build if needed, print the binaries' folder
#        tests/aligntk.sh --check    say (in seconds, installing nothing) whether one way works
#        tests/aligntk.sh --source D put the source tree into folder D (for the tests of this)
# Building needs gcc g++ make libtiff-dev libfftw3-dev libjpeg-dev zlib1g-dev libopenmpi-dev
# openmpi-bin (installed with apt-get when run as root). AlignTK is GPL-3.0; it is run as an
# external program, never linked.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=${ALIGNTK_PREFIX:-/tmp/aligntk-1.0.2}
git_url=${ALIGNTK_GIT:-https://github.com/tomuram/aligntk}
git_commit=${ALIGNTK_COMMIT:-e0317cf44fcdb71da305f3564e31db6e3158aca9}
shared=${ALIGNTK_SHARED:-$here/../../shared/aligntk}

ways() {
  cat >&2 <<EOF
tests/aligntk.sh: the real AlignTK 1.0.2 cannot be had here. The tests run it; give them one of:
  1. ALIGNTK_BIN=/path/to/aligntk/bin     (find_rst, register, align, apply_map built already)
  2. ALIGNTK_SRC=/path/to/aligntk-1.0.2-src.tar.gz
  3. a folder shared/aligntk/ holding that tarball beside this checkout
  4. network access to $git_url (commit $git_commit),
     or ALIGNTK_GIT=<a mirror> (ALIGNTK_COMMIT=<its commit of AlignTK 1.0.2>)
EOF
}

built() { [ -x "$1/find_rst" ] && [ -x "$1/apply_map" ]; }

# which way works, without building or installing anything: bin, src:PATH, or git
source_way() {
  if [ -n "${ALIGNTK_BIN:-}" ]; then
    built "$ALIGNTK_BIN" && { echo bin; return; }
    echo "tests/aligntk.sh: ALIGNTK_BIN=$ALIGNTK_BIN holds no find_rst and apply_map" >&2
    return 1
  fi
  built "$prefix/bin" && { echo built; return; }
  if [ -n "${ALIGNTK_SRC:-}" ]; then
    [ -f "$ALIGNTK_SRC" ] && { echo "src:$ALIGNTK_SRC"; return; }
    echo "tests/aligntk.sh: ALIGNTK_SRC=$ALIGNTK_SRC is not a file" >&2
    return 1
  fi
  [ -f "$shared/aligntk-1.0.2-src.tar.gz" ] && { echo "src:$shared/aligntk-1.0.2-src.tar.gz"; return; }
  command -v git >/dev/null || return 1
  if GIT_TERMINAL_PROMPT=0 timeout 20 git ls-remote "$git_url" >/dev/null 2>&1; then
    echo git
    return
  fi
  return 1
}

# puts the source tree (the folder holding `configure`) into $1
fetch_source() {
  local way=$1 dest=$2
  mkdir -p "$dest"
  case "$way" in
    src:*)
      tar xzf "${way#src:}" -C "$dest"
      ;;
    git)
      git -C "$dest" init -q
      GIT_TERMINAL_PROMPT=0 git -C "$dest" fetch -q --depth 1 "$git_url" "$git_commit" 2>/dev/null ||
        GIT_TERMINAL_PROMPT=0 git -C "$dest" fetch -q "$git_url"
      git -C "$dest" -c advice.detachedHead=false checkout -q "$git_commit"
      ;;
  esac
  local conf
  conf=$(find "$dest" -maxdepth 3 -name configure -type f | head -1)
  [ -n "$conf" ] || { echo "tests/aligntk.sh: no configure in the AlignTK source" >&2; return 1; }
  dirname "$conf"
}

case "${1:-}" in
  --check)
    way=$(source_way) || { ways; exit 1; }
    echo "AlignTK: $way"
    exit 0
    ;;
  --source)
    way=$(source_way) || { ways; exit 1; }
    case "$way" in bin|built) way="src:$shared/aligntk-1.0.2-src.tar.gz"
      [ -n "${ALIGNTK_SRC:-}" ] && way="src:$ALIGNTK_SRC"
      [ -f "${way#src:}" ] || way=git ;;
    esac
    fetch_source "$way" "$2"
    exit 0
    ;;
esac

way=$(source_way) || { ways; exit 1; }
case "$way" in
  bin) echo "$ALIGNTK_BIN"; exit 0 ;;
  built) echo "$prefix/bin"; exit 0 ;;
esac
# one build at a time per prefix: parallel test processes may all ask at once
mkdir -p "$(dirname "$prefix")"
exec 9>"$prefix.lock"
flock 9
built "$prefix/bin" && { echo "$prefix/bin"; exit 0; }
need=()
for p in gcc g++ make libtiff-dev libfftw3-dev libjpeg-dev zlib1g-dev libopenmpi-dev openmpi-bin; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "tests/aligntk.sh: install ${need[*]} first (apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$(fetch_source "$way" "$work/src")
cd "$src"
mkdir -p "$prefix/bin" "$prefix/share/aligntk"
./configure --without-x --prefix="$prefix" >"$work/configure.log" 2>&1 || { tail -20 "$work/configure.log" >&2; exit 1; }
make -j"$(nproc)" nox_executables >"$work/make.log" 2>&1 || { tail -20 "$work/make.log" >&2; exit 1; }
make nox_install >"$work/install.log" 2>&1 || { tail -20 "$work/install.log" >&2; exit 1; }
built "$prefix/bin" || { echo "tests/aligntk.sh: no find_rst/apply_map after the build" >&2; exit 1; }
echo "$prefix/bin"
