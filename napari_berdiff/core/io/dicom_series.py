"""One DICOM series as read from its headers (:class:`DicomSeries`), and pydicom as an optional
extra (:func:`require_pydicom`). The pieces: discovery and grouping (:mod:`.dicom_scan`),
geometry (:mod:`.dicom_geometry`), channel matching (:mod:`.dicom_channels`), volumes
(:mod:`.dicom`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import DataError

__all__ = ["DicomSeries", "require_pydicom", "short_reason"]


def require_pydicom():
    """The pydicom module, or a DataError saying how to install it (one line)."""
    try:
        import pydicom
    except ImportError:
        raise DataError(None, "reading DICOM needs pydicom: pip install 'napari-berdiff[dicom]'"
                        ) from None
    return pydicom


@dataclass
class DicomSeries:
    """One series: its files and headers in slice order once checked, or ``problem`` (why it is
    not a volume)."""

    uid: str
    files: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)
    problem: str | None = None

    def _tag(self, key: str, default=None):
        return getattr(self.headers[0], key, default) if self.headers else default

    @property
    def description(self) -> str:
        return str(self._tag("SeriesDescription", "") or self._tag("ProtocolName", "") or "").strip()

    @property
    def number(self) -> int | None:
        n = self._tag("SeriesNumber")
        try:
            return None if n in (None, "") else int(n)
        except (TypeError, ValueError):
            return None

    @property
    def label(self) -> str:
        """``"5 T1 POST"`` (number and description) for messages and layer names."""
        parts = [str(self.number) if self.number is not None else "", self.description]
        return " ".join(p for p in parts if p) or self.uid[-12:]

    @property
    def contrast_agent(self) -> bool:
        return bool(str(self._tag("ContrastBolusAgent", "") or "").strip())

    @property
    def study_uid(self) -> str:
        return str(self._tag("StudyInstanceUID", "") or "").strip()

    @property
    def frame_uid(self) -> str:
        return str(self._tag("FrameOfReferenceUID", "") or "").strip()

    @property
    def frame_label(self) -> str:
        uid = self.frame_uid
        return f"FrameOfReferenceUID {'...' + uid[-12:] if len(uid) > 15 else uid}"

    @property
    def study_label(self) -> str:
        """``"study ...1234.5678 of 2024-05-06"``: the end of the StudyInstanceUID and the date."""
        date = str(self._tag("StudyDate", "") or "").strip()
        if len(date) == 8 and date.isdigit():
            date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        uid = self.study_uid or "(no StudyInstanceUID)"
        return f"study {'...' + uid[-12:] if len(uid) > 15 else uid}" + (f" of {date}" if date else "")


def short_reason(e: Exception, n: int = 140) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[: n - 3] + "..."
