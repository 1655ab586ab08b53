"""The widget's run in flight: one napari thread worker at a time over
:func:`~napari_berdiff.plugin.run.run_job`, its generation (what a replaced or cancelled run still
sends is dropped), its progress bar, the ETA and cancel. Nothing here knows the widget's controls:
it reports through the callbacks it is given."""

from __future__ import annotations

import time
from functools import partial
from typing import Callable

from .run import Job, Ready, RunContext, SegDone, run_job
from .status import progress_text

UI_INTERVAL_S = 0.5  # status/progress refresh: each repaints the window (costly with software GL)


class Runner:
    """Starts, follows and stops the widget's runs. Callbacks (main thread): ``status(text)``,
    ``on_ready(ctx, Ready)`` and ``on_segmentation(ctx, SegDone)`` of the current run,
    ``on_done(seconds)``, ``on_error(exception)``, ``on_finished()`` after any run ended;
    ``alive()`` says whether the controls still exist (the viewer may close mid-run)."""

    def __init__(self, *, status: Callable[[str], None], on_ready, on_segmentation, on_done,
                 on_error, on_finished, alive: Callable[[], bool]):
        self.status, self.on_ready, self.on_segmentation = status, on_ready, on_segmentation
        self.on_done, self.on_error, self.on_finished = on_done, on_error, on_finished
        self.alive = alive
        self.worker = None  # the current run's worker (None when none runs)
        self.generation = 0  # the current run's number
        self.n_runs = 0
        self.ui_interval = UI_INTERVAL_S  # seconds between refreshes of a running run's progress
        self._workers: list = []  # started workers not yet finished (cancelled ones included)
        self._bars: dict[int, object] = {}
        self._first: dict[int, tuple[float, int]] = {}  # (elapsed, done) of a run's first tick
        self._ended: set[int] = set()  # runs whose returned/finished arrived
        self._last_ui = 0.0

    @property
    def running(self) -> bool:
        return self.worker is not None

    def busy(self) -> bool:
        """True while any run (also a cancelled one winding down) is still on its thread."""
        return bool(self._workers)

    def start(self, job: Job, ctx: RunContext):
        """Start a run (stopping the one in flight); returns its worker."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self.stop()
        self.generation += 1
        gen = self.generation
        worker = create_worker(run_job, job, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(partial(self._yielded, gen, ctx))
        worker.returned.connect(partial(self._returned, gen))
        worker.errored.connect(partial(self._errored, gen))
        worker.finished.connect(partial(self._finished, gen, worker))
        self._bars[gen] = progress(total=0, desc="berdiff: masked sampling")
        self.worker = worker
        self._workers.append(worker)
        self.n_runs += 1
        worker.start()
        return worker

    def stop(self) -> bool:
        """Stop the run in flight at its next step; nothing it still sends is used. Touches no
        control. True when a run was in flight."""
        if self.worker is None:
            return False
        self.generation += 1
        self.worker.quit()
        self.worker = None
        return True

    def progress(self, tick, gen: int | None = None) -> None:
        """Show a progress tick of run ``gen`` (default: the current one): its progress bar and,
        for the current run, the status line with the ETA; while it runs at most every
        :attr:`ui_interval` seconds (fast models tick every few ms)."""
        gen = self.generation if gen is None else gen
        now = time.perf_counter()
        if tick.total and 0 < tick.done < tick.total and now - self._last_ui < self.ui_interval:
            return
        self._last_ui = now
        counted = bool(tick.total and tick.done)
        if gen == self.generation and counted:
            self._first.setdefault(gen, (tick.elapsed, tick.done))  # before events are processed
        bar = self._bars.get(gen)
        if bar is not None and tick.total:
            if bar.total != tick.total:
                bar.total = tick.total
            bar.update(tick.done - bar.n)  # may process pending events (returned, finished)
        if gen != self.generation or gen in self._ended:
            return
        first = self._first.setdefault(gen, (tick.elapsed, tick.done)) if counted else None
        self.status(progress_text(tick, first))

    # -- the worker's signals --------------------------------------------------------------
    def _gone(self) -> bool:
        """Whether the controls are gone (the viewer closed); the run in flight is then stopped."""
        if self.alive():
            return False
        self.stop()
        return True

    def _yielded(self, gen, ctx, item):
        if self._gone():
            return
        if isinstance(item, Ready):
            if gen == self.generation:
                self.on_ready(ctx, item)
            return
        if isinstance(item, SegDone):
            if gen == self.generation:
                self.on_segmentation(ctx, item)
            item = item.tick
        self.progress(item, gen)

    def _returned(self, gen, seconds):
        if self._gone():
            return
        self._ended.add(gen)
        if gen == self.generation:
            self.on_done(seconds)

    def _errored(self, gen, err):
        if not self._gone() and gen == self.generation:
            self.on_error(err)

    def _finished(self, gen, worker):
        self._ended.add(gen)
        bar = self._bars.pop(gen, None)
        if bar is not None:
            try:
                bar.close()
            except RuntimeError:  # its Qt side went with the viewer
                pass
        self._first.pop(gen, None)
        if self.worker is worker:
            self.worker = None
        if worker in self._workers:
            self._workers.remove(worker)
        if not self._gone():
            self.on_finished()
