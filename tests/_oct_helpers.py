"""OCT volume exports written in the tests from generated B-scans (``core.synth.oct.make_bscan``):

* :func:`write_heyex_xml`: a Heidelberg Heyex XML export, the XML (written with ElementTree) and
  its B-scan and localizer images (PNG, written with Pillow), with the ILM / RPE / BM boundary
  lines of the generated B-scans as segmentation lines, laid out as Heyex writes them;
* :func:`eye_volume`: an ``eyepy.EyeVolume`` with the same B-scans, localizer, boundaries and the
  drusen masks as a pixel annotation, to be saved with eyepy's own ``EyeVolume.save``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

SPACING = (0.12, 0.0039, 0.0117)  # between B-scans, depth, lateral (mm): Spectralis-like
LOC_SCALE = 0.03  # localizer pixel size (mm)
LOC_SHAPE = (256, 256)
X0, Y0 = 0.6, 2.0  # where the B-scan raster starts on the localizer (mm)


def bscans(n=4, seed=0):
    """``(images (n, 496, 512) uint8, masks (n, 496, 512) bool, boundaries {name: (n, 512)})``."""
    from napari_berdiff.core.synth.oct import make_bscan

    imgs, masks, lines = [], [], {"ILM": [], "RPE": [], "BM": []}
    for k in range(n):
        img, mask, meta = make_bscan(seed * 100 + k, drusen=True, patient=seed)
        imgs.append(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8))
        masks.append(mask.astype(bool))
        for name, key in (("ILM", "ilm"), ("RPE", "rpe_bottom"), ("BM", "bm")):
            lines[name].append(meta[key].astype(np.float32))
    return np.stack(imgs), np.stack(masks), {k: np.stack(v) for k, v in lines.items()}


def positions(n, width=512):
    """Each B-scan's (start, end) on the localizer in mm, (x, y); B-scan 0 lowest (largest y)."""
    sz, _, sx = SPACING
    return [((X0, Y0 + (n - 1 - k) * sz), (X0 + (width - 1) * sx, Y0 + (n - 1 - k) * sz))
            for k in range(n)]


def localizer(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    return np.clip(gaussian_filter(rng.random(LOC_SHAPE), 6) * 900 - 380, 0, 255).astype(np.uint8)


def _sub(parent, tag, text=None, **children):
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    for k, v in children.items():
        _sub(el, k, v)
    return el


def _date(parent, tag, y, m, d):
    _sub(_sub(parent, tag), "Date", Year=y, Month=m, Day=d)


def write_heyex_xml(folder, imgs, lines=None, name="export") -> Path:
    """The XML export of ``imgs`` (n, H, W) uint8 in ``folder``; returns the XML's path."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sz, sy, sx = SPACING
    root = ET.Element("HEDX")
    body = _sub(root, "BODY")
    _sub(body, "SWVersion", Version="6.16.7")
    patient = _sub(body, "Patient", ID=1, PatientID="SYN001", LastName="Test",
                   FirstNames="Synthetic")
    _date(patient, "Birthdate", 1950, 1, 1)
    study = _sub(patient, "Study", ID=3)
    _date(study, "StudyDate", 2024, 5, 6)
    series = _sub(study, "Series", ID=7, Laterality="R")
    ref = _sub(series, "ReferenceSeries", ID=7)
    _date(ref, "ExamDate", 2024, 5, 6)
    loc_name = f"{name}_loc.png"
    Image.fromarray(localizer()).save(folder / loc_name)
    img = _sub(series, "Image", ID=0)
    _sub(img, "ImageType", Type="LOCALIZER")
    _sub(img, "OphthalmicAcquisitionContext", Width=LOC_SHAPE[1], Height=LOC_SHAPE[0],
         ScaleX=LOC_SCALE, ScaleY=LOC_SCALE, Angle=30, Focus=0.0)
    _sub(img, "ImageData", ExamURL=f"C:\\HEYEX\\export\\{loc_name}")
    for k, ((x0, y0), (x1, y1)) in enumerate(positions(len(imgs), imgs.shape[2])):
        fname = f"{name}_{k:03d}.png"
        Image.fromarray(imgs[k]).save(folder / fname)
        img = _sub(series, "Image", ID=k + 1)
        _sub(img, "ImageType", Type="OCT")
        ctx = _sub(img, "OphthalmicAcquisitionContext", Width=imgs.shape[2], Height=imgs.shape[1],
                   ScaleX=sx, ScaleY=sy, ImageQuality=31.5)
        _sub(_sub(ctx, "Start"), "Coord", X=x0, Y=y0)
        _sub(_sub(ctx, "End"), "Coord", X=x1, Y=y1)
        _sub(img, "ImageData", ExamURL=f"C:\\HEYEX\\export\\{fname}")
        if lines:
            seg = _sub(img, "Segmentation", NumSegmentations=len(lines))
            for lname, h in lines.items():
                _sub(seg, "SegLine", Name=lname, Array=" ".join(repr(float(v)) for v in h[k]),
                     Manual="false")
    path = folder / f"{name}.xml"
    ET.ElementTree(root).write(str(path), encoding="UTF-8", xml_declaration=True)
    return path


def eye_volume(imgs, masks, lines):
    """An eyepy EyeVolume of the B-scans with localizer, boundaries and drusen annotation."""
    import datetime

    import eyepy as ep

    sz, sy, sx = SPACING
    meta = ep.EyeVolumeMeta(
        scale_z=sz, scale_y=sy, scale_x=sx, scale_unit="mm", laterality="OD",
        visit_date=datetime.datetime(2024, 5, 6), exam_time=datetime.datetime(2024, 5, 6),
        bscan_meta=[ep.EyeBscanMeta(start_pos=s, end_pos=e, pos_unit="mm")
                    for s, e in positions(len(imgs), imgs.shape[2])])
    loc = ep.EyeEnface(localizer(), ep.EyeEnfaceMeta(scale_x=LOC_SCALE, scale_y=LOC_SCALE,
                                                     scale_unit="mm", modality="NIR",
                                                     laterality="OD", field_size=30,
                                                     scan_focus=0.0))
    ev = ep.EyeVolume(data=imgs, meta=meta, localizer=loc)
    for name, h in lines.items():
        ev.add_layer_annotation(h, name=name)
    ev.add_pixel_annotation(masks, name="drusen")
    return ev
