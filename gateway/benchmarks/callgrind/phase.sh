#!/bin/bash
# Callgrind of gateway-bench's purchase phase only: counts are zeroed once the baseline run
# before the phase has reported, and dumped when the phase reports (callgrind_control).
# Usage: phase.sh PATH/TO/gateway-bench OUTDIR   (then: incl.py OUTDIR/cg.PID.1)
set -eu
BIN=$1; OUT=$2
mkdir -p "$OUT"; cd "$OUT"; rm -f err.txt
valgrind --tool=callgrind --separate-threads=no --callgrind-out-file="$OUT/cg.%p" \
  "$BIN" --only purchase --rounds 1 --secs 4 --warmup 0 > out.json 2> err.txt &
VPID=$!
until [ "$(grep -c 'hello:' err.txt 2>/dev/null || true)" -ge 2 ]; do sleep 0.05; done
callgrind_control -z "$VPID" > /dev/null
until grep -q 'purchase:' err.txt; do sleep 0.05; done
callgrind_control -d phase "$VPID" > /dev/null
wait "$VPID"
grep -v '^==' err.txt
