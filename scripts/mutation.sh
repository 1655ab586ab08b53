#!/usr/bin/env bash
# Mutation testing of the method's code (docs/mutation.md): the schedule, the sampler, the
# diffusion training step (DiffusionTask.noisy_pair / train_step) and the training losses, against
# the fast tests listed in pyproject.toml [tool.mutmut]. Not part of the test suite or CI; about an
# hour on 2 busy cores.
#   bash scripts/mutation.sh                    # run (needs mutmut: pip install mutmut)
#   WORK=/tmp/m bash scripts/mutation.sh        # elsewhere; `cd $WORK && mutmut show NAME` after
#   RERUN=1 bash scripts/mutation.sh            # after adding tests: rerun only the survivors
#                                               # of the last run in $WORK with the current tests
#
# It works on a copy of the tree (mutmut writes mutants/ into the directory it runs in). mutmut 3
# only mutates undecorated functions, so in the copy `@torch.no_grad()` on noisy_pair becomes a
# `with torch.no_grad():` block (the same computation) to make it a mutation target.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
MUTMUT=${MUTMUT:-$VENV/bin/mutmut}
PY=${PY:-$VENV/bin/python}
WORK=${WORK:-/tmp/berdiff-mutation}
JOBS=${JOBS:-2}
[ -x "$MUTMUT" ] || { echo "mutmut not found at $MUTMUT; pip install mutmut (or set MUTMUT=)" >&2; exit 2; }

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # 2 threads on a busy machine: several times slower
if [ -n "${RERUN:-}" ]; then
  [ -s "$WORK/survivors.txt" ] || { echo "no $WORK/survivors.txt to rerun" >&2; exit 2; }
  rm -rf "$WORK/tests" && cp -r tests pyproject.toml "$WORK/"
  cd "$WORK"
  cp survivors.txt survivors-before.txt
  mapfile -t names < <(cut -d: -f1 survivors-before.txt)
  env -u PYTHONPATH "$MUTMUT" run --max-children "$JOBS" "${names[@]}" > mutmut-rerun.log 2>&1 || {
    tail -c 4000 mutmut-rerun.log >&2; exit 1; }
  grep -E "^🙁|^⏰|^🫥|^🤔" mutmut-rerun.log | awk '{print $2": not killed"}' > survivors.txt || true
else
rm -rf "$WORK"
mkdir -p "$WORK"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp -P --parents -t "$WORK"
"$PY" - "$WORK/src_training/train/train_diffusion.py" <<'EOF'
import re, sys
path = sys.argv[1]
src = open(path).read()
pat = re.compile(r"    @torch\.no_grad\(\)\n    (def noisy_pair\(.*?\n)(.*?)(?=\n    def )", re.S)
m = pat.search(src)
if m is None:
    sys.exit("scripts/mutation.sh: noisy_pair is no longer decorated as expected; update the script")
head, body = m.group(1), m.group(2)
doc_end = body.index('"""', body.index('"""') + 3) + 3  # keep the docstring first
code = body[doc_end:].lstrip("\n")
block = "        with torch.no_grad():\n" + "\n".join(
    ("    " + ln) if ln.strip() else ln for ln in code.split("\n"))
open(path, "w").write(src[:m.start()] + "    " + head + body[:doc_end] + "\n" + block + src[m.end():])
EOF

cd "$WORK"
# The method first (schedule, sampler, training step, diffusion loss), then the other losses.
METHOD=(
  "napari_berdiff.core.diffusion.schedule.*"
  "napari_berdiff.core.diffusion.sampler.*"
  "src_training.train.train_diffusion.xǁDiffusionTaskǁnoisy_pair__mutmut_*"
  "src_training.train.train_diffusion.xǁDiffusionTaskǁtrain_step__mutmut_*"
  "src_training.train.losses.x_flip_bce_loss__mutmut_*"
)
OTHER_LOSSES=("src_training.train.losses.*")
for part in METHOD OTHER_LOSSES; do
  declare -n pats=$part
  start=$(date +%s)
  env -u PYTHONPATH "$MUTMUT" run --max-children "$JOBS" "${pats[@]}" > "mutmut-$part.log" 2>&1 || {
    tail -c 4000 "mutmut-$part.log" >&2; exit 1; }
  echo "mutmut run $part: $(( $(date +%s) - start )) s; log in $WORK/mutmut-$part.log"
done
# Everything not killed in the selected functions (the rest of train_diffusion.py is "not checked").
"$MUTMUT" results | grep -E "schedule\.|sampler\.|losses\.|noisy_pair|train_step" \
  | grep -v "not checked" | sed 's/^ *//' > survivors.txt || true
fi
cut -d: -f2 survivors.txt | sort | uniq -c
: > survivors.diff
for name in $(cut -d: -f1 survivors.txt); do "$MUTMUT" show "$name" >> survivors.diff; done
echo "$(grep -c . survivors.txt || true) mutants not killed: $WORK/survivors.txt, diffs in $WORK/survivors.diff"
