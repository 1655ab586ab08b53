#!/usr/bin/env bash
# Regenerate the bundled BraTS-like model (napari_berdiff/weights/brats_small.pt) from scratch on
# this CPU: synthetic training cases -> prepared slices -> autoencoder -> diffusion U-Net.
# These are the commands that trained the shipped file, in the order they ran (v0; v1: the
# autoencoder trained further, the U-Net fine-tuned on it; v2: the autoencoder's code made nearly
# deterministic with the entropy penalty, the U-Net fine-tuned on the cached codes);
# napari_berdiff/weights/TRAINING.md has the steps reached and the wall times.
#   bash scripts/train_bundled.sh            # all stages (hours on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BERDIFF=.venv/bin/berdiff
AE_STEPS_V0=${AE_STEPS_V0:-1992}
DIFF_STEPS_V0=${DIFF_STEPS_V0:-3708}
AE_STEPS=${AE_STEPS:-5008}
DIFF_STEPS=${DIFF_STEPS:-4096}
# v2: the steps the shipped runs reached (they were stopped by SIGTERM and finalised with --steps)
AE_ENT_STEPS=${AE_ENT_STEPS:-5887}
DIFF2_STEPS=${DIFF2_STEPS:-12001}
AE_OPTS=(--config small --batch-size 8 --lr 2e-4 --disc-weight 0 --hflip --threads 1 --ckpt-every 200
         --log-every 25 --sample-every 500 --seed 0 --quiet)
DIFF_OPTS=(--config small --batch-size 16 --lr 2e-4 --threads 1 --ckpt-every 200 --log-every 25 --seed 0 --quiet)

# 1. 90 synthetic subjects in the BraTS2020 layout (30 healthy, 40 tumour, 10 cavity, 10 enlarged ventricle)
[ -d data/synth_brats_train ] || $BERDIFF synth-brats data/synth_brats_train --healthy 30 --tumour 40 \
  --cavity 10 --ventricle 10 --seed 1234 --quiet

# 2. axial slices 80..128, per-volume percentile normalisation, 240 -> 128 (pad to square, resize)
[ -d data/prep_brats128 ] || $BERDIFF prepare-brats data/synth_brats_train data/prep_brats128 \
  --image-size 128 --split 0.85 0.1 0.05 --quiet

# 3. v0: autoencoder (L1, no adversarial term) to step 1992, U-Net on its codes to step 3708 (all t)
$BERDIFF train-ae data/prep_brats128 --out runs/brats_ae --steps "$AE_STEPS_V0" "${AE_OPTS[@]}"
$BERDIFF train-diffusion data/prep_brats128 --ae runs/brats_ae/autoencoder.pt --out runs/brats_diff \
  --steps "$DIFF_STEPS_V0" "${DIFF_OPTS[@]}"

# 4. the autoencoder trains on (resumes from runs/brats_ae/last.pt) to step 5008
$BERDIFF train-ae data/prep_brats128 --out runs/brats_ae --steps "$AE_STEPS" "${AE_OPTS[@]}"

# 5. v1: the U-Net starts from v0 and trains on the new codes, noise levels t <= 500 only
$BERDIFF train-diffusion data/prep_brats128 --ae runs/brats_ae/autoencoder.pt --out runs/brats_diff1 \
  --init runs/brats_diff/model.pt --t-max 500 --steps "$DIFF_STEPS" --sample-every 1000 "${DIFF_OPTS[@]}"

# 6. v2: the autoencoder continues from step 5008 with the code-entropy penalty (bit probabilities
#    pushed to 0/1: a coin-flip bit is noise that the U-Net cannot learn), in a new folder
$BERDIFF train-ae data/prep_brats128 --out runs/brats_ae_ent --resume runs/brats_ae/last.pt --config small \
  --steps "$AE_ENT_STEPS" --batch-size 8 --lr 2e-4 --disc-weight 0 --entropy-weight 0.02 --hflip \
  --threads 1 --ckpt-every 100 --log-every 25 --sample-every 250 --seed 0 --quiet

# 7. v2: the U-Net starts from v1 and trains on the new codes (encoded once), noise levels t <= 400
$BERDIFF train-diffusion data/prep_brats128 --ae runs/brats_ae_ent/autoencoder.pt --out runs/brats_diff2 \
  --init runs/brats_diff1/model.pt --t-max 400 --steps "$DIFF2_STEPS" --sample-every 1000 "${DIFF_OPTS[@]}"

# v2 was shipped as this float16 export; v4 starts from it
$BERDIFF export runs/brats_diff2/model.pt runs/brats_v2_export.pt --overwrite  # float16 weights

# 8. v4 (shipped): the U-Net fine-tuned from v2 with structured latent corruption (issue 14;
#    --corruption patch: with probability 0.5 a smooth region of the code replaced by another
#    healthy training code's bits, shifted; the target is still the flips relative to the clean
#    code), on the same autoencoder; 20000 steps (the run was stopped there and finalised)
$BERDIFF train-diffusion data/prep_brats128 --ae runs/brats_v2_export.pt --init runs/brats_v2_export.pt \
  --out runs/brats_diff_patch --t-max 400 --steps "${DIFF4_STEPS:-20000}" --batch-size 16 --lr 1e-4 \
  --ema 0.995 --threads 1 --ckpt-every 250 --log-every 25 --sample-every 2500 --seed 0 --quiet \
  --corruption patch
$BERDIFF export runs/brats_diff_patch/model.pt napari_berdiff/weights/brats_small.pt --overwrite
# 9. thresholds at healthy false-positive rates (needs the held-out data of scripts/eval_bundled.sh)
ONLY=brats bash scripts/calibrate_bundled.sh
