#!/usr/bin/env bash
# Regenerate the bundled BraTS-like model (napari_berdiff/weights/brats_small.pt, v2) from scratch
# on this CPU: synthetic training cases -> prepared slices -> autoencoder -> diffusion U-Net.
# These are the commands that trained the shipped file, in the order they ran;
# napari_berdiff/weights/TRAINING.md has the steps reached, the wall times and the v1 history.
#   bash scripts/train_bundled.sh            # all stages (about two hours on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BERDIFF=.venv/bin/berdiff
AE_STEPS_PLAIN=${AE_STEPS_PLAIN:-440}   # the shipped run started without the entropy penalty
AE_STEPS=${AE_STEPS:-20000}             # stopped (SIGTERM) and finalised, see TRAINING.md
DIFF_STEPS=${DIFF_STEPS:-40000}         # stopped (SIGTERM) and finalised, see TRAINING.md
AE_OPTS=(--config small128 --batch-size 8 --lr 2e-4 --disc-weight 0 --hflip --threads 1
         --ckpt-every 100 --log-every 25 --sample-every 500 --seed 0 --quiet)

# 1. 90 synthetic subjects in the BraTS2020 layout (30 healthy, 40 tumour, 10 cavity, 10 enlarged ventricle)
[ -d data/synth_brats_train ] || $BERDIFF synth-brats data/synth_brats_train --healthy 30 --tumour 40 \
  --cavity 10 --ventricle 10 --seed 1234 --quiet

# 2. axial slices 80..128, per-volume percentile normalisation, 240 -> 128 (pad to square, resize)
[ -d data/prep_brats128 ] || $BERDIFF prepare-brats data/synth_brats_train data/prep_brats128 \
  --image-size 128 --split 0.85 0.1 0.05 --quiet

# 3. autoencoder, 128 bits x 16 x 16 (L1, no adversarial term); from step 441 with the code-entropy
#    penalty that makes the bits nearly deterministic (resumes from runs/brats128_ae/last.pt)
$BERDIFF train-ae data/prep_brats128 --out runs/brats128_ae --steps "$AE_STEPS_PLAIN" "${AE_OPTS[@]}"
$BERDIFF train-ae data/prep_brats128 --out runs/brats128_ae --steps "$AE_STEPS" --entropy-weight 0.02 \
  "${AE_OPTS[@]}"

# 4. diffusion U-Net on the frozen autoencoder's codes (encoded once: --cache-codes auto), t <= 400
$BERDIFF train-diffusion data/prep_brats128 --ae runs/brats128_ae/autoencoder.pt --out runs/brats128_diff \
  --t-max 400 --steps "$DIFF_STEPS" --batch-size 16 --lr 2e-4 --threads 1 --ckpt-every 200 \
  --log-every 25 --sample-every 1000 --seed 0 --quiet

$BERDIFF export runs/brats128_diff/model.pt napari_berdiff/weights/brats_small.pt --overwrite  # float16
