#!/usr/bin/env bash
# The libFuzzer targets of fuzz/ (one per parser of user files), built with clang, ASan and UBSan
# in build-fuzz:
#   scripts/fuzz.sh build                     configure and build them
#   scripts/fuzz.sh run SECONDS [TARGET...]   run each for SECONDS, one after another, on a copy
#                                             of fuzz/corpus/TARGET (the repo is not written);
#                                             fails on any crash, leak, timeout or sanitizer
#                                             report, keeping the input in build-fuzz/artifacts
#   scripts/fuzz.sh all [SECONDS]             build, then run every target (30 s each: CI)
#   scripts/fuzz.sh seeds                     rewrite the generated seeds of fuzz/corpus
# Targets: safetensors config checkpoint dcp byte_corpus. Needs clang-14, libclang-rt-14-dev and
# libomp-14-dev (scripts/setup.sh fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${FUZZ_BUILD:-build-fuzz}
ALL_TARGETS=(safetensors config checkpoint dcp byte_corpus)
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/.ci/lsan.supp
symbolizer=/usr/lib/llvm-14/bin/llvm-symbolizer
[ -x "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH=$symbolizer

build() {
  bash scripts/setup.sh fuzz
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER="${FUZZ_CXX:-clang++-14}" -DCOIL_FUZZ=ON -DCOIL_CUDA=OFF \
    -DCOIL_BUILD_TESTS=OFF -DCOIL_BUILD_BENCH=OFF -DCOIL_BUILD_EXAMPLES=OFF \
    > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; exit 1; }
  cmake --build "$BUILD" -j "${JOBS:-$(nproc)}" --target "${ALL_TARGETS[@]/#/fuzz_}"
}

run() {
  local seconds=$1
  shift
  local targets=("$@")
  [ ${#targets[@]} -eq 0 ] && targets=("${ALL_TARGETS[@]}")
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  for t in "${targets[@]}"; do
    local art="$BUILD/artifacts/$t"
    mkdir -p "$work/$t" "$art"
    echo "== fuzz_$t for $seconds s"
    # The first folder collects new inputs; fuzz/corpus/$t is only read.
    if ! "$BUILD/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$art/" "$work/$t" "fuzz/corpus/$t" > "$work/$t.log" 2>&1; then
      tail -n 60 "$work/$t.log"
      echo "fuzz: fuzz_$t failed; the input is in $art/" >&2
      return 1
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec' \
      "$work/$t.log"
  done
}

case "${1:-}" in
  build) build ;;
  run)
    [ $# -ge 2 ] || { echo "usage: $0 run SECONDS [TARGET...]" >&2; exit 2; }
    shift
    run "$@"
    ;;
  all)
    build
    run "${2:-30}"
    ;;
  seeds)
    for t in "${ALL_TARGETS[@]}"; do
      COIL_FUZZ_WRITE_SEEDS="fuzz/corpus/$t" "$BUILD/fuzz/fuzz_$t"
    done
    ;;
  *)
    echo "usage: $0 build | run SECONDS [TARGET...] | all [SECONDS] | seeds" >&2
    exit 2
    ;;
esac
