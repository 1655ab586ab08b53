"""The dock widget: live masked sampling over napari layers.

The sampler runs in a napari thread worker on a generator wrapping ``Detector.iter_detect``
(:func:`napari_berdiff.plugin.run.run_job`): every network evaluation is a progress tick and a
cancellation point. Nothing in the worker touches napari or Qt; results become layers in slots on
the main thread (:class:`~napari_berdiff.plugin.widget_outputs.OutputLayers`). A cancelled run leaves no
layers behind. A run samples a sweep of P values in one batch, so moving the P slider onto a swept
value swaps the outputs at once; moving L, or P off the sweep, starts a new run after a short pause
(debounced) and cancels the one in flight.
"""

from __future__ import annotations

import time
from functools import partial

from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from .inputs import (InputError, base_name, build_volume, channel_titles, current_slice,
                      view_of)
from .layers import SliceMap
from ..core.inference.result import DetectionResult
from .run import Job, Ready, RunContext, SegDone, run_job
from .widget_controls import Controls, plugin_defaults
from .widget_model import ModelInputs
from .widget_outputs import OutputLayers, SideBySide, _uid

DEBOUNCE_MS = 400
UI_INTERVAL_S = 0.5  # status/progress refresh: each repaints the window (costly with software GL)


class BerdiffWidget(ModelInputs, QWidget):
    """Anomaly detection with masked Bernoulli latent diffusion (npe2 widget contribution)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from ..core.inference.device import available_devices

        self.viewer = napari_viewer
        self.c = Controls(available_devices())
        scroll = QScrollArea()  # the controls stay usable when the dock is short
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # combo boxes are elided and info texts wrap, so the settings fit the dock's width; a
        # horizontal scroll bar appears only if something still does not (never a cut-off control)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        scroll.setWidget(self.c.container.native)
        self._scroll = scroll
        hint = self.c.container.native.sizeHint()
        footer = self.c.footer.native
        self.setMinimumSize(hint.width() + scroll.verticalScrollBar().sizeHint().width() + 4,
                            min(hint.height() + footer.sizeHint().height() + 8, 560))
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(scroll)
        lay.addWidget(footer)  # Run, Cancel and the status line: always in sight
        self.outputs = OutputLayers(napari_viewer)
        self.checkpoint = None
        self._ck_path = None
        self._channel_names: list[str] = []
        self._combos: list = []
        self._user_inputs = False
        self._user_model = False
        self._setting = False
        self._input_error = False  # the status line shows why Run could not start
        self._detector = (None, None)  # (key, Detector)
        self._normalized = (None, None)  # (key, array)
        self.worker = None
        self._alive: list = []  # started workers not yet finished (cancelled ones included)
        self._gen = 0
        self._pbars: dict[int, object] = {}
        self._t_first: dict[int, tuple[float, int]] = {}
        self._last_ui = 0.0
        self._ended: set[int] = set()  # runs whose returned/finished arrived
        self.outcome: DetectionResult | None = None
        self._shown: int | None = None  # index of the displayed threshold
        self.context: RunContext | None = None
        self.plot = None
        self.side_by_side = SideBySide(napari_viewer, self.outputs)
        self.n_runs = 0
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._live_run)
        defaults = plugin_defaults()
        self.c.apply_defaults(defaults)
        self._connect()
        self._auto_model()
        if str(defaults.get("checkpoint") or "").strip():
            self.set_checkpoint(str(defaults["checkpoint"]).strip())
        else:
            self._on_model_changed()
        self._on_device_changed()

    def fit_width(self) -> None:
        """Widen the dock to the settings once the model's input choosers exist (they are made
        after the first layout), so that no control sits behind the horizontal scroll bar."""
        try:
            need = (self.c.container.native.minimumSizeHint().width()
                    + self._scroll.verticalScrollBar().sizeHint().width() + 4)
            if need > self.minimumWidth():
                self.setMinimumWidth(need)
        except RuntimeError:  # deleted with the viewer before a queued call arrived
            pass

    # -- wiring ----------------------------------------------------------------------------
    def _connect(self):
        c = self.c
        c.model_choice.changed.connect(self._on_model_choice)
        c.model_file.changed.connect(self._on_model_choice)
        c.multi.changed.connect(self._on_multi_choice)
        c.L.changed.connect(self._on_L)
        c.P.changed.connect(self._on_P)
        c.device.changed.connect(self._on_device_changed)
        c.scope.changed.connect(self._on_scope)
        c.run.changed.connect(self.run)
        c.cancel.changed.connect(self.cancel)
        c.grid.changed.connect(self.toggle_side_by_side)
        ev = self.viewer.layers.events
        for name in ("inserted", "removed", "reordered"):
            getattr(ev, name).connect(self.refresh_inputs)
        if hasattr(ev, "renamed"):
            ev.renamed.connect(self.refresh_inputs)

    # -- parameters ------------------------------------------------------------------------
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

    def _on_scope(self, value):
        self.c.range_from.visible = self.c.range_to.visible = value == "slice range"

    def _on_device_changed(self, *_):
        from ..core.inference.device import resolve_device

        try:
            dev, warn = resolve_device(self.c.device.value)
        except ValueError as err:
            self.c.set_info(self.c.device_info, str(err), "error")
            return
        self._detector = (None, None)
        if warn:
            self.c.set_info(self.c.device_info, f"runs on {dev}: {warn}", "warning")
        else:
            self.c.set_info(self.c.device_info, f"runs on {dev}")

    def _update_buttons(self):
        running = self.worker is not None
        fits = self.check_inputs()
        self.c.run.enabled = self.checkpoint is not None and fits
        self.c.cancel.enabled = running
        if fits and self._input_error and not running:
            self._input_error = False
            self._message("ready")

    def _invalidate(self):
        """Drop the displayed run's sweep (another model or input): the P slider no longer swaps."""
        self.outcome = None

    # -- running ---------------------------------------------------------------------------
    def make_job(self) -> tuple[Job, RunContext]:
        if self.checkpoint is None:
            raise InputError(self.c.model_info.value or "choose a model")
        layers, channel_axis = self.input_source()
        src = view_of(layers, channel_axis)
        if src.ndim not in (2, 3):
            raise InputError(f"{src.name} is {src.ndim}D; the widget takes 2D images or 3D stacks")
        Z = 1 if src.ndim == 2 else src.data.shape[0]
        scope = self.c.scope.value
        if src.ndim == 2 or scope == "current slice":
            slices = [current_slice(src, self.viewer)]
        elif scope == "all slices":
            slices = list(range(Z))
        else:
            a, b = sorted((self.c.range_from.value, self.c.range_to.value))
            if a >= Z:
                raise InputError(f"the slice range starts at {a} but {src.name} has {Z} slices (0..{Z - 1})")
            slices = list(range(a, min(b, Z - 1) + 1))
        settings = self.c.settings()
        L, thresholds = settings.L, settings.thresholds()
        norm_key = tuple((_uid(ly), id(ly.data), tuple(ly.data.shape)) for ly in layers) + (
            channel_axis, self.checkpoint.sha256)  # the normalisation follows the model
        normalized = self._normalized[1] if self._normalized[0] == norm_key else None
        volume = None if normalized is not None else build_volume(layers, channel_axis)
        C = len(layers) if channel_axis is None else layers[0].data.shape[channel_axis]
        if self.checkpoint.in_channels != C:
            want = channel_titles(self.checkpoint.meta.get("channel_names"), self.checkpoint.in_channels)
            raise InputError(f"the model expects {want}, the input has {C}")
        det_key = (self.checkpoint.sha256, self.c.device.value)
        slice_map = SliceMap.for_layer(src.metadata, Z) if src.ndim == 3 else SliceMap()
        job = Job(volume=volume, slices=slices, slice_map=slice_map, checkpoint=self.checkpoint,
                  spacing=self.pixel_spacing(src),
                  device=self.c.device.value, settings=settings,
                  detector=self._detector[1] if self._detector[0] == det_key else None,
                  normalized=normalized)
        ctx = RunContext(layers, src, base_name(layers), self._channel_names, L, thresholds, norm_key,
                         det_key)
        return job, ctx

    def run(self, *_):
        """Start a run (cancelling one in flight)."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self._debounce.stop()
        try:
            job, ctx = self.make_job()
        except InputError as err:
            self._message(str(err), "error")
            self._input_error = True  # cleared once the inputs fit
            return None
        self._input_error = False
        self._stop_worker()
        self._gen += 1
        gen = self._gen
        worker = create_worker(run_job, job, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(partial(self._on_yield, gen, ctx))
        worker.returned.connect(partial(self._on_returned, gen))
        worker.errored.connect(partial(self._on_error, gen))
        worker.finished.connect(partial(self._on_finished, gen, worker))
        self._pbars[gen] = progress(total=0, desc="berdiff: masked sampling")
        self.worker = worker
        self._alive.append(worker)
        self.n_runs += 1
        self._message(f"running: L={ctx.L}, {len(job.slices)} slice(s) x {len(ctx.thresholds)} P value(s)")
        self._update_buttons()
        worker.start()
        self._ensure_plot()
        return worker

    def _live_run(self):
        if self.c.live.value and self.context is not None:
            self.run()

    def cancel(self, *_):
        """Stop the run in flight at its next step; nothing of it reaches the viewer."""
        self._debounce.stop()
        if self.worker is not None:
            self._stop_worker()
            self._message("cancelled")

    def _stop_worker(self):
        if self.worker is not None:
            self._quiet_stop()
            self._update_buttons()

    def _on_yield(self, gen, ctx, item):
        if self._gone():
            return
        if isinstance(item, Ready):
            if gen == self._gen:
                self._on_ready(ctx, item)
            return
        if isinstance(item, SegDone):
            if gen == self._gen and self.outcome is not None:
                self.outcome.segmentation[item.k] = item.segmentation
                self.outcome.seg_ready[item.k] = True
                if self._shown == item.k:
                    self.outputs.update_segmentation(self.outcome, item.k, ctx)
            item = item.tick
        self._on_tick(gen, item)

    def _on_tick(self, gen, tick):
        now = time.perf_counter()
        if tick.total and 0 < tick.done < tick.total and now - self._last_ui < UI_INTERVAL_S:
            return  # fast models tick every few ms: refresh the progress twice a second
        self._last_ui = now
        if gen == self._gen and tick.total and tick.done:
            self._t_first.setdefault(gen, (tick.elapsed, tick.done))  # before events are processed
        pbar = self._pbars.get(gen)
        if pbar is not None and tick.total:
            if pbar.total != tick.total:
                pbar.total = tick.total
            pbar.update(tick.done - pbar.n)  # may process pending events (returned, finished)
        if gen != self._gen or gen in self._ended:
            return
        if tick.total and tick.done:
            # the rate from the first tick shown on (it excludes loading and encoding); no ETA
            # until a second tick gives one
            t0, d0 = self._t_first.setdefault(gen, (tick.elapsed, tick.done))
            eta = ""
            if tick.done > d0 and tick.elapsed > t0:
                rate = (tick.elapsed - t0) / (tick.done - d0)
                eta = f", ETA {rate * (tick.total - tick.done):.1f} s"
            extra = f", masked {tick.masked:.1%}" if tick.masked == tick.masked else ""
            self._message(f"{tick.stage}: {tick.done}/{tick.total}, {tick.elapsed:.1f} s{eta}{extra}")
        else:
            self._message(f"{tick.stage} ({tick.elapsed:.1f} s)")

    def _on_ready(self, ctx, ready: Ready):
        """Sampling done: show the outputs (the other P's segmentations follow)."""
        self._detector = (ctx.det_key, ready.detector)
        self._normalized = (ctx.norm_key, ready.normalized)
        ctx.latent_axes, ctx.map_limits = ready.latent_axes, ready.map_limits
        outcome = ready.result
        self.outcome, self.context = outcome, ctx
        k = outcome.find(self.c.P.value)
        self.show_threshold(k if k is not None else 0)
        prov = outcome.provenance
        warn = prov.get("device_warning")
        if warn:
            from napari.utils.notifications import show_warning

            show_warning(f"napari-berdiff: {warn}")
            self.c.set_info(self.c.device_info, f"ran on {prov['device']}: {warn}", "warning")
        else:
            self.c.set_info(self.c.device_info, f"ran on {prov['device']}")

    def _on_returned(self, gen, seconds):
        if self._gone():
            return
        self._ended.add(gen)
        if gen != self._gen or self.outcome is None:
            return
        prov, out = self.outcome.provenance, self.outcome
        self._message(f"done: {seconds:.1f} s on {prov['device']}, {len(out.slices)} slice(s) x "
                      f"{len(out.thresholds)} P (L={prov['L']}, S={prov['steps']}, seed {prov['seed']})")

    def _on_error(self, gen, err):
        if self._gone():
            return
        if gen != self._gen:
            return
        self._message(_explain(err), "error")

    def _on_finished(self, gen, worker):
        self._ended.add(gen)
        pbar = self._pbars.pop(gen, None)
        if pbar is not None:
            try:
                pbar.close()
            except RuntimeError:  # its Qt side went with the viewer
                pass
        self._t_first.pop(gen, None)
        if self.worker is worker:
            self.worker = None
        if worker in self._alive:
            self._alive.remove(worker)
        if not self._gone():
            self._update_buttons()

    def is_busy(self) -> bool:
        """True while any run (also a cancelled one winding down) is still on its thread."""
        return bool(self._alive)

    # -- showing ---------------------------------------------------------------------------
    def show_threshold(self, k: int) -> None:
        """Display the swept threshold with index ``k`` of the last run (no sampling)."""
        out, ctx = self.outcome, self.context
        if not out.seg_ready[k] and self.worker is None:  # its run stopped early: compute it now
            out.ensure_segmentation(k)
        self._shown = k
        self.outputs.show(out, k, ctx)
        self._update_plot(k)

    def _ensure_plot(self):
        """The masked-fraction dock (created at the first run: importing matplotlib's Qt backend
        takes a second, better spent while the sampler starts than when results arrive)."""
        from .score_plot import ScorePlot

        if self.plot is None:
            self.plot = ScorePlot(self.viewer)
            window = getattr(self.viewer, "window", None)
            if window is not None:
                window.add_dock_widget(self.plot, name="berdiff: masked fraction per slice", area="right")

    def _update_plot(self, k):
        out, ctx = self.outcome, self.context
        self._ensure_plot()
        self.plot.set_data(ctx.src, out.slices, out.masked_fraction[k], out.masked_fraction,
                           out.thresholds, out.thresholds[k])

    def toggle_side_by_side(self, *_):
        """Grid view of input, reconstruction and difference (first channel); again to undo."""
        if self.side_by_side.active:
            self.side_by_side.restore()
        elif self.outcome is None:
            self._message("side by side: run the detector first", "warning")
        else:
            k = self._shown if self._shown is not None else 0  # the threshold on screen
            self.side_by_side.show(self.outcome, k, self.context)

    def _message(self, text: str, level: str = "info"):
        self.c.set_info(self.c.status, text, level)
        if level == "error":
            from napari.utils.notifications import show_error

            show_error(f"napari-berdiff: {text}")

    def showEvent(self, event):  # noqa: N802 (Qt)
        super().showEvent(event)
        self.fit_width()

    def closeEvent(self, event):  # noqa: N802 (Qt)
        self._stop_worker()
        super().closeEvent(event)

    # -- leaving the viewer ----------------------------------------------------------------
    def event(self, ev):  # noqa: D102 (Qt)
        # napari's close button on the dock takes the widget out of it (setParent(None)) without
        # a closeEvent: that ends the run in flight and removes the masked-fraction dock
        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif getattr(self, "_docked", False):
                self._docked = False
                self._on_removed()
        return super().event(ev)

    def _on_removed(self):
        """The widget left the viewer: stop the run (nothing of it lands) and the plot dock."""
        self._debounce.stop()
        self._quiet_stop()
        plot, self.plot = self.plot, None
        window = getattr(self.viewer, "window", None)
        if plot is not None and window is not None:
            try:
                window.remove_dock_widget(plot)
            except (LookupError, RuntimeError, AttributeError):
                pass  # already gone with the viewer

    def _quiet_stop(self):
        """Stop the run in flight without touching the controls (they may be deleted)."""
        if self.worker is not None:
            self._gen += 1  # results still queued from the old run are ignored
            self.worker.quit()
            self.worker = None

    def _gone(self) -> bool:
        """Whether Qt deleted the controls (the viewer was closed during a run); the run in
        flight is then stopped and its late results dropped."""
        try:
            self.c.status.native.objectName()
        except RuntimeError:
            self._quiet_stop()
            return True
        return False


def _explain(err: BaseException) -> str:
    """One sentence for the user from a worker exception."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    name = type(err).__name__
    if "out of memory" in text.lower() or name == "OutOfMemoryError":
        return ("out of memory: run fewer slices or a shorter P sweep, or choose the CPU "
                f"({text[:120]})")
    if isinstance(err, (ValueError, FileNotFoundError)):
        return text
    return f"the run failed ({name}: {text})"
