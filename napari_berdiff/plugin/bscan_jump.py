"""Click a B-scan line on an OCT localizer -> the viewer shows that B-scan.

The OCT reader (:mod:`.reader_clinical`) returns layer data, not layers, so the hookup happens when
the layers arrive: :func:`attach` (called by the reader for the viewer it reads into, and by the
widget for its own) watches the viewer's layer list and gives every B-scan positions layer
(metadata ``bscan_lines``) and its localizer a click callback. A click (press and release without
dragging) with one of them selected picks the nearest line (:func:`.bscan_lines.nearest_line`) and
moves the slider of the volume's B-scan axis there (:func:`jump_to_bscan`).
"""

from __future__ import annotations

import weakref

import numpy as np

from .bscan_lines import nearest_line, pick_tolerance

__all__ = ["attach", "attach_current_viewer", "jump_to_bscan", "volume_of", "positions_of"]

_TAG = "_berdiff_bscan_jump"


def _from_same_export(layer, meta: dict) -> bool:
    m = getattr(layer, "metadata", None) or {}
    return m.get("source") == meta.get("source")


def volume_of(viewer, layer):
    """The B-scan volume layer read from the same OCT export as ``layer`` (its localizer or
    positions layer), or None."""
    meta = layer.metadata or {}
    for ly in viewer.layers:
        m = ly.metadata or {}
        if (type(ly).__name__ == "Image" and m.get("oct_volume") and m.get("modality") == "oct"
                and "output" not in m and ly.ndim == 3 and _from_same_export(ly, meta)):
            return ly
    return None


def positions_of(viewer, layer):
    """The B-scan positions layer of the same OCT export as ``layer`` (itself if it is one)."""
    if (layer.metadata or {}).get("bscan_lines"):
        return layer
    for ly in viewer.layers:
        if (ly.metadata or {}).get("bscan_lines") and _from_same_export(ly, layer.metadata or {}):
            return ly
    return None


def jump_to_bscan(viewer, layer, world_position) -> int | None:
    """Move the B-scan slider to the line of ``layer``'s export nearest to ``world_position``
    (the viewer's world coordinates, as a mouse event gives them); returns the B-scan number,
    or None when no line lies near enough or the volume is not in the viewer."""
    lines_layer = positions_of(viewer, layer)
    vol = volume_of(viewer, layer)
    if lines_layer is None or vol is None or len(lines_layer.data) == 0:
        return None
    lines = np.asarray([np.asarray(d, float)[:2, -2:] for d in lines_layer.data])
    point = np.asarray(lines_layer.world_to_data(np.asarray(world_position, float)))[-2:]
    k = nearest_line(lines, point, pick_tolerance(lines))
    if k is None:
        return None
    feats = getattr(lines_layer, "features", None)
    bscan = int(feats["bscan"].iloc[k]) if feats is not None and "bscan" in feats else k
    bscan = min(max(bscan, 0), vol.data.shape[0] - 1)
    world = np.asarray(vol.data_to_world((bscan, 0, 0)), float)
    axis = viewer.dims.ndim - vol.ndim  # the volume's first axis among the viewer's
    viewer.dims.set_point(axis, float(world[0]))
    return bscan


def _click_callback(viewer_ref):
    def on_click(layer, event):
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        viewer = viewer_ref()
        if not dragged and viewer is not None:
            jump_to_bscan(viewer, layer, event.position)

    return on_click


def _hook(viewer, layer) -> None:
    meta = getattr(layer, "metadata", None) or {}
    if not (meta.get("bscan_lines") or meta.get("modality") == "localizer"):
        return
    if any(getattr(cb, _TAG, False) for cb in layer.mouse_drag_callbacks):
        return
    cb = _click_callback(weakref.ref(viewer))
    setattr(cb, _TAG, True)
    layer.mouse_drag_callbacks.append(cb)


def attach(viewer) -> None:
    """Give the B-scan positions and localizer layers of ``viewer`` (now and later) the click
    that jumps to a B-scan; once per viewer."""
    for ly in viewer.layers:
        _hook(viewer, ly)
    inserted = viewer.layers.events.inserted
    if any(getattr(cb, _TAG, False) for cb in inserted.callbacks):
        return
    ref = weakref.ref(viewer)

    def on_inserted(event):
        v = ref()
        if v is not None:
            _hook(v, event.value)

    setattr(on_inserted, _TAG, True)
    inserted.connect(on_inserted)


def attach_current_viewer() -> None:
    """:func:`attach` for napari's current viewer (the one a reader reads into), if any."""
    try:
        from napari import current_viewer
    except ImportError:
        return
    viewer = current_viewer()
    if viewer is not None:
        attach(viewer)
