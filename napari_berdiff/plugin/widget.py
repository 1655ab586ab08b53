"""The dock widget: live masked sampling over napari layers.

It wires composed parts: the controls (:mod:`.widget_controls`), the model and input choosers
(:mod:`.model_chooser`, :mod:`.input_chooser`), the run in flight (:mod:`.runner`: a napari thread
worker over :func:`~napari_berdiff.plugin.run.run_job`, every network evaluation a progress tick
and a cancellation point), the output layers (:mod:`.widget_outputs`) and its place in napari
(:mod:`.dock`). A cancelled run leaves no layers behind. A run samples a sweep of P values in one
batch, so moving the P slider onto a swept value swaps the outputs at once; moving L, or P off the
sweep, starts a new run after a short pause (debounced) and cancels the one in flight.
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from .dock import Dock
from .input_chooser import InputChooser
from .inputs import (InputError, base_name, build_volume, channel_titles, pixel_spacing,
                     run_slices, view_of)
from .layers import SliceMap, slice_map_for_layer
from .model_chooser import ModelChange, ModelChooser
from .run import Job, Ready, RunContext, SegDone
from .runner import Runner
from .status import done_text, explain, running_text
from .widget_controls import Controls, plugin_defaults
from .widget_outputs import OutputLayers, SideBySide, _uid

DEBOUNCE_MS = 400


class BerdiffWidget(QWidget):
    """Anomaly detection with masked Bernoulli latent diffusion (npe2 widget contribution)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from ..core.inference.device import available_devices

        self.viewer = napari_viewer
        self.c = Controls(available_devices())
        self.dock = Dock(self, self.c, on_removed=self._on_removed, on_close=self._stop)
        defaults = plugin_defaults()
        self.c.apply_defaults(defaults)  # before anything is connected
        self.outputs = OutputLayers(napari_viewer)
        self.side_by_side = SideBySide(napari_viewer, self.outputs)
        self.runner = Runner(status=self.c.message, on_ready=self._on_ready,
                             on_segmentation=self._on_segmentation, on_done=self._on_done,
                             on_error=lambda err: self.c.message(explain(err), "error"),
                             on_finished=self._update_buttons, alive=self.dock.alive)
        self.inputs = InputChooser(self.c, napari_viewer, on_layers=self._on_layers,
                                   on_choice=self._update_buttons, on_rows=self.dock.fit_width_later)
        self.model = ModelChooser(self.c, napari_viewer, self._on_model)
        # reused by the next run while the model, device and input stay: (key, value)
        self._detector = (None, None)
        self._normalized = (None, None)
        self.outcome = None  # the shown run's DetectionResult (layer orientation)
        self.context: RunContext | None = None
        self.plot = None
        self._shown: int | None = None
        self._input_error = False  # the status line shows why Run could not start
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._live_run)
        self._connect()
        self.model.pick_for_layers()
        if str(defaults.get("checkpoint") or "").strip():
            self.set_checkpoint(str(defaults["checkpoint"]).strip())
        else:
            self.model.update()
        self._on_device_changed()

    def _connect(self):
        c = self.c
        c.L.changed.connect(self._on_L)
        c.P.changed.connect(self._on_P)
        c.device.changed.connect(self._on_device_changed)
        c.run.changed.connect(self.run)
        c.cancel.changed.connect(self.cancel)
        c.grid.changed.connect(self.toggle_side_by_side)

    # -- public state ----------------------------------------------------------------------
    @property
    def checkpoint(self):
        """The chosen model's checkpoint (None when none is usable)."""
        return self.model.checkpoint

    def set_checkpoint(self, path) -> None:
        """Use the checkpoint file ``path`` (as if chosen with the file button)."""
        self.model.set_checkpoint(path)

    @property
    def shown(self) -> int | None:
        """Index (in ``outcome.thresholds``) of the threshold on screen."""
        return self._shown

    @property
    def n_runs(self) -> int:
        return self.runner.n_runs

    def is_busy(self) -> bool:
        """True while any run (also a cancelled one winding down) is still on its thread."""
        return self.runner.busy()

    # -- the parts' changes ----------------------------------------------------------------
    def _on_model(self, change: ModelChange):
        if change.switched and self.runner.stop():  # its outputs would belong to the old model
            self.c.message("cancelled: the model changed", "warning")
        if change.loaded:
            self._detector = (None, None)
            self.outcome = None  # another model: the P slider no longer swaps its outputs
        if change.channels is not None:
            self.inputs.set_channels(*change.channels)
        self._update_buttons()

    def _on_layers(self):
        self.model.follow_layers()
        self._update_buttons()

    def _on_L(self, value):
        self.c.steps.max = int(value)
        if self.c.steps.value > value:
            self.c.steps.value = int(value)
        if self.c.live.value and self.outcome is not None:
            self._debounce.start()

    def _on_P(self, value):
        if self.outcome is not None:
            k = self.outcome.find(value)
            if k is not None:
                self.show_threshold(k)
                return
        if self.c.live.value and self.outcome is not None:
            self._debounce.start()

    def _on_device_changed(self, *_):
        from ..core.inference.device import resolve_device

        try:
            dev, warn = resolve_device(self.c.device.value)
        except ValueError as err:
            self.c.set_info(self.c.device_info, str(err), "error")
            return
        self._detector = (None, None)
        self.c.device_note(f"runs on {dev}", warn)

    def _update_buttons(self):
        running = self.runner.running
        fits = self.inputs.check(self.checkpoint)
        self.c.run.enabled = self.checkpoint is not None and fits
        self.c.cancel.enabled = running
        if fits and self._input_error and not running:
            self._input_error = False
            self.c.message("ready")

    # -- running ---------------------------------------------------------------------------
    def make_job(self) -> tuple[Job, RunContext]:
        """The job and context of a run with the current settings (InputError: why not)."""
        ck = self.checkpoint
        if ck is None:
            raise InputError(self.c.model_info.value or "choose a model")
        layers, channel_axis = self.inputs.source()
        src = view_of(layers, channel_axis)
        if src.ndim not in (2, 3):
            raise InputError(f"{src.name} is {src.ndim}D; the widget takes 2D images or 3D stacks")
        slices = run_slices(src, self.c.scope.value, self.c.range_from.value,
                            self.c.range_to.value, self.viewer)
        settings = self.c.settings()
        norm_key = tuple((_uid(ly), id(ly.data), tuple(ly.data.shape)) for ly in layers) + (
            channel_axis, ck.sha256)  # the normalisation follows the model
        normalized = self._normalized[1] if self._normalized[0] == norm_key else None
        volume = None if normalized is not None else build_volume(layers, channel_axis)
        C = len(layers) if channel_axis is None else layers[0].data.shape[channel_axis]
        if ck.in_channels != C:
            want = channel_titles(ck.meta.get("channel_names"), ck.in_channels)
            raise InputError(f"the model expects {want}, the input has {C}")
        det_key = (ck.sha256, self.c.device.value)
        Z = 1 if src.ndim == 2 else src.data.shape[0]
        job = Job(volume=volume, slices=slices,
                  slice_map=slice_map_for_layer(src.metadata, Z) if src.ndim == 3 else SliceMap(),
                  checkpoint=ck, spacing=pixel_spacing(src), device=self.c.device.value,
                  settings=settings, normalized=normalized,
                  detector=self._detector[1] if self._detector[0] == det_key else None)
        ctx = RunContext(layers, src, base_name(layers), self.inputs.channel_names, settings.L,
                         settings.thresholds(), norm_key, det_key)
        return job, ctx

    def run(self, *_):
        """Start a run (cancelling one in flight); returns its worker (None: it cannot start)."""
        self._debounce.stop()
        try:
            job, ctx = self.make_job()
        except InputError as err:
            self.c.message(str(err), "error")
            self._input_error = True  # cleared once the inputs fit
            return None
        self._input_error = False
        worker = self.runner.start(job, ctx)
        self.c.message(running_text(ctx.L, len(job.slices), len(ctx.thresholds)))
        self._update_buttons()
        self._ensure_plot()
        return worker

    def _live_run(self):
        if self.c.live.value and self.context is not None:
            self.run()

    def cancel(self, *_):
        """Stop the run in flight at its next step; nothing of it reaches the viewer."""
        self._debounce.stop()
        if self._stop():
            self.c.message("cancelled")

    def _stop(self) -> bool:
        stopped = self.runner.stop()
        if stopped:
            self._update_buttons()
        return stopped

    def _on_ready(self, ctx: RunContext, ready: Ready):
        """Sampling done: show the outputs (the other P's segmentations follow)."""
        self._detector = (ctx.det_key, ready.detector)
        self._normalized = (ctx.norm_key, ready.normalized)
        ctx.latent_axes, ctx.map_limits = ready.latent_axes, ready.map_limits
        self.outcome, self.context = ready.result, ctx
        k = self.outcome.find(self.c.P.value)
        self.show_threshold(k if k is not None else 0)
        prov = self.outcome.provenance
        warn = prov.get("device_warning")
        if warn:
            from napari.utils.notifications import show_warning

            show_warning(f"napari-berdiff: {warn}")
        self.c.device_note(f"ran on {prov['device']}", warn)

    def _on_segmentation(self, ctx: RunContext, seg: SegDone):
        if self.outcome is not None:
            self.outcome.segmentation[seg.k] = seg.segmentation
            self.outcome.seg_ready[seg.k] = True
            if self._shown == seg.k:
                self.outputs.update_segmentation(self.outcome, seg.k, ctx)

    def _on_done(self, seconds: float):
        if self.outcome is not None:
            self.c.message(done_text(seconds, self.outcome))

    # -- showing ---------------------------------------------------------------------------
    def show_threshold(self, k: int) -> None:
        """Display the swept threshold with index ``k`` of the last run (no sampling)."""
        out, ctx = self.outcome, self.context
        if not out.seg_ready[k] and not self.runner.running:  # its run stopped early: compute it
            out.ensure_segmentation(k)
        self._shown = k
        self.outputs.show(out, k, ctx)
        self._ensure_plot()  # the masked fraction per slice
        self.plot.set_data(ctx.src, out.slices, out.masked_fraction[k], out.masked_fraction,
                           out.thresholds, out.thresholds[k])

    def _ensure_plot(self):
        """The masked-fraction dock (created at the first run: importing matplotlib's Qt backend
        takes a second, better spent while the sampler starts than when results arrive)."""
        if self.plot is None:
            from .score_plot import dock_plot

            self.plot = dock_plot(self.viewer)

    def toggle_side_by_side(self, *_):
        """Grid view of input, reconstruction and difference (first channel); again to undo."""
        if self.side_by_side.active:
            self.side_by_side.restore()
        elif self.outcome is None:
            self.c.message("side by side: run the detector first", "warning")
        else:
            k = self._shown if self._shown is not None else 0  # the threshold on screen
            self.side_by_side.show(self.outcome, k, self.context)

    def _on_removed(self):
        """The widget left the viewer: stop the run (nothing of it lands) and the plot dock."""
        from .score_plot import undock_plot

        self._debounce.stop()
        self.runner.stop()
        plot, self.plot = self.plot, None
        undock_plot(self.viewer, plot)
