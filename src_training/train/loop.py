"""The training loop shared by both stages: data order, checkpoints, resume, logs and signals.

A stage is a :class:`~src_training.train.train_state.TrainTask` (see :mod:`src_training.train.train_autoencoder`
and :mod:`src_training.train.train_diffusion`): it owns a :class:`~src_training.train.train_state.TrainState`
(models, optimisers, EMAs, grad scalers), takes one optimisation step per batch and says what the
exported checkpoint holds. :func:`run_training` does the rest, identically for both stages:

- **Data order**: :class:`~src_training.train.train_state.InfiniteLoader` draws epochs from a
  ``DistributedSampler`` (also with one process) seeded by ``seed`` and the epoch; its position
  (epoch, batches consumed) is saved, and a resumed run regenerates the epoch's permutation and
  skips the consumed batches.
- **Checkpoints**: ``out_dir/last.pt`` every ``ckpt_every`` steps, written atomically by
  :func:`napari_berdiff.core.models.checkpoint.save_checkpoint` (temporary file + fsync + rename; stale
  temporary files of a killed run are removed at the next start). It is an ordinary model
  checkpoint whose weights are the EMA weights (the napari widget and ``Detector`` load it), plus a
  ``training_state`` with the raw weights, optimisers, EMAs, grad scalers, step, data position and
  the RNG states of every rank (torch CPU/CUDA, numpy, ``random``) as tensors and plain types
  (``torch.load(weights_only=True)`` reads it; the EMA tensors are shared with the exported
  weights, so they are stored once). At the end the stage's final file (``final_name``, no
  training state) is written beside it.
- **Resume**: ``resume=None`` continues from ``out_dir/last.pt`` when it exists, a path continues
  from that file, ``False`` starts afresh. With the same arguments a resumed CPU run reproduces the
  uninterrupted run's weights bit for bit (tests/test_train_resume.py). To train longer, rerun
  with a larger ``steps``.
- **Signals**: Ctrl-C (SIGINT) or SIGTERM stop the run at the end of the current step, save
  ``last.pt`` and raise :class:`~src_training.train.train_state.TrainingInterrupted` (a
  ``KeyboardInterrupt``); a second Ctrl-C aborts at once (saving only when no update was in
  progress). A ``KeyboardInterrupt`` raised by the data pipeline saves the last finished step.
  Under DDP the ranks agree on the stop step every step (one tiny all-reduce).
- **Records** (rank 0): tqdm progress, ``log.jsonl`` (:mod:`src_training.train.trainlog`), ``loss.png``
  (at checkpoints, at most every two minutes, and at the end) and sample grids
  ``samples/step_NNNNNNN.png`` every ``sample_every`` steps, drawn with the RNG forked so that
  samples never change the training.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from napari_berdiff.core.models.checkpoint import load_raw, save_checkpoint

from .distributed import all_gather_object, any_rank, barrier, unwrap
from .train_state import (LAST, Amp, InfiniteLoader, LoopOptions, TrainingInterrupted, TrainState,
                          TrainTask, capture_rng, collate_first, derive_seed, resolve_amp,
                          restore_rng, resume_path, seed_everything)
from .trainlog import JsonlLog, plot_losses

__all__ = ["run_training", "LoopOptions", "TrainState", "TrainTask", "TrainingInterrupted",
           "InfiniteLoader", "Amp", "resolve_amp", "seed_everything", "derive_seed",
           "capture_rng", "restore_rng", "collate_first", "state_digest", "LAST"]


RANK_DUMP_ENV = "BERDIFF_RANK_DUMP"  # test-only: see _rank_dump
_SAVES_BY_THIS_PROCESS = [0]
_PLOT_INTERVAL_S = 120.0  # loss.png is redrawn at checkpoints at most this often, and at the end


class _StopRequests:
    """SIGINT/SIGTERM set a flag read between steps; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # pragma: no cover - exotic embedding
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.reason is not None:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        print(f"\n{self.reason}: stopping after this step and saving a checkpoint (press Ctrl-C "
              "again to abort at once)", file=sys.stderr, flush=True)


def _remove_stale_temps(out: Path) -> None:
    for p in out.glob(".*.pt.*.tmp"):  # left by a process killed inside atomic_torch_save
        p.unlink(missing_ok=True)


def _options_record(opts: LoopOptions) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
            for k, v in vars(opts).items() if k != "on_end"}


def _save(task: TrainTask, loader: InfiniteLoader, opts: LoopOptions, path: Path,
          gather: bool = True) -> Path:
    """Write ``path`` (model checkpoint with EMA weights + training state) on rank 0."""
    info = task.info
    rngs = all_gather_object(capture_rng(), info) if gather else [capture_rng()]
    if info.is_main:
        ema_states = {k: e.state_dict() for k, e in task.state.emas.items()}
        ts = task.state.state_dict(ema_states)
        ts.update(stage=task.stage, data=loader.state_dict(), rng=rngs,
                  world_size=info.world_size, options=_options_record(opts))
        save_checkpoint(path, **task.export(ema_states), training_state=ts)
        _SAVES_BY_THIS_PROCESS[0] += 1
    if gather:
        barrier(info)
    return path


def _resume(task: TrainTask, loader: InfiniteLoader, path: Path) -> None:
    obj = load_raw(path)
    ts = obj.get("training_state")
    if not ts:
        raise ValueError(f"{path} holds no training state (an exported model?); resume from the "
                         f"run's {LAST}")
    if ts.get("stage") != task.stage:
        raise ValueError(f"{path} is a {ts.get('stage')} training checkpoint, not {task.stage}")
    task.check_resume(obj)
    task.state.load_state_dict(ts)
    loader.load_state_dict(ts["data"])
    rngs = ts["rng"]
    if len(rngs) != task.info.world_size and task.info.is_main:
        print(f"note: {path} was written by {len(rngs)} process(es), this run has "
              f"{task.info.world_size}; random streams are not continued exactly")
    restore_rng(rngs[task.info.rank % len(rngs)])
    if task.info.is_main:
        print(f"resuming {task.stage} training from {path} at step {task.state.step}")


def _log_means(sums: dict[str, torch.Tensor], n: int, task: TrainTask) -> dict[str, float]:
    keys = sorted(sums)
    if not keys or n == 0:
        return {}
    vals = torch.stack([sums[k].float().reshape(()) for k in keys]) / n
    if task.info.distributed:
        torch.distributed.all_reduce(vals)
        vals = vals / task.info.world_size
    return dict(zip(keys, vals.tolist()))


def run_training(task: TrainTask, dataset, opts: LoopOptions) -> Path:
    """Train ``task`` on ``dataset`` up to ``opts.steps``; returns the final checkpoint's path.

    Raises :class:`TrainingInterrupted` after saving ``last.pt`` when stopped by a signal.
    """
    loop = _Loop(task, dataset, opts)
    try:
        with _StopRequests() as stop:
            while task.state.step < opts.steps:
                loop.step()
                step = task.state.step
                loop.log(step)
                loop.samples(step)
                stopping = any_rank(stop.reason is not None, task.info)
                loop.checkpoint(step, stopping)
                if stopping:
                    raise TrainingInterrupted(step, loop.last, stop.reason or "signal")
    except TrainingInterrupted as err:
        loop.bar.close()
        if task.info.is_main:
            print(f"\n{err}; continue with the same command (or --resume {loop.last})",
                  file=sys.stderr)
        raise
    except KeyboardInterrupt:
        raise loop.interrupted() from None
    return loop.finish()


class _Loop:
    """The state of one :func:`run_training`: loader, log, progress bar and the current log
    window, and what was saved last; one method per part of a step."""

    def __init__(self, task: TrainTask, dataset, opts: LoopOptions) -> None:
        info, out = task.info, opts.out_dir
        self.task, self.opts, self.out = task, opts, out
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(out)
        barrier(info)
        self.loader = InfiniteLoader(dataset, opts.batch_size, seed=opts.seed, rank=info.rank,
                                     world_size=info.world_size, num_workers=opts.num_workers,
                                     pin_memory=info.device.type == "cuda")
        src = resume_path(opts)
        if src is not None:
            _resume(task, self.loader, src)
        else:
            seed_everything(derive_seed(opts.seed, info.rank, 1))  # per-rank training noise
        self.last = out / LAST
        self.log_file = JsonlLog(out / "log.jsonl", fresh=src is None) if info.is_main else None
        step = task.state.step
        if self.log_file is not None and src is not None:
            self.log_file.truncate(step)
        if step >= opts.steps and info.is_main:
            print(f"{task.stage}: already at step {step} >= steps={opts.steps}; writing the "
                  "final checkpoint")
        self.saved_step = step if src is not None else -1
        self.sums: dict[str, torch.Tensor] = {}
        self.n_win, self.t_win, self.t_start, self.t_plot = 0, 0.0, time.perf_counter(), -float("inf")
        self.in_update = False
        self.bar = tqdm(total=opts.steps, initial=step, desc=task.stage, dynamic_ncols=True,
                        disable=not (info.is_main and opts.progress), file=sys.stderr)

    def step(self) -> None:
        """One optimisation step; its losses join the log window."""
        task, state = self.task, self.task.state
        t0 = time.perf_counter()
        batch = next(self.loader).to(task.info.device, non_blocking=True)
        self.in_update = True
        losses = task.train_step(batch, state.step + 1)
        state.step += 1
        self.in_update = False
        for k, v in losses.items():
            v = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n_win += 1
        self.t_win += time.perf_counter() - t0
        self.bar.update(1)

    def log(self, step: int) -> None:
        """Every ``log_every`` steps (and at the end): the window's mean losses to the log."""
        if not (step % self.opts.log_every == 0 or step == self.opts.steps):
            return
        means = _log_means(self.sums, self.n_win, self.task)
        if self.log_file is not None:
            world_batch = self.opts.batch_size * self.task.info.world_size
            rec = {"step": step, "epoch": self.loader.epoch, "lr": self.task.lr(),
                   "samples_per_s": round(self.n_win * world_batch / max(self.t_win, 1e-9), 3),
                   "wall_s": round(time.perf_counter() - self.t_start, 3), **means}
            self.log_file.write(rec)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
        self.sums, self.n_win, self.t_win = {}, 0, 0.0

    def samples(self, step: int) -> None:
        """Every ``sample_every`` steps (and at the end), rank 0: a sample grid, drawn with the
        RNG forked so that samples never change the training."""
        info = self.task.info
        if info.is_main and (step % self.opts.sample_every == 0 or step == self.opts.steps):
            with torch.random.fork_rng(devices=[info.device] if info.device.type == "cuda"
                                       else []):
                self.task.write_samples(self.out / "samples" / f"step_{step:07d}.png", step)

    def checkpoint(self, step: int, stopping: bool) -> None:
        """Every ``ckpt_every`` steps, when stopping and at the end: ``last.pt`` (and loss.png at
        most every two minutes)."""
        if not (step % self.opts.ckpt_every == 0 or stopping or step == self.opts.steps):
            return
        _save(self.task, self.loader, self.opts, self.last)
        self.saved_step = step
        if self.log_file is not None and time.perf_counter() - self.t_plot > _PLOT_INTERVAL_S:
            plot_losses(self.log_file.records, self.out / "loss.png",
                        title=f"{self.task.stage} ({self.out.name})")
            self.t_plot = time.perf_counter()

    def interrupted(self) -> TrainingInterrupted:
        """After a KeyboardInterrupt: save the last finished step unless an update was under
        way (or it is saved already); the error to raise."""
        self.bar.close()
        task, state, info, last = self.task, self.task.state, self.task.info, self.last
        path: Path | None = last if last.is_file() else None
        if self.in_update:
            msg = f"aborted during step {state.step + 1}: not saved"
        elif state.step != self.saved_step and (info.is_main or not info.distributed):
            path = _save(task, self.loader, self.opts, last, gather=not info.distributed)
            msg = f"interrupted at step {state.step}: saved {last}"
        else:
            msg = f"interrupted at step {state.step}"
        if info.is_main:
            print(f"\n{msg}; continue with the same command (or --resume {last})", file=sys.stderr)
        return TrainingInterrupted(state.step if not self.in_update else max(self.saved_step, 0),
                                   path, "KeyboardInterrupt")

    def finish(self) -> Path:
        """The loss plot and the stage's final checkpoint (EMA weights, no training state)."""
        task, info, out = self.task, self.task.info, self.out
        self.bar.close()
        if self.log_file is not None and self.log_file.records:
            plot_losses(self.log_file.records, out / "loss.png", title=f"{task.stage} ({out.name})")
        final = out / task.final_name
        if info.is_main:
            ema_states = {k: e.state_dict() for k, e in task.state.emas.items()}
            save_checkpoint(final, **task.export(ema_states))
            _SAVES_BY_THIS_PROCESS[0] += 1
            print(f"{task.stage}: wrote {final} (step {task.state.step})", file=sys.stderr)
        barrier(info)
        if os.environ.get(RANK_DUMP_ENV):
            _rank_dump(task, self.loader, Path(os.environ[RANK_DUMP_ENV]))
        if self.opts.on_end is not None:
            self.opts.on_end(task)
        return final


def state_digest(task: TrainTask) -> dict[str, str]:
    """SHA-256 of each raw model's parameters and each EMA's weights (compare ranks/runs)."""
    out = {}
    for kind, mods in (("model", {k: unwrap(m) for k, m in task.state.models.items()}),
                       ("ema", {k: e.shadow for k, e in task.state.emas.items()})):
        for name, m in mods.items():
            h = hashlib.sha256()
            for pname, p in m.named_parameters():
                h.update(pname.encode())
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
            out[f"{kind}/{name}"] = h.hexdigest()
    return out


def _rank_dump(task: TrainTask, loader: InfiniteLoader, folder: Path) -> None:
    """Test-only (``BERDIFF_RANK_DUMP=dir``): each rank writes its weight digests, the number of
    checkpoint files it wrote and its shard of epoch 0 to ``dir/<stage>_rank<r>.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    shard = loader._sampler()
    shard.set_epoch(0)
    rec = {"rank": task.info.rank, "world_size": task.info.world_size, "step": task.state.step,
           "digest": state_digest(task), "checkpoints_written": _SAVES_BY_THIS_PROCESS[0],
           "epoch0_indices": [int(i) for i in shard]}
    (folder / f"{task.stage}_rank{task.info.rank}.json").write_text(json.dumps(rec))
