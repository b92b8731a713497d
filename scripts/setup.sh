#!/usr/bin/env bash
# Installs the Debian packages coil needs (as root), or prints the exact apt-get line to run.
# `setup.sh fuzz` adds what the libFuzzer build needs (scripts/fuzz.sh).
set -euo pipefail
# fortunes: the demo's default text corpus (plain English, /usr/share/games/fortunes).
packages=(g++ make cmake ninja-build ccache libopenblas-openmp-dev doctest-dev openmpi-bin libopenmpi-dev
  fortunes)
# clang's libFuzzer (libclang_rt.fuzzer) and its OpenMP runtime; llvm-14: llvm-symbolizer for
# readable sanitizer reports.
[ "${1:-}" = fuzz ] && packages+=(clang-14 libclang-rt-14-dev libomp-14-dev llvm-14)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: missing Debian packages. Run as root:" >&2
  echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
