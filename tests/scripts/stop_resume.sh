#!/usr/bin/env bash
# A training example (train_lm, train_moe) stopped by SIGTERM, resumed, stopped by SIGINT,
# resumed to the end: each stop saves a checkpoint and exits with 128 + the signal, and the
# stitched run's metrics (step, train loss, lr) equal those of a run that was never stopped.
# Usage: stop_resume.sh PROGRAM ARGS... (the run's options; --data and --out are added here, and
# the program must write RUN/metrics.csv at least every few steps)
set -euo pipefail
train_lm=$1
shift
dir=$(mktemp -d /tmp/coil-stop-XXXXXX)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 4000); do printf 'the cat sat on a mat. A dog ran.\n'; done > "$dir/corpus.txt"
args=(--data "$dir/corpus.txt" "$@")

"$train_lm" "${args[@]}" --out "$dir/a" > "$dir/a.log"

rows() { [ -f "$1" ] && wc -l < "$1" || echo 0; }
# Starts train_lm (remaining arguments), waits until metrics.csv has more than $1 lines (a
# checkpoint was written after that), sends $2, and checks the exit code and the message.
stop_after() {
  local min_rows=$1 sig=$2 code=$3; shift 3
  "$train_lm" "$@" > "$dir/b.log" 2>&1 &
  local pid=$!
  until [ "$(rows "$dir/b/metrics.csv")" -gt "$min_rows" ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$dir/b.log"; echo "finished before the signal"; exit 1; }
    sleep 0.01
  done
  kill "-$sig" "$pid"
  local rc=0
  wait "$pid" || rc=$?
  [ "$rc" -eq "$code" ] || { cat "$dir/b.log"; echo "exit code $rc, expected $code"; exit 1; }
  grep -q "SIG$sig at step .*continue with --resume" "$dir/b.log" || { cat "$dir/b.log"; exit 1; }
  grep -o "SIG$sig at step [0-9]*" "$dir/b.log"
}
stop_after 1 TERM 143 "${args[@]}" --out "$dir/b"
stop_after "$(rows "$dir/b/metrics.csv")" INT 130 --resume "$dir/b"
"$train_lm" --resume "$dir/b" > "$dir/b.log"

cut -d, -f1,2,4 "$dir/a/metrics.csv" > "$dir/a.cols"
cut -d, -f1,2,4 "$dir/b/metrics.csv" > "$dir/b.cols"
diff "$dir/a.cols" "$dir/b.cols" > /dev/null || { diff "$dir/a.cols" "$dir/b.cols" | head; exit 1; }
echo "stop_resume: $(basename "$train_lm") stopped twice, resumed, $(($(rows "$dir/b/metrics.csv") - 1)) steps equal to the uninterrupted run"
