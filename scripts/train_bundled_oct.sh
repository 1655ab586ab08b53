#!/usr/bin/env bash
# Regenerate the bundled OCT model (napari_berdiff/weights/oct_small.pt, v2) from scratch on this
# CPU: synthetic OCT2017-style B-scans -> prepared images -> autoencoder -> diffusion U-Net.
# These are the commands that trained the shipped file; napari_berdiff/weights/TRAINING.md has
# the steps reached, the wall times and the v1 history.
#   bash scripts/train_bundled_oct.sh            # all stages (about two hours on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BERDIFF=.venv/bin/berdiff
AE_STEPS_PLAIN=${AE_STEPS_PLAIN:-447}   # the shipped run started without the entropy penalty
AE_STEPS=${AE_STEPS:-20000}             # stopped (SIGTERM) and finalised, see TRAINING.md
DIFF_STEPS=${DIFF_STEPS:-40000}         # stopped (SIGTERM) and finalised, see TRAINING.md
AE_OPTS=(--config small128 --batch-size 8 --lr 2e-4 --disc-weight 0 --hflip --threads 1
         --ckpt-every 100 --log-every 25 --sample-every 500 --seed 0 --quiet)

# 1. 1,600 healthy and 100 drusen B-scans (496 x 512, two scans per synthetic patient)
[ -d data/synth_oct_train ] || $BERDIFF synth-oct data/synth_oct_train --normal 1600 --drusen 100 --seed 4321

# 2. 496x512 -> 128x128 (resize), patient-level split: 10% of the NORMAL patients to val
[ -d data/prep_oct128 ] || $BERDIFF prepare-oct data/synth_oct_train data/prep_oct128 --image-size 128 \
  --val-fraction 0.1 --quiet

# 3. autoencoder, 128 bits x 16 x 16, 1 channel (L1, no adversarial term); from step 448 with the
#    code-entropy penalty (resumes from runs/oct128_ae/last.pt)
$BERDIFF train-ae data/prep_oct128 --out runs/oct128_ae --steps "$AE_STEPS_PLAIN" "${AE_OPTS[@]}"
$BERDIFF train-ae data/prep_oct128 --out runs/oct128_ae --steps "$AE_STEPS" --entropy-weight 0.02 \
  "${AE_OPTS[@]}"

# 4. diffusion U-Net on the frozen autoencoder's codes (encoded once: --cache-codes auto), t <= 400
$BERDIFF train-diffusion data/prep_oct128 --ae runs/oct128_ae/autoencoder.pt --out runs/oct128_diff \
  --t-max 400 --steps "$DIFF_STEPS" --batch-size 16 --lr 2e-4 --threads 1 --ckpt-every 200 \
  --log-every 25 --sample-every 1000 --seed 0 --quiet

$BERDIFF export runs/oct128_diff/model.pt napari_berdiff/weights/oct_small.pt --overwrite  # float16
