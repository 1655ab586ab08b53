"""Reports of :func:`.evaluate.evaluate`: JSON, CSV (one row per method), Markdown; and helpers
that prepare an evaluation (slice subsets, anomaly kinds per slice)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write_text
from ..io.jsonable import to_jsonable
from ..io.outputs import check_outputs

__all__ = ["write_reports", "markdown_table", "report_files", "anomaly_kinds", "pick_slices",
           "to_jsonable"]

REPORT_FILES = {"json": "evaluation.json", "csv": "evaluation.csv", "md": "evaluation.md",
                "per_slice": "per_slice.csv"}
CSV_COLUMNS = ("method", "P", "paper_dice", "paper_dice_std", "paper_auprc", "paper_auprc_std",
               "paper_auroc", "paper_auroc_std", "paper_n", "psnr_diseased", "psnr_diseased_std",
               "psnr_healthy", "psnr_healthy_std", "strict_auprc", "strict_auroc", "strict_exact",
               "val_threshold", "val_dice", "strict_dice", "strict_dice_mean",
               "image_auroc_fraction", "image_auroc_area", "image_auroc_peak",
               "image_auroc_area_calibrated", "seconds_per_image", "peak_mem_mb", "mem_kind")
LABELS = {"masked": "masked Bernoulli", "unmasked": "unmasked (P=0)",
          "ae_only": "autoencoder only", "threshold": "intensity threshold"}


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _pm(row: dict, key: str, digits: int = 3) -> str:
    m, s = row.get(key), row.get(f"{key}_std")
    if m is None or not math.isfinite(m):
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s is not None and math.isfinite(s) else _f(m, digits)


def markdown_table(results: dict) -> str:
    """The methods as a Markdown table (plus the per-kind breakdown when present)."""
    cfg = results.get("config", {})
    head = ("| method | P | Dice (paper) | AUPRC (paper) | AUROC (paper) | PSNR diseased | "
            "PSNR healthy | AUPRC pooled | AUROC pooled | Dice pooled (val thr) | "
            "image AUROC (mask frac) | image AUROC (area) | s / image | peak MB |")
    lines = [f"Evaluation: L={cfg.get('L')}, P={cfg.get('P')}, steps={cfg.get('steps')}, "
             f"seed={cfg.get('seed')}, min component size {cfg.get('min_size')}, "
             f"{cfg.get('n_test')} test slices ({cfg.get('n_test_diseased')} diseased, "
             f"{cfg.get('n_test_healthy')} healthy), {cfg.get('n_val')} validation slices; "
             f"pixels: {cfg.get('conventions', {}).get('brain_mask', '')}.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in results.get("methods", []):
        p = "" if r.get("P") is None else f"{r['P']:g}"
        lines.append(
            f"| {LABELS.get(r['method'], r['method'])} | {p} | {_pm(r, 'paper_dice')} | "
            f"{_pm(r, 'paper_auprc')} | {_pm(r, 'paper_auroc')} | {_pm(r, 'psnr_diseased', 2)} | "
            f"{_pm(r, 'psnr_healthy', 2)} | {_f(r.get('strict_auprc'))} | "
            f"{_f(r.get('strict_auroc'))} | {_f(r.get('strict_dice'))} | "
            f"{_f(r.get('image_auroc_fraction'))} | {_f(r.get('image_auroc_area'))} | "
            f"{_f(r.get('seconds_per_image'), 2)} | {_f(r.get('peak_mem_mb'), 0)} |")
    if cfg.get("n_val", 0) == 0 or cfg.get("n_val_diseased", 1) == 0:
        why = ("no validation split was used" if cfg.get("n_val", 0) == 0 else
               "the validation split has no diseased slices")
        lines += ["", f"n/a in 'Dice pooled (val thr)' (and for the intensity threshold): {why}, "
                      "so no threshold could be chosen on it; prepare the data with diseased "
                      "validation slices (e.g. a larger or different --split)."]
    lines += _triage_table(results)
    kinds = results.get("per_kind") or {}
    if kinds:
        methods = [r["method"] for r in results.get("methods", [])]
        lines += ["", "Dice (paper protocol; the intensity threshold at its validation threshold) "
                      "per anomaly kind:", "",
                  "| kind | n | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for kind, e in kinds.items():
            cells = [_pm({"d": e[m]["dice"], "d_std": e[m]["dice_std"]}, "d") for m in methods]
            lines.append(f"| {kind} | {e['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _triage_table(results: dict) -> list[str]:
    """Image AUROC (healthy vs diseased test slices) of each triage score per method."""
    cfg = results.get("config", {})
    thr = cfg.get("calibrated_threshold")
    cal = ("uncalibrated model: n/a" if thr is None or not math.isfinite(thr)
           else f"threshold {thr:.4g}")
    out = ["", "Image AUROC of the triage scores (docs/thresholds.md; healthy vs diseased test "
               "slices; peak = 99.9th percentile of the filtered map):", "",
           f"| method | masked fraction | area (val thr) | area (calibrated; {cal}) | peak |",
           "|---|---|---|---|---|"]
    for r in results.get("methods", []):
        out.append(f"| {LABELS.get(r['method'], r['method'])} | "
                   f"{_f(r.get('image_auroc_fraction'))} | {_f(r.get('image_auroc_area'))} | "
                   f"{_f(r.get('image_auroc_area_calibrated'))} | "
                   f"{_f(r.get('image_auroc_peak'))} |")
    return out


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in to_jsonable(r).items()})
    return buf.getvalue()


def _per_slice_rows(ps: dict) -> tuple[list[dict], list[str]]:
    cols = [k for k, v in ps.items() if v is not None]
    n = len(ps["case_id"])
    return [{k: ps[k][i] for k in cols} for i in range(n)], cols


def report_files(out_dir: str | Path) -> dict[str, Path]:
    return {k: Path(out_dir) / v for k, v in REPORT_FILES.items()}


def write_reports(results: dict, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write ``evaluation.json`` (everything but the per-slice values), ``evaluation.csv`` (one
    row per method), ``evaluation.md`` and ``per_slice.csv`` into ``out_dir``; each file is
    written to a temporary name and renamed. Existing files raise FileExistsError unless
    ``overwrite`` (checked before anything is written)."""
    files = report_files(out_dir)
    check_outputs(files.values(), overwrite)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in results.items() if k != "per_slice"}
    atomic_write_text(files["json"], json.dumps(to_jsonable(body), indent=2) + "\n")
    atomic_write_text(files["csv"], _csv(results.get("methods", []), list(CSV_COLUMNS)))
    atomic_write_text(files["md"], markdown_table(results))
    if results.get("per_slice"):
        rows, cols = _per_slice_rows(results["per_slice"])
        atomic_write_text(files["per_slice"], _csv(rows, cols))
    else:
        files.pop("per_slice")
    return files


# ----------------------------------------------------------------------------- preparation


def pick_slices(n: int, max_n: int | None) -> np.ndarray:
    """``max_n`` evenly spaced indices of ``range(n)`` (all when ``max_n`` is None or >= n), so
    that a subset still spans every case of the split."""
    if max_n is None or max_n >= n:
        return np.arange(n)
    if max_n <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.rint(np.linspace(0, n - 1, int(max_n))).astype(np.int64))


def anomaly_kinds(split, source: str | Path | None = None) -> np.ndarray | None:
    """Per-slice anomaly kind for a breakdown, or None when unknown.

    OCT: the class name (CNV, DME, DRUSEN; NORMAL for healthy scans). Synthetic BraTS: the
    ``kind`` (tumour, cavity, ventricle) recorded in ``<source>/<case>/<case>_synth.json`` or in
    ``<source>/synth_manifest.json``, where ``source`` defaults to the prepared meta's
    ``source``; healthy slices are ``healthy``.
    """
    healthy = np.asarray(split.healthy, bool)
    cls = getattr(split, "class_name", None)
    if cls is not None and len(cls) and any(str(c) for c in cls):
        return np.asarray([str(c) for c in cls])
    root = Path(source) if source is not None else (
        Path(split.meta["source"]) if (split.meta or {}).get("source") else None)
    if root is None or not root.is_dir():
        return None
    table: dict[str, str] = {}
    manifest = root / "synth_manifest.json"
    if manifest.is_file():
        try:
            for row in json.loads(manifest.read_text()).get("cases", []):
                table[str(row["folder"])] = str(row["kind"])
        except (ValueError, KeyError, TypeError):
            table = {}
    kinds = []
    for cid, h in zip(split.case_id, healthy):
        cid = str(cid)
        if cid not in table:
            f = root / cid / f"{cid}_synth.json"
            try:
                table[cid] = str(json.loads(f.read_text())["kind"]) if f.is_file() else ""
            except (ValueError, KeyError, TypeError, OSError):
                table[cid] = ""
        kinds.append("healthy" if h else (table[cid] or "unknown"))
    out = np.asarray(kinds)
    return None if np.all((out == "unknown") | (out == "healthy")) else out
