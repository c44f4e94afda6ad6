#!/bin/bash
# The paired CamVid study on one GPU in one command (plan and sizing: benchmarks/plans/camvid_paired_gpu.yaml).
#   bash benchmarks/camvid_paired_gpu.sh [CAMVID_DIR]      (default: $APD_CAMVID, ../shared/data/camvid, shared/data/camvid)
# 1. copies CamVid to local disk (/tmp/camvid_paired_gpu/camvid), 2. trains the teacher (resumes if interrupted),
# 3. trains the 4 seeds as 4 processes at once (each: 2 students x 4 methods sharing one teacher forward per batch),
# stopped after STUDENT_LIMIT seconds (default 330; run the script again to continue), 4. writes
# benchmarks/results/camvid_paired_gpu.{md,json,png} and copies them with the run logs to $OUT when set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SRC="${1:-${APD_CAMVID:-}}"
for c in ../shared/data/camvid shared/data/camvid; do [ -z "$SRC" ] && [ -d "$c" ] && SRC="$c"; done
[ -d "$SRC/train" ] || { echo "error: no CamVid at '$SRC' (give the folder as the first argument)" >&2; exit 2; }
WORK=/tmp/camvid_paired_gpu
PLAN=benchmarks/plans/camvid_paired_gpu.yaml
APD="python -m apd_edge.cli.main"
mkdir -p "$WORK/camvid" "$WORK/logs"
cp -rn "$SRC"/. "$WORK/camvid/"
t0=$(date +%s)
echo "[$(date -u +%H:%M:%S)] teacher"
$APD study run "$PLAN" --stage teacher --quiet 2>&1 | tee -a "$WORK/logs/teacher.log" | tail -3
echo "[$(date -u +%H:%M:%S)] students, 4 seeds at once (limit ${STUDENT_LIMIT:-330} s)"
pids=()
for s in 0 1 2 3; do
  timeout "${STUDENT_LIMIT:-330}" $APD study run "$PLAN" --set "seeds=[$s]" --stage students --quiet \
    >> "$WORK/logs/seed$s.log" 2>&1 & pids+=($!)
done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done
[ "$rc" = 124 ] && echo "students stopped at the time limit: run this script again to continue"
echo "[$(date -u +%H:%M:%S)] report ($(( $(date +%s) - t0 )) s so far)"
$APD study report "$PLAN" --name camvid_paired_gpu --out benchmarks/results
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/results" "$OUT/runs"
  cp benchmarks/results/camvid_paired_gpu* "$OUT/results/"
  cp -r "$WORK/logs" "$OUT/"
  (cd "$WORK/runs" && find . -name '*.json*' -o -name '*.yaml' | tar cf - -T - | tar xf - -C "$OUT/runs")
fi
