#!/bin/bash
# INT8 on a student we trained ourselves, next to the ESPNet authors' model, in one command (CPU, about 1 hour):
#   bash benchmarks/int8_trained_students.sh [CAMVID_DIR]     (default: $APD_EDGE_CAMVID, ../shared/data/camvid)
# 1. a half-resolution CamVid copy (180x240, as the CPU studies use: camvid_study.py's scaled_copy),
# 2. BiSeNetV2 (and MobileNetV2 with STUDENTS="bisenetv2 mobilenetv2"), trained alone from scratch with its CamVid
#    recipe: 5,000 iterations at batch 8 on 160x224 crops (about 110 epochs, 2 threads, 48 minutes for BiSeNetV2
#    here; resumes if interrupted, skipped when finished),
# 3. benchmarks/int8_accuracy.py on them and on the authors' ESPNet (plain percentile, plain auto, mixed), with
#    the random-weight students timed -> benchmarks/results/int8_accuracy.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${1:-${APD_EDGE_CAMVID:-../shared/data/camvid}}"
[ -d "$SRC/train" ] || { echo "error: no CamVid at '$SRC' (give the folder as the first argument)" >&2; exit 2; }
WORK="${WORK:-runs/int8_trained}"
HALF="$WORK/camvid_half"
mkdir -p "$WORK/runs"
[ -d "$HALF/val" ] || python -c "
import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path
from camvid_study import scaled_copy
scaled_copy(Path('$SRC'), Path('$HALF'), 0.5)"
COMMON=(--set "data.root=$HALF" --set train.iterations=5000 --set train.batch_size=8 --set "train.crop=[160,224]"
        --set train.warmup_iters=200 --set train.eval_interval=1000 --set train.ckpt_interval=500
        --set "output_dir=$WORK/runs" --threads 2 -q)
train() {  # NAME RECIPE [--set ...]: train once, resume if interrupted, skip if finished
  local name=$1 recipe=$2; shift 2
  local args=("$recipe" "${COMMON[@]}" --set "name=$name" "$@")
  if [ -f "$WORK/runs/$name/last.pt" ]; then
    python -m apd_edge.cli.main train "${args[@]}" --resume
  else
    python -m apd_edge.cli.main train "${args[@]}"
  fi
}
# BiSeNetV2 with its recipe's optimiser (from scratch, lr 0.05). MobileNetV2 (STUDENTS="bisenetv2 mobilenetv2",
# about 1 s a step here, so 80 minutes more) from scratch too, without ImageNet weights offline: one lr for every
# layer and BiSeNetV2's lr instead of the recipe's fine-tuning 0.01 with a 10x head
RUNS=()
for s in ${STUDENTS:-bisenetv2}; do
  case $s in
    bisenetv2) train bisenetv2_camvid_half bisenet_camvid ;;
    mobilenetv2) train mobilenetv2_camvid_half mobilenetv2_camvid --set model.pretrained=false --set train.lr=0.05 \
                   --set train.head_lr_mult=1.0 ;;
    *) echo "error: unknown student '$s' (bisenetv2, mobilenetv2)" >&2; exit 2 ;;
  esac
  RUNS+=(--run "${s}_trained=$WORK/runs/${s}_camvid_half@$HALF")
done
python benchmarks/int8_accuracy.py --data-root "$SRC" "${RUNS[@]}" \
  --variants plain-percentile,plain-auto,mixed --rss-images 0 --latency-only bisenetv2,mobilenetv2,espnet \
  --rounds 9 --iters 5 --work "$WORK" --out benchmarks/results/int8_accuracy
