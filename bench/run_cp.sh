#!/bin/bash
# Context parallelism against one process on the same cores (bench_cp.cpp): for each sequence
# length, cp = 1 with N threads, then cp = N ranks of one thread, which prints the ratios.
#   bash bench/run_cp.sh [L ...]        (default 32768; build/bench/bench_cp must exist)
set -euo pipefail
bin=${BENCH_CP:-build/bench/bench_cp}
mpirun=(mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1)
for L in "${@:-32768}"; do
  for n in 2 4; do
    base=$(OMP_NUM_THREADS=$n "$bin" --L "$L" --threads "$n")
    echo "$base"
    ms=$(sed -n 's/.*step_ms=\([0-9.]*\).*/\1/p' <<<"$base")
    mb=$(sed -n 's/.*peak_activation_mb=\([0-9.]*\).*/\1/p' <<<"$base")
    "${mpirun[@]}" -np "$n" "$bin" --L "$L" --threads 1 --baseline-ms "$ms" --baseline-mb "$mb"
  done
done
