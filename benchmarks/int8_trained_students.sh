#!/bin/bash
# INT8 on a student we trained ourselves, next to the ESPNet authors' model, in one command (CPU, about 1 hour):
#   bash benchmarks/int8_trained_students.sh [CAMVID_DIR]     (default: $APD_EDGE_CAMVID, ../shared/data/camvid)
# 1. a half-resolution CamVid copy (180x240, as the CPU studies use: camvid_study.py's scaled_copy),
# 2. BiSeNetV2 trained alone from scratch with its CamVid recipe: 5,000 iterations at batch 8 on 160x224 crops
#    (about 110 epochs, 2 threads; resumes if interrupted),
# 3. benchmarks/int8_accuracy.py on it and on the authors' ESPNet (plain percentile, plain auto, mixed), with the
#    random-weight students timed -> benchmarks/results/int8_accuracy.{md,json}.
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
RUN="$WORK/runs/bisenetv2_camvid_half"
TRAIN=(bisenet_camvid --set "data.root=$HALF" --set train.iterations=5000 --set train.batch_size=8
       --set "train.crop=[160,224]" --set train.warmup_iters=200 --set train.eval_interval=1000
       --set train.ckpt_interval=500 --set name=bisenetv2_camvid_half --set "output_dir=$WORK/runs" --threads 2 -q)
if [ -f "$RUN/last.pt" ]; then
  python -m apd_edge.cli.main train "${TRAIN[@]}" --resume
else
  python -m apd_edge.cli.main train "${TRAIN[@]}"
fi
python benchmarks/int8_accuracy.py --data-root "$SRC" --run "bisenetv2_trained=$RUN@$HALF" \
  --variants plain-percentile,plain-auto,mixed --rss-images 0 --latency-only bisenetv2,mobilenetv2,espnet \
  --rounds 9 --iters 5 --work "$WORK" --out benchmarks/results/int8_accuracy
