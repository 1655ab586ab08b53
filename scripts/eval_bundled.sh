#!/usr/bin/env bash
# Regenerate the results of docs/results.md: held-out generated test sets (fixed seeds, never seen in
# training), `berdiff evaluate` tables, `berdiff grid` figures (paper Fig. 3) and the few-step
# sweep, for the bundled BraTS-like and OCT models, at the paper's L = 200 and at L = 100. CPU;
# about 30 minutes on 2 cores.
#   bash scripts/eval_bundled.sh            # everything
#   ONLY=brats bash scripts/eval_bundled.sh # one model
set -euo pipefail
cd "$(dirname "$0")/.."
BERDIFF=.venv/bin/berdiff
PY=.venv/bin/python
OUT=${OUT:-docs/results}
ONLY=${ONLY:-all}
# BraTS: 150 test and 80 validation slices, evenly spaced over the splits (docs/results.md's table);
# OCT: all. MAX_SLICES / MAX_VAL_SLICES=N change the BraTS subset.
LIMITS=(--max-slices "${MAX_SLICES:-150}" --max-val-slices "${MAX_VAL_SLICES:-80}")

if [ "$ONLY" = all ] || [ "$ONLY" = brats ]; then
  # 20 held-out subjects (4 healthy, 10 tumour, 3 cavity, 3 enlarged ventricles), patient split
  [ -d data/synth_brats_heldout ] || $BERDIFF synth-brats data/synth_brats_heldout --healthy 4 \
    --tumour 10 --cavity 3 --ventricle 3 --seed 98765 --quiet
  [ -d data/prep_brats128_heldout ] || $BERDIFF prepare-brats data/synth_brats_heldout \
    data/prep_brats128_heldout --image-size 128 --split 0.05 0.35 0.6 --seed 1 --quiet
  $BERDIFF evaluate data/prep_brats128_heldout --bundled brats --L 200 --P 0.5 --steps 20 \
    "${LIMITS[@]}" --source data/synth_brats_heldout \
    --out "$OUT/brats" --overwrite --no-progress
  # the operating point the tuning set chose for the v4 model (docs/results.md): L = 100
  $BERDIFF evaluate data/prep_brats128_heldout --bundled brats --L 100 --P 0.5 --steps 20 \
    "${LIMITS[@]}" --source data/synth_brats_heldout \
    --out "$OUT/brats_L100" --overwrite --no-progress
  # L = 100 at P = 0.3, where the grid's image AUROC of the masked fraction peaks
  $BERDIFF evaluate data/prep_brats128_heldout --bundled brats --L 100 --P 0.3 --steps 20 \
    "${LIMITS[@]}" --source data/synth_brats_heldout --threads 1 \
    --out "$OUT/brats_L100_P03" --overwrite --no-progress
  $BERDIFF grid data/prep_brats128_heldout --bundled brats --L 100 200 300 400 --P 0.1 0.3 0.5 0.7 \
    --steps 20 --max-slices 40 --threads 1 --out "$OUT/brats_grid" --overwrite --no-progress
  $PY benchmarks/bench_steps.py data/prep_brats128_heldout --bundled brats --L 200 \
    --steps 200 50 20 10 --P 0.5 --max-slices 30 --threads 1 --out "$OUT/brats_steps"
fi

if [ "$ONLY" = all ] || [ "$ONLY" = oct ]; then
  # 200 healthy + 200 drusen B-scans of unseen synthetic patients; half the NORMAL patients to test
  [ -d data/synth_oct_heldout ] || $BERDIFF synth-oct data/synth_oct_heldout --normal 200 \
    --drusen 200 --seed 8765
  [ -d data/prep_oct128_heldout ] || $BERDIFF prepare-oct data/synth_oct_heldout \
    data/prep_oct128_heldout --image-size 128 --val-fraction 0.3 --normal-test-fraction 0.5 \
    --seed 1 --quiet
  $BERDIFF evaluate data/prep_oct128_heldout --bundled oct --L 200 --P 0.5 --steps 20 \
    --out "$OUT/oct" --overwrite --no-progress
  $BERDIFF evaluate data/prep_oct128_heldout --bundled oct --L 100 --P 0.5 --steps 20 \
    --out "$OUT/oct_L100" --overwrite --no-progress
  # L = 100 at P = 0.2, where the paired diagnosis put the OCT U-Net's best mask (TRAINING.md "v4")
  $BERDIFF evaluate data/prep_oct128_heldout --bundled oct --L 100 --P 0.2 --steps 20 --threads 1 \
    --out "$OUT/oct_L100_P02" --overwrite --no-progress
fi
