#!/usr/bin/env bash
# Regenerate the bundled OCT model (napari_berdiff/weights/oct_small.pt) from scratch on this CPU:
# synthetic OCT2017-style B-scans -> prepared images -> autoencoder -> diffusion U-Net.
# These are the commands that trained the shipped file (v1, then v2: the autoencoder's code made
# nearly deterministic with the entropy penalty and the U-Net fine-tuned on the cached codes);
# napari_berdiff/weights/TRAINING.md has the steps reached and the wall times.
#   bash scripts/train_bundled_oct.sh            # all stages (hours on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BERDIFF=.venv/bin/berdiff
AE_STEPS=${AE_STEPS:-2706}
DIFF_STEPS=${DIFF_STEPS:-4162}
# v2: the steps the shipped runs reached (they were stopped by SIGTERM and finalised with --steps)
AE_ENT_STEPS=${AE_ENT_STEPS:-3591}
DIFF2_STEPS=${DIFF2_STEPS:-12058}

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

# 5. v2: the autoencoder continues from step 2706 with the code-entropy penalty, in a new folder
$BERDIFF train-ae data/prep_oct128 --out runs/oct_ae_ent --resume runs/oct_ae/last.pt --config small \
  --steps "$AE_ENT_STEPS" --batch-size 8 --lr 2e-4 --disc-weight 0 --entropy-weight 0.02 --hflip \
  --threads 1 --ckpt-every 100 --log-every 25 --sample-every 250 --seed 0 --quiet

# 6. v2: the U-Net starts from v1 and trains on the new codes (encoded once), noise levels t <= 400
$BERDIFF train-diffusion data/prep_oct128 --ae runs/oct_ae_ent/autoencoder.pt --out runs/oct_diff2 \
  --init runs/oct_diff/model.pt --t-max 400 --config small --steps "$DIFF2_STEPS" --batch-size 16 \
  --lr 2e-4 --threads 1 --ckpt-every 200 --log-every 25 --sample-every 1000 --seed 0 --quiet

# v2 was shipped as this float16 export; v4 starts from it
$BERDIFF export runs/oct_diff2/model.pt runs/oct_v2_export.pt --overwrite  # float16 weights

# 8. v4 (shipped): the U-Net fine-tuned from v2 with structured latent corruption (issue 14;
#    --corruption patch: with probability 0.5 a smooth region of the code replaced by another
#    healthy training code's bits, shifted; the target is still the flips relative to the clean
#    code), on the same autoencoder; 12320 steps (the run was stopped there and finalised)
$BERDIFF train-diffusion data/prep_oct128 --ae runs/oct_v2_export.pt --init runs/oct_v2_export.pt \
  --out runs/oct_diff_patch --t-max 400 --steps "${DIFF4_STEPS:-12320}" --batch-size 16 --lr 1e-4 \
  --ema 0.995 --threads 1 --ckpt-every 250 --log-every 25 --sample-every 2500 --seed 0 --quiet \
  --corruption patch
$BERDIFF export runs/oct_diff_patch/model.pt napari_berdiff/weights/oct_small.pt --overwrite
# 9. thresholds at healthy false-positive rates (needs the held-out data of scripts/eval_bundled.sh)
ONLY=oct bash scripts/calibrate_bundled.sh
