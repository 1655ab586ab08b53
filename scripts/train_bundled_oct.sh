#!/usr/bin/env bash
# Regenerate the bundled OCT model (napari_berdiff/weights/oct_small.pt) from scratch on this CPU:
# synthetic OCT2017-style B-scans -> prepared images -> autoencoder -> diffusion U-Net.
# These are the commands that trained the shipped file; napari_berdiff/weights/TRAINING.md has
# the steps reached and the wall times.
#   bash scripts/train_bundled_oct.sh            # all stages (hours on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BERDIFF=.venv/bin/berdiff
AE_STEPS=${AE_STEPS:-2706}
DIFF_STEPS=${DIFF_STEPS:-20000}   # the shipped run was stopped (SIGTERM) and finalised, see TRAINING.md

# 1. 1,600 healthy and 100 drusen B-scans (496 x 512, two scans per synthetic patient)
[ -d data/synth_oct_train ] || $BERDIFF synth-oct data/synth_oct_train --normal 1600 --drusen 100 --seed 4321

# 2. 496x512 -> 128x128 (resize), patient-level split: 10% of the NORMAL patients to val
[ -d data/prep_oct128 ] || $BERDIFF prepare-oct data/synth_oct_train data/prep_oct128 --image-size 128 \
  --val-fraction 0.1 --quiet

# 3. autoencoder (L1, no adversarial term), small config, 1 channel
$BERDIFF train-ae data/prep_oct128 --out runs/oct_ae --config small --steps "$AE_STEPS" --batch-size 8 \
  --lr 2e-4 --disc-weight 0 --hflip --threads 1 --ckpt-every 200 --log-every 25 --sample-every 500 --seed 0 --quiet

# 4. diffusion U-Net on the frozen autoencoder's codes, noise levels t <= 500 only
$BERDIFF train-diffusion data/prep_oct128 --ae runs/oct_ae/autoencoder.pt --out runs/oct_diff --t-max 500 \
  --config small --steps "$DIFF_STEPS" --batch-size 16 --lr 2e-4 --threads 1 --ckpt-every 200 --log-every 25 \
  --sample-every 1000 --seed 0 --quiet

$BERDIFF export runs/oct_diff/model.pt napari_berdiff/weights/oct_small.pt --overwrite  # float16 weights
