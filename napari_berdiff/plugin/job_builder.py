"""A run's :class:`~.run.Job` and :class:`~.run.RunContext` from the widget's controls and layers
(main thread; InputError says why a run cannot start)."""

from __future__ import annotations

from .inputs import (InputError, base_name, build_volume, channel_titles, pixel_spacing,
                     run_slices, view_of)
from .layers import SliceMap, slice_map_for_layer
from .run import Job, RunContext
from .widget_outputs import _uid

__all__ = ["build_job"]


def build_job(c, inputs, viewer, ck, rule, detector=(None, None),
              normalized=(None, None)) -> tuple[Job, RunContext]:
    """The job of a run with the controls ``c``, the input chooser ``inputs``, checkpoint ``ck``
    and segmentation ``rule``; ``detector`` and ``normalized`` are the widget's caches,
    ``(key, value)``, reused when their key still fits."""
    if ck is None:
        raise InputError(c.model_info.value or "choose a model")
    layers, channel_axis = inputs.source()
    src = view_of(layers, channel_axis)
    if src.ndim not in (2, 3):
        raise InputError(f"{src.name} is {src.ndim}D; the widget takes 2D images or 3D stacks")
    slices = run_slices(src, c.scope.value, c.range_from.value, c.range_to.value, viewer)
    settings = c.settings()
    norm_key = tuple((_uid(ly), id(ly.data), tuple(ly.data.shape)) for ly in layers) + (
        channel_axis, ck.sha256)  # the normalisation follows the model
    cached = normalized[1] if normalized[0] == norm_key else None
    volume = None if cached is not None else build_volume(layers, channel_axis)
    C = len(layers) if channel_axis is None else layers[0].data.shape[channel_axis]
    if ck.in_channels != C:
        want = channel_titles(ck.meta.get("channel_names"), ck.in_channels)
        raise InputError(f"the model expects {want}, the input has {C}")
    det_key = (ck.sha256, c.device.value)
    Z = 1 if src.ndim == 2 else src.data.shape[0]
    job = Job(volume=volume, slices=slices,
              slice_map=slice_map_for_layer(src.metadata, Z) if src.ndim == 3 else SliceMap(),
              checkpoint=ck, spacing=pixel_spacing(src), device=c.device.value,
              settings=settings, normalized=cached,
              detector=detector[1] if detector[0] == det_key else None, rule=rule)
    ctx = RunContext(layers, src, base_name(layers), inputs.channel_names, settings.L,
                     settings.thresholds(), norm_key, det_key)
    return job, ctx
