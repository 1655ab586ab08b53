#!/usr/bin/env bash
# Regenerate the bundled BraTS-like model (napari_berdiff/weights/brats_small.pt) from scratch on
# this CPU: synthetic training cases -> prepared slices -> autoencoder -> diffusion U-Net.
# The commands below are the ones that trained the shipped file (see napari_berdiff/weights/TRAINING.md
# for the step counts actually reached and the wall times).
#   bash scripts/train_bundled.sh            # all stages (hours on 2 CPU cores)
#   AE_STEPS=... DIFF_STEPS=... bash scripts/train_bundled.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
BERDIFF=.venv/bin/berdiff
AE_STEPS=${AE_STEPS:-4000}
DIFF_STEPS=${DIFF_STEPS:-20000}

# 1. 90 synthetic subjects in the BraTS2020 layout (30 healthy, 40 tumour, 10 cavity, 10 enlarged ventricle)
[ -d data/synth_brats_train ] || $PY -c "
from napari_berdiff.core.data.synth_brain import write_brats_dataset
write_brats_dataset('data/synth_brats_train', n_healthy=30, n_tumour=40, n_cavity=10, n_ventricle=10, seed=1234)"

# 2. axial slices 80..128, per-volume percentile normalisation, 240 -> 128 (pad to square, resize)
[ -d data/prep_brats128 ] || $BERDIFF prepare-brats data/synth_brats_train data/prep_brats128 \
  --image-size 128 --split 0.85 0.1 0.05 --quiet

# 3. autoencoder (L1, no adversarial term), small config
$BERDIFF train-ae data/prep_brats128 --out runs/brats_ae --config small --steps "$AE_STEPS" --batch-size 8 \
  --lr 2e-4 --disc-weight 0 --hflip --threads 1 --ckpt-every 200 --log-every 25 --sample-every 500 --seed 0 --quiet

# 4. diffusion U-Net on the frozen autoencoder's codes
$BERDIFF train-diffusion data/prep_brats128 --ae runs/brats_ae/autoencoder.pt --out runs/brats_diff --config small \
  --steps "$DIFF_STEPS" --batch-size 16 --lr 2e-4 --threads 1 --ckpt-every 200 --log-every 25 --seed 0 --quiet

$BERDIFF export runs/brats_diff/model.pt napari_berdiff/weights/brats_small.pt --overwrite  # float16 weights
