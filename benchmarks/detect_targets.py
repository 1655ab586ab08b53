"""Check `berdiff detect`'s outputs against the labels: the deployment targets of issue 15.

    berdiff detect data/synth_brats_heldout/BraTS20_Training_00{3,4} --bundled brats --out res/
    .venv/bin/python benchmarks/detect_targets.py res/ data/synth_brats_heldout/BraTS20_Training_00{3,4}
    .venv/bin/python benchmarks/detect_targets.py res_oct/ data/synth_oct_heldout   # an OCT2017 tree

For every input named (BraTS case folders with a ``*_seg`` label, or an OCT2017-style tree with
``<CLASS>_masks/``), reads the mask ``berdiff detect`` wrote and prints: the input's kind (from the
label: diseased or healthy), the segmented share of its foreground (brain voxels: any modality >
0; B-scans: the whole image), the Dice against the label (diseased inputs), and its rank in
``berdiff_summary.csv``. Then the targets: Dice >= 0.5 on diseased volumes, < 0.5% of the
foreground segmented on healthy ones, every diseased input ranked above every healthy one, and the
image AUROC of each triage score of the summary.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def brats_rows(out: Path, case: Path) -> dict:
    import nibabel as nib

    from napari_berdiff.core.io.readers import find_brats_case, load_brats_case

    vol, seg, _ = load_brats_case(case)
    fg = (vol > 0).any(axis=0)
    mask = np.asarray(nib.load(str(out / f"{case.name}_berdiff_mask.nii.gz")).dataobj) > 0
    label = None if seg is None else seg > 0
    if label is None:
        files = find_brats_case(case)
        label = np.asarray(nib.load(str(files["seg"])).dataobj) > 0 if "seg" in files else None
    return {"input": str(case), "stem": case.name, "fg": int(fg.sum()),
            "seg": int((mask & fg).sum()), "label": label, "mask": mask}


def oct_rows(out: Path, root: Path) -> list[dict]:
    from napari_berdiff.core.io.files import is_image, is_mask_folder
    from napari_berdiff.core.io.images import load_image_2d

    rows = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and not is_mask_folder(p)):
        masks = root / f"{cls.name}_masks"
        for f in sorted(p for p in cls.iterdir() if is_image(p)):
            stem = f"{cls.name}/{f.stem}"
            mp = out / f"{stem}_berdiff_mask.png"
            if not mp.exists():
                continue
            mask = load_image_2d(mp) > 0.5
            lp = masks / f"{f.stem}.png"
            label = load_image_2d(lp) > 0.5 if lp.exists() else np.zeros_like(mask)
            rows.append({"input": str(f), "stem": stem, "fg": int(mask.size),
                         "seg": int(mask.sum()), "label": label, "mask": mask})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the --out folder of berdiff detect")
    ap.add_argument("inputs", nargs="+", help="BraTS case folders or an OCT2017-style tree")
    a = ap.parse_args(argv)
    from napari_berdiff.core.evaluation.metrics import dice, image_auroc

    out = Path(a.out)
    rows = []
    for p in map(Path, a.inputs):
        rows += [brats_rows(out, p)] if any(p.glob("*_seg.nii*")) else oct_rows(out, p)
    summary = {Path(r["input"]).resolve(): r for r in csv.DictReader(
        (out / "berdiff_summary.csv").open())}
    print("| input | kind | segmented share of foreground | Dice | rank | peak | area |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["diseased"] = bool(r["label"].any())
        r["share"] = r["seg"] / max(r["fg"], 1)
        r["dice"] = dice(r["mask"], r["label"]) if r["diseased"] else float("nan")
        s = summary.get(Path(r["input"]).resolve(), {})
        r["rank"] = int(s["rank"]) if s else -1
        r["peak"], r["area"] = float(s.get("peak", "nan")), float(s.get("area") or "nan")
        print(f"| {r['stem']} | {'diseased' if r['diseased'] else 'healthy'} | "
              f"{100 * r['share']:.3f}% | {r['dice']:.3f} | {r['rank']} | {r['peak']:.4g} | "
              f"{r['area']:.0f} |")
    sick = [r for r in rows if r["diseased"]]
    well = [r for r in rows if not r["diseased"]]
    if sick:
        print(f"diseased: Dice mean {np.mean([r['dice'] for r in sick]):.3f}, min "
              f"{min(r['dice'] for r in sick):.3f} (target >= 0.5)")
    if well:
        print(f"healthy: segmented share max {100 * max(r['share'] for r in well):.3f}% "
              "(target < 0.5%)")
    if sick and well:
        ok = max(r["rank"] for r in sick) < min(r["rank"] for r in well)
        print(f"ranking: every diseased input above every healthy one: {ok}")
        y = np.array([r["diseased"] for r in rows])
        for key in ("peak", "area"):
            print(f"image AUROC of {key}: {image_auroc(np.array([r[key] for r in rows]), y):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
