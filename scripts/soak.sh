#!/usr/bin/env bash
# The soak test of issue 10, run by hand: the demo training (examples/train_lm) for TOTAL
# minutes in segments of SEGMENT minutes, each ending in a checkpoint that the next resumes from.
# It samples the process's resident memory every 10 s and prints, per segment, the RSS after
# warm-up (the first minute), at the end and at its largest, so growth within and across
# segments shows. Usage: scripts/soak.sh [TOTAL=30] [SEGMENT=5] [BUILD=build]
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-30}
segment=${2:-5}
build=${3:-build}
run=$(mktemp -d /tmp/coil-soak-XXXXXX)/run
segments=$((total / segment))
echo "soak: $segments segments of $segment minutes, run folder $run"
for ((i = 1; i <= segments; i++)); do
  if [ "$i" -eq 1 ]; then
    args=(--out "$run" --steps 1000000 --eval-every 200 --threads 1)
  else
    args=(--resume "$run")
  fi
  "./$build/examples/train_lm" "${args[@]}" --max-minutes "$segment" > "$run.log.$i" 2>&1 &
  pid=$!
  samples=()
  t0=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss" ] && [ $(($(date +%s) - t0)) -ge 60 ] && samples+=("$rss")
    sleep 10
  done
  wait "$pid"
  steps=$(grep -o "step [0-9]*" "$run.log.$i" | tail -1)
  printf 'soak segment %d: %s, RSS after warm-up %d MB, at the end %d MB, largest %d MB (%d samples)\n' \
    "$i" "${steps:-?}" $((samples[0] / 1024)) $((samples[${#samples[@]} - 1] / 1024)) \
    $(($(printf '%s\n' "${samples[@]}" | sort -n | tail -1) / 1024)) "${#samples[@]}"
done
grep -h "final validation" "$run.log.$segments" || true
