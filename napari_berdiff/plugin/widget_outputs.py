"""Output layers of a run (main thread only): reconstruction, anomaly map, segmentation, mask
evolution and, on request, the difference image.

Layers have fixed names ``"<input> <output>"`` and are updated in place on a re-run or when the P
slider swaps to another swept threshold. They carry the source layer's geometry (scale,
translate, rotate, shear, affine, axis labels, units) and metadata (so the writer can save them
with the source NIfTI affine) plus ``provenance`` (L, P, steps, seed, device, model hash, time) and
``output`` / ``postprocess`` entries.
"""

from __future__ import annotations

import numpy as np

from ..core.inference.volume import full_volume
from .layers import geometry_kwargs, latent_geometry_kwargs
from .reader import MODALITY_TITLES
from .run import POSTPROCESS, RunContext

OUTPUT_KINDS = ("reconstruction", "anomaly map", "segmentation", "mask evolution", "difference")


def _current(layer, key):
    return layer.affine.affine_matrix if key == "affine" else getattr(layer, key)


def _same(a, b) -> bool:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape == b.shape and np.allclose(a, b)


class OutputLayers:
    """Creates and updates the output layers of one widget."""

    def __init__(self, viewer, step_slider=None):
        self.viewer = viewer
        self.step_slider = step_slider  # the mask evolution's step (a magicgui Slider)
        self.evolution = None  # (layer name, (S, ...) frames) of the mask evolution shown
        self._setting_step = False
        if step_slider is not None:
            step_slider.changed.connect(self.show_step)
        self.names: dict[str, str] = {}
        self.difference_on = False  # set by SideBySide while its grid is on
        self.after_show = None  # called as f(result, k, ctx) after show()
        self.seg_record = POSTPROCESS  # the segmentation layer's postprocess entry (its rule)

    # ----------------------------------------------------------------------------------
    def show(self, outcome, k: int, ctx: RunContext) -> None:
        """Display threshold index ``k`` of the run's result over its source layer."""
        src, base = ctx.src, ctx.base
        two_d = src.ndim == 2
        Z = 1 if two_d else src.data.shape[0]
        sl = outcome.slices
        P = outcome.thresholds[k]
        prov = dict(outcome.provenance, P_shown=P, P_sweep=outcome.thresholds)
        meta_base = dict(src.metadata or {})
        meta_base["provenance"] = prov
        geo = geometry_kwargs(src)

        def vol(values, dtype=np.float32):
            full = full_volume(values, sl, Z, dtype)
            return full[0] if two_d else full

        first = f"{base} anomaly map" not in self.viewer.layers
        self.reconstructions(outcome, k, ctx)
        amap = self._image(f"{base} anomaly map", vol(outcome.anomaly_map[k]), geo,
                    dict(meta_base, output="anomaly map"),
                    dict(colormap="inferno", blending="additive", contrast_limits=ctx.map_limits))
        self._labels(f"{base} segmentation", vol(outcome.segmentation[k], np.uint8), geo,
                     dict(meta_base, output="segmentation", postprocess=self.seg_record,
                          pending=not outcome.seg_ready[k]))
        self._mask_evolution(outcome, k, ctx, meta_base, Z, two_d)
        if first and amap is not None:  # the layer controls show the map, not the last layer added
            self.viewer.layers.selection.active = amap
        if self.difference_on:
            self.difference(outcome, k, ctx)
        if self.after_show is not None:
            self.after_show(outcome, k, ctx)

    def reconstructions(self, outcome, k: int, ctx: RunContext) -> list:
        """The reconstruction layers (one per channel) of threshold ``k``, hidden when new."""
        src, base, channel_names = ctx.src, ctx.base, ctx.channel_names
        two_d = src.ndim == 2
        Z = 1 if two_d else src.data.shape[0]
        meta_base = dict(src.metadata or {})
        meta_base["provenance"] = dict(outcome.provenance, P_shown=outcome.thresholds[k],
                                       P_sweep=outcome.thresholds)
        geo = geometry_kwargs(src)
        C = outcome.reconstruction.shape[2]
        layers = []
        for c in range(C):
            full = full_volume(outcome.reconstruction[k, :, c], outcome.slices, Z, np.float32)
            layers.append(self._image(self.recon_name(base, c, C, channel_names), full[0] if two_d else full,
                                      geo, dict(meta_base, output="reconstruction", channel=c),
                                      dict(colormap="gray", contrast_limits=(0.0, 1.0)), visible=False))
        return layers

    def update_segmentation(self, outcome, k: int, ctx: RunContext) -> None:
        """The segmentation of threshold ``k`` arrived after the first display."""
        src = ctx.src
        name = f"{ctx.base} segmentation"
        if name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        Z = 1 if src.ndim == 2 else src.data.shape[0]
        full = full_volume(outcome.segmentation[k], outcome.slices, Z, np.uint8)
        layer.metadata = dict(layer.metadata, pending=False, postprocess=self.seg_record)
        layer.data = full[0] if src.ndim == 2 else full

    @staticmethod
    def recon_name(base: str, c: int, C: int, channel_names: list[str]) -> str:
        if C == 1:
            return f"{base} reconstruction"
        tag = channel_names[c] if c < len(channel_names) else f"[{c}]"
        return f"{base} reconstruction {MODALITY_TITLES.get(tag.lower(), tag)}"

    def difference(self, outcome, k: int, ctx: RunContext):
        """``input - reconstruction`` of the first channel (a signed map) as a layer."""
        src, base = ctx.src, ctx.base
        two_d = src.ndim == 2
        Z = 1 if two_d else src.data.shape[0]
        d = outcome.input[:, 0] - outcome.reconstruction[k, :, 0]
        full = full_volume(d, outcome.slices, Z, np.float32)
        meta = dict(src.metadata or {}, provenance=dict(outcome.provenance, P_shown=outcome.thresholds[k]),
                    output="difference")
        lim = float(max(np.abs(d).max(), 1e-6))
        return self._image(f"{base} difference", full[0] if two_d else full, geometry_kwargs(src), meta,
                           dict(colormap=difference_colormap(), contrast_limits=(-lim, lim)),
                           visible=True)

    # ----------------------------------------------------------------------------------
    def _mask_evolution(self, outcome, k, ctx, meta_base, Z, two_d):
        """The latent mask of one sampler step at a time, over the source's slices: the step is
        the dock's slider (:attr:`step_slider`), not a viewer axis, so napari's sliders stay
        those of the input (its first is the slice axis, where users expect it)."""
        src, base = ctx.src, ctx.base
        hist = outcome.mask_history[:, k].astype(np.float32)  # (S, N, h, w)
        S, _, h, w = hist.shape
        if two_d:
            frames = hist[:, 0]
        else:
            frames = np.zeros((S, Z, h, w), np.float32)
            frames[:, outcome.slices] = hist
        name = f"{base} mask evolution"
        new = name not in self.viewer.layers
        step = self._steps(S, new)
        self.evolution = (name, frames)
        self._image(name, frames[step], latent_geometry_kwargs(src, ctx.latent_axes, lead=0),
                    dict(meta_base, output="mask evolution", latent_axes=ctx.latent_axes,
                         steps=S, step=step),
                    dict(colormap="viridis", blending="additive", contrast_limits=(0.0, 1.0),
                         opacity=0.7), visible=False)

    def _steps(self, S: int, new: bool) -> int:
        """The step slider's range for ``S`` steps (the last step for a new layer): its value."""
        s = self.step_slider
        if s is None:
            return S - 1
        self._setting_step = True
        try:
            s.max = S - 1
            s.enabled = S > 1
            if new:
                s.value = S - 1
        finally:
            self._setting_step = False
        return int(min(s.value, S - 1))

    def show_step(self, step) -> None:
        """Show sampler step ``step`` in the mask evolution layer."""
        if self._setting_step or self.evolution is None:
            return
        name, frames = self.evolution
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            step = int(min(max(int(step), 0), len(frames) - 1))
            layer.metadata = dict(layer.metadata, step=step)
            layer.data = frames[step]

    def _place(self, name, layer_type, data, geo, meta, style, visible):
        layers = self.viewer.layers
        if name in layers:
            layer = layers[name]
            from napari.layers import Image, Labels

            kind = Image if layer_type == "image" else Labels
            if isinstance(layer, kind) and layer.ndim == data.ndim:
                layer.metadata = meta
                for key, val in geo.items():  # only what changed: each set re-lays out the dims
                    if key in ("axis_labels", "units") or _same(_current(layer, key), val):
                        continue
                    setattr(layer, key, val)
                layer.data = data
                return layer, False
            layers.remove(layer)
        if layer_type == "image":
            layer = self.viewer.add_image(data, name=name, metadata=meta, visible=visible, **geo, **style)
        else:
            layer = self.viewer.add_labels(data, name=name, metadata=meta, visible=visible, **geo, **style)
        return layer, True

    def _image(self, name, data, geo, meta, style, visible=True):
        layer, new = self._place(name, "image", data, geo, meta, style, visible)
        if not new and "contrast_limits" in style:
            layer.contrast_limits = style["contrast_limits"]
        self.names[name] = "image"
        return layer

    def _labels(self, name, data, geo, meta):
        layer, new = self._place(name, "labels", data, geo, meta, {"opacity": 0.8}, True)
        if new:
            layer.contour = 1
        self.names[name] = "labels"
        return layer


def difference_colormap():
    """A diverging colormap that is black at 0 (magenta below, green above): the difference
    panel's background (no difference) is black like the canvas, not a white square (PiYG)."""
    from napari.utils.colormaps import Colormap

    return Colormap([[0.85, 0.1, 0.75, 1.0], [0.0, 0.0, 0.0, 1.0], [0.2, 0.85, 0.2, 1.0]],
                    controls=[0.0, 0.5, 1.0], name="berdiff difference")


def _uid(layer) -> int:
    """Identity of a layer, also through napari's PublicOnlyProxy (a new proxy per access)."""
    return id(getattr(layer, "__wrapped__", layer))


def _grid(viewer):
    """napari >= 0.9 keeps the grid on ``viewer.canvas``; older versions on the viewer."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


class SideBySide:
    """Visual QA: input | reconstruction | difference in napari's grid mode, and back.

    ``show`` snapshots the viewer (layer order, every layer's visibility, the grid) *before* it
    adds the difference layer; ``restore`` puts that snapshot back, removes the difference layers
    it added and stops later runs from adding them. While on, every display of outputs (a re-run,
    another swept P) updates the difference layer and lays the grid out again."""

    def __init__(self, viewer, outputs: OutputLayers):
        self.viewer = viewer
        self.outputs = outputs
        self.saved = None  # (layer order, {uid: visible}, grid (shape, enabled), uids before)
        outputs.after_show = self._follow

    @property
    def active(self) -> bool:
        return self.saved is not None

    def show(self, outcome, k: int, ctx: RunContext) -> None:
        """Turn the grid on (or, when already on, lay it out again for this outcome)."""
        v = self.viewer
        src = ctx.layers[0]
        if src not in v.layers:
            from napari.utils.notifications import show_warning

            show_warning(f"napari-berdiff: side by side needs the input layer {src.name!r}, "
                         "which is no longer in the viewer; run the detector again")
            return
        if self.saved is None:
            grid = _grid(v)
            self.saved = (list(v.layers), {_uid(ly): ly.visible for ly in v.layers},
                          (tuple(grid.shape), bool(grid.enabled)), {_uid(ly) for ly in v.layers})
        self.outputs.difference_on = True
        C = outcome.reconstruction.shape[2]
        name = self.outputs.recon_name(ctx.base, 0, C, ctx.channel_names)
        if name in v.layers:
            rec = v.layers[name]
        else:  # deleted by the user: put it back
            rec = self.outputs.reconstructions(outcome, k, ctx)[0]
        diff = self.outputs.difference(outcome, k, ctx)
        self._layout([src, rec, diff])
        self.viewer.reset_view()  # the camera of one image would show a third of each cell

    def _follow(self, outcome, k, ctx: RunContext) -> None:
        """Outputs were shown again (re-run, P swap) while the grid is on: keep the grid on them."""
        if not self.active:
            return
        v = self.viewer
        C = outcome.reconstruction.shape[2]
        names = [self.outputs.recon_name(ctx.base, 0, C, ctx.channel_names), f"{ctx.base} difference"]
        layer = getattr(ctx.src, "layer", ctx.src)  # a multi-channel input's SpatialView -> its layer
        if layer not in v.layers or any(n not in v.layers for n in names):
            return
        self._layout([layer] + [v.layers[n] for n in names])

    def _layout(self, trio) -> None:
        v = self.viewer
        vis = self.saved[1]
        for ly in v.layers:  # layers new since the snapshot: remember how they came in
            vis.setdefault(_uid(ly), ly.visible)
        if [_uid(ly) for ly in list(v.layers)[-3:]] != [_uid(t) for t in trio]:
            for ly in trio:  # grid cells follow the layer list: the three at the end, in order
                v.layers.move(v.layers.index(ly), len(v.layers))
        keep = {_uid(t) for t in trio}
        for ly in v.layers:
            ly.visible = _uid(ly) in keep
        grid = _grid(v)
        grid.shape = (1, 3)
        grid.enabled = True

    def restore(self) -> None:
        """Back to the viewer as it was before ``show``: the added difference layers removed,
        every other layer's visibility and order and the grid as they were."""
        if self.saved is None:
            return
        v = self.viewer
        order, vis, (shape, enabled), before = self.saved
        self.saved = None
        self.outputs.difference_on = False
        added = [ly for ly in v.layers if _uid(ly) not in before
                 and (ly.metadata or {}).get("output") == "difference" and ly.name in self.outputs.names]
        for ly in added:
            v.layers.remove(ly)
            self.outputs.names.pop(ly.name, None)
        grid = _grid(v)
        grid.enabled = False
        grid.shape = shape
        grid.enabled = enabled
        for i, ly in enumerate([ly for ly in order if ly in v.layers]):
            j = v.layers.index(ly)
            if j != i:
                v.layers.move(j, i)
        for ly in v.layers:
            ly.visible = vis.get(_uid(ly), ly.visible)
