"""Matching DICOM series to a model's channels by SeriesDescription (:func:`channel_of_series`,
:func:`match_channels`), and checking that the matched series come from one study and one frame
of reference (:func:`check_one_study`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from .dicom_series import DicomSeries
from .files import DataError

__all__ = ["channel_of_series", "match_channels", "check_one_study"]

_POST_TOKENS = {"post", "postcontrast", "contrast", "gd", "gad", "gado", "gadolinium", "ce", "km",
                "+c", "+gd", "+km", "t1ce", "t1c", "t1gd", "t1post", "t1wce", "t1wpost"}


def _tokens(text: str) -> list[str]:
    return re.findall(r"\+?[a-z0-9]+", (text or "").lower())


def channel_of_series(description: str, contrast_agent: bool = False) -> str | None:
    """The BraTS channel (``flair``, ``t1``, ``t1ce``, ``t2``) a SeriesDescription names, or
    None. FLAIR wins over T2 (a FLAIR is T2-weighted; also ``t2f``, TIRM, dark fluid); a T1
    (``t1*``, MPRAGE, SPGR) with a contrast marker (``post``, ``+c``, ``c+``, ``gd``, ``ce``,
    ``contrast``, ``km``, ``t1ce``...) or a ContrastBolusAgent in its header is T1ce; T2* is
    not T2."""
    low = (description or "").lower()
    toks = _tokens(low)
    if any("flair" in t or t in ("t2f", "tirm", "darkfluid") for t in toks) or "dark fluid" in low:
        return "flair"
    if any(t.startswith("t1") or t in ("mprage", "spgr", "bravo") for t in toks):
        post = contrast_agent or "c+" in low or any(t in _POST_TOKENS for t in toks)
        return "t1ce" if post else "t1"
    if "t2*" in low or any(t in ("t2star", "t2s", "swi", "gre") for t in toks):
        return None
    if any(t.startswith("t2") for t in toks):
        return "t2"
    return None


def match_channels(series: Sequence[DicomSeries], channel_names: Sequence[str] | None,
                   n_channels: int, where: Path) -> list[DicomSeries]:
    """The series for each of the model's channels, in order; DataError naming what is missing
    or ambiguous. A one-channel model takes the series named like its channel, else the only
    usable one."""
    ok = [s for s in series if not s.problem]
    names = [str(n).lower() for n in (channel_names or [])]
    found = "; ".join(f"'{s.label}'" + (f" (refused: {s.problem})" if s.problem else "")
                      for s in series) or "none"
    by_channel: dict[str, list[DicomSeries]] = {}
    for s in ok:
        ch = channel_of_series(s.description, s.contrast_agent)
        if ch is not None:
            by_channel.setdefault(ch, []).append(s)
    if n_channels == 1 and len(ok) == 1 and not (len(names) == 1 and by_channel.get(names[0])):
        return ok
    if n_channels == 1 and len(ok) != 1 and not (len(names) == 1 and by_channel.get(names[0])):
        raise DataError(where, f"{where.name} holds {len(ok)} usable DICOM series ({found}); "
                               "the one-channel model takes one: give one series folder")
    if len(names) != n_channels:
        raise DataError(where, f"{where.name}: the model's {n_channels} channels have no names "
                               f"to match DICOM series by (found {found})")
    missing = [n for n in names if not by_channel.get(n)]
    if missing:
        titles = ", ".join(_title(n) for n in missing)
        raise DataError(where, f"{where.name}: no DICOM series for {titles} (matched by "
                               f"SeriesDescription; found {found})")
    twice = [n for n in names if len(by_channel[n]) > 1]
    if twice:
        n = twice[0]
        labels = ", ".join(f"'{s.label}'" for s in by_channel[n])
        raise DataError(where, f"{where.name}: {len(by_channel[n])} DICOM series could be "
                               f"{_title(n)} ({labels}); keep one in the folder")
    return [by_channel[n][0] for n in names]


def check_one_study(chosen: Sequence[DicomSeries], where: Path) -> None:
    """DataError naming two of the channels' series when they come from different studies
    (StudyInstanceUID) or different frames of reference (FrameOfReferenceUID: positions not in
    one patient coordinate system), where every series has the tag."""
    for key, what, label, advice in (
            ("study_uid", "different studies", "study_label",
             "the model's channels must be series of one study: give a folder of one study"),
            ("frame_uid", "different frames of reference", "frame_label",
             "their positions are not in one patient coordinate system: register them onto one "
             "grid first")):
        values = [getattr(s, key) for s in chosen]
        if len(chosen) < 2 or not all(values) or len(set(values)) == 1:
            continue
        a = chosen[0]
        b = next(s for s in chosen if getattr(s, key) != getattr(a, key))
        names = [f"'{s.label}' ({getattr(s, label)})" for s in (a, b)]
        raise DataError(where, f"{where.name}: DICOM series {names[0]} and {names[1]} come from "
                               f"{what}; {advice}")


def _title(name: str) -> str:
    return {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}.get(name, name)
