# issue 14: fine-tune the shipped v4 BraTS-like U-Net with --corruption image (resumable: rerun)
set -e
cd "$(dirname "$0")/../../.."  # the repository root
B=.venv/bin/berdiff
date
[ -d data/synth_brats_train ] || $B synth-brats data/synth_brats_train --healthy 30 --tumour 40 --cavity 10 --ventricle 10 --seed 1234 --quiet
[ -d data/prep_brats128 ] || $B prepare-brats data/synth_brats_train data/prep_brats128 --image-size 128 --split 0.85 0.1 0.05 --quiet
date
W=napari_berdiff/weights/brats_small.pt
RES=(); [ -f runs/brats_v4_img/last.pt ] && RES=(--resume runs/brats_v4_img/last.pt)
$B train-diffusion data/prep_brats128 --ae $W --init $W --out runs/brats_v4_img "${RES[@]}" \
  --t-max 400 --steps ${STEPS:-4000} --batch-size 16 --lr 1e-4 --ema 0.995 --threads 1 --ckpt-every 250 \
  --log-every 25 --sample-every 100000 --seed 0 --quiet --corruption image
date
