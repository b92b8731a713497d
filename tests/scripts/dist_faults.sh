#!/usr/bin/env bash
# Rank failures under mpirun -np 4 (issue 10): for each way to fail (a thrown coil::Error, a
# SIGKILL) and each moment (before, inside, after a step's all_reduce), the job must end within
# the timeout with a message naming rank 2, no rank may report finishing, and no process of the
# job may be left running. Usage: dist_faults.sh MPIRUN_COMMAND... -- PROGRAM
set -uo pipefail
mpirun=()
while [ "$1" != "--" ]; do mpirun+=("$1"); shift; done
prog=$2
limit=30
export COIL_DIST_TIMEOUT=$limit  # a rank left waiting gives up after this
fails=0
for how in throw kill; do
  for when in before inside after; do
    log=$(mktemp)
    t0=$(date +%s%N)
    timeout $((limit * 2)) "${mpirun[@]}" -np 4 "$prog" "$how" "$when" > "$log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    case $how in
      throw) want="coil.dist: rank 2 of 4 stops the job: rank 2 hit a bad batch" ;;
      kill) want="rank 2 with PID [0-9]* on node .* exited on signal 9" ;;
    esac
    ok=yes
    [ "$rc" -ne 0 ] || ok="exit code 0"
    [ "$rc" -ne 124 ] || ok="hung (killed by timeout)"
    grep -q "$want" "$log" || ok="no message naming rank 2"
    ! grep -q "finished all steps" "$log" || ok="a rank finished"
    [ "$ms" -lt $((limit * 1000)) ] || ok="took $ms ms"
    sleep 0.2
    ! pgrep -f "$prog $how $when" > /dev/null || ok="processes left behind"
    printf 'dist_fault %-5s %-6s rc=%-3d %5d ms  %s\n' "$how" "$when" "$rc" "$ms" \
      "$([ "$ok" = yes ] && grep -o "$want" "$log" | head -1 || echo "FAIL: $ok")"
    if [ "$ok" != yes ]; then
      cat "$log"
      fails=$((fails + 1))
      pkill -9 -f "$prog $how $when"
    fi
    rm -f "$log"
  done
done
exit $fails
