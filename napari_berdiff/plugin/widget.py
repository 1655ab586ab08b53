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

from .bscan_jump import attach as attach_bscan_jump
from .dock import Dock
from .input_chooser import InputChooser
from .inputs import InputError
from .job_builder import build_job
from .model_chooser import ModelChange, ModelChooser
from .reference_view import reference_text, run_reference
from .run import Job, Ready, RunContext, SegDone, segmentation_record
from .runner import Runner
from .score_plot import ScoreDock
from .segmenter import Segmenter
from .status import done_text, explain, running_text
from .threshold_control import ThresholdControl
from .widget_controls import Controls, plugin_defaults
from .widget_outputs import OutputLayers, SideBySide

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
        self.outputs = OutputLayers(napari_viewer, step_slider=self.c.evolution_step)
        self.side_by_side = SideBySide(napari_viewer, self.outputs)
        self.runner = Runner(status=self.c.message, on_ready=self._on_ready,
                             on_segmentation=self._on_segmentation, on_done=self._on_done,
                             on_error=lambda err: self.c.message(explain(err), "error"),
                             on_finished=self._update_buttons, alive=self.dock.alive)
        self.inputs = InputChooser(self.c, napari_viewer, on_layers=self._on_layers,
                                   on_choice=self._update_buttons, on_rows=self.dock.fit_width_later)
        self.thresh = ThresholdControl(self.c, self._on_rule)
        self.segmenter = Segmenter()  # the shown run's kept maps: re-segments without sampling
        self.model = ModelChooser(self.c, napari_viewer, self._on_model)
        # reused by the next run while the model, device and input stay: (key, value)
        self._detector = (None, None)
        self._normalized = (None, None)
        self.outcome = None  # the shown run's DetectionResult (layer orientation)
        self.reference: dict | None = None  # its figures against the input's annotations
        self.context: RunContext | None = None
        self.scores = ScoreDock(napari_viewer)  # the score plot dock
        self._shown: int | None = None
        self._input_error = False  # the status line shows why Run could not start
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._live_run)
        self._connect()
        attach_bscan_jump(napari_viewer)  # OCT localizers opened before the widget too
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
        if change.switched:
            self.thresh.set_model(self.checkpoint)  # the slider starts at its calibrated value
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
        return build_job(self.c, self.inputs, self.viewer, self.checkpoint, self.thresh.rule(),
                         self._detector, self._normalized)

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
        self.scores.ensure()
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
        self.segmenter.start(self.outcome, ready.rule, ready.foreground)
        self.segmenter.keep(self.outcome.seg_ready.index(True), ready.maps)
        self.thresh.widen(ready.map_limits[1])
        self._set_rule()  # the rule may have changed while it ran
        k = self.outcome.find(self.c.P.value)
        self.show_threshold(k if k is not None else 0)
        self.c.device_ran(self.outcome.provenance)

    def _on_segmentation(self, ctx: RunContext, seg: SegDone):
        if self.outcome is not None:
            self.segmenter.keep(seg.k, seg.maps)
            self.segmenter.accept(seg.k, seg.segmentation, seg.rule)
            if self._shown == seg.k:
                self._show_segmentation(seg.k)

    def _on_done(self, seconds: float):
        if self.outcome is not None:
            note = self.thresh.note_once(self.segmenter.rule)  # an uncalibrated model's fallback
            text = done_text(seconds, self.outcome, note)
            k = self._shown if self._shown is not None else 0
            self.reference = run_reference(self.viewer, self.context.layers[0], self.outcome,
                                           self.segmenter, k)  # an OCT volume's drusen
            ref = reference_text(self.reference)
            self.c.message(f"{text}\n{ref}" if ref else text, "warning" if note else "info")

    def _set_rule(self) -> bool:
        """The controls' rule in force for the shown run; True when it changed."""
        try:
            return self.segmenter.set_rule(self.thresh.rule())
        except InputError:  # a malformed calibration: said beside the slider
            return False

    def _on_rule(self):
        """The rule or the threshold slider changed: re-segment the kept maps (no sampling)."""
        if self.outcome is not None and self._shown is not None and self._set_rule():
            self._show_segmentation(self._shown)

    # -- showing ---------------------------------------------------------------------------
    def show_threshold(self, k: int) -> None:
        """Display the swept threshold with index ``k`` of the last run (no sampling)."""
        out, ctx = self.outcome, self.context
        if not out.seg_ready[k] and (not self.runner.running or k in self.segmenter.kept):
            self.segmenter.segmentation(k)  # not coming from the run (stopped, or a new rule)
        self._shown = k
        self.outputs.seg_record = segmentation_record(self.segmenter.rule)
        self.outputs.show(out, k, ctx)
        self._plot(k)

    def _show_segmentation(self, k: int) -> None:
        """Only the segmentation layer (and the scores) of the shown P, by the rule in force."""
        self.segmenter.segmentation(k)
        self.outputs.seg_record = segmentation_record(self.segmenter.rule)
        self.outputs.update_segmentation(self.outcome, k, self.context)
        self._plot(k)

    def _plot(self, k: int) -> None:
        self.scores.show(self.outcome, k, self.context, self.segmenter)

    @property
    def plot(self):
        """The score plot (None before the first run)."""
        return self.scores.plot

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
        self._debounce.stop()
        self.runner.stop()
        self.scores.close()
