"""The run directory's life on the TRL backend: the same ``RunWriter`` the workbench Trainer owns.

A new run is claimed (locked) by the main process before the model loads and written once the run
is sure to start; a resumed one is reopened only if TRL trained it, on as many processes, with the
same GRPOConfig fields. TRL's own checkpoint of step N (optimizer, scheduler, every process's RNG
state) is moved into the run's ``checkpoints/step-N/trl/`` and covered by the digests in its
``state.json``, beside the adapter that ``workbench eval`` reads; a resume checks them all before
TRL loads anything. A checkpoint is written where the run starts (step 0), every
``checkpoint_every`` steps, at the end, and when the run is stopped: Ctrl-C or SIGTERM is taken at
the end of the step under way, by every process at once (a second one stops at once, and the run
resumes from its last checkpoint). A worker whose launcher dies, even by SIGKILL, is sent SIGTERM by
the kernel and stops the same way, rather than training on, orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import accelerate
import torch
import trl
from transformers import TrainerCallback

from workbench import core
from workbench.config import ConfigError, RunConfig
from workbench.engine import devices
from workbench.integrations.trl_config import on_cpu
from workbench.run.checkpoint import CheckpointError
from workbench.run.store import RunStore
from workbench.run.writer import RunWriter, require_engine, warn_unsaved

ENGINE = "trl"
TRL_FILES = "trl"  # TRL's own checkpoint, inside the step's checkpoint directory
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies
# one Ctrl-C reaches a worker twice under a launcher: from the terminal, and as the SIGTERM the
# launcher forwards at once; a second signal counts as "stop now" only after this long
SAME_STOP_SECONDS = 2.0


def under_a_launcher() -> bool:
    """A worker started by torchrun or ``accelerate launch`` (its elastic agent sets this)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def stop_with_the_launcher() -> None:
    """Under a launcher, ask Linux for SIGTERM when the launcher dies (even by SIGKILL): the worker
    then stops at the end of its step and saves, as on a Ctrl-C, instead of training on orphaned."""
    if not under_a_launcher() or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def backend_info(accelerator, trl_fields: dict) -> dict:
    """backend.json of a TRL run: the engine, its processes, versions and the user's GRPOConfig fields."""
    return {
        "backend": ENGINE,
        "processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "versions": {"trl": trl.__version__, "accelerate": accelerate.__version__},
        "trl_fields": trl_fields,
    }


def with_precision(cfg: RunConfig, store: RunStore, resume: bool) -> tuple[RunConfig, RunConfig | None]:
    """(``cfg`` with ``dtype="auto"`` replaced by what trains, and a resumed run's config.yaml likewise,
    else None): this machine's choice for a new run, its own for a resumed one (``devices``)."""
    on = torch.device("cpu" if on_cpu(cfg) else "cuda")
    recorded = store.config() if resume else None
    stored = devices.chosen_precision(recorded, on, recorded.dtype) if recorded is not None else None
    return devices.chosen_precision(cfg, on, stored.dtype if stored is not None else None), stored


def resumed_fields(store: RunStore, processes: int, trl_fields: dict) -> dict:
    """The GRPOConfig fields a resumed run trains with: those it was started with. A run of another
    engine, another number of processes, or other ``trl_fields`` is refused, naming what it had."""
    require_engine(store, ENGINE)
    recorded = store.backend() or {}
    if recorded.get("processes", processes) != processes:
        raise ConfigError(
            "processes",
            processes,
            f"the {recorded['processes']} processes the run in {store.dir} trained on (each draws its own "
            f"samples): resume it under accelerate launch --num_processes {recorded['processes']}",
        )
    fields = recorded.get("trl_fields", {})
    for name in sorted(set(fields) | set(trl_fields)):
        if trl_fields and trl_fields.get(name) != fields.get(name):
            raise ConfigError(
                f"trl.{name}",
                trl_fields.get(name),
                f"the value the run in {store.dir} was started with ({fields.get(name)!r}, backend.json): "
                "a TRL run resumes as it was configured (leave --trl out to take its fields)",
            )
    return fields


def resume_point(store: RunStore) -> tuple[int, Path]:
    """The step and TRL checkpoint a resume continues from: the newest checkpoint, every digest checked."""
    checkpoint = store.load_checkpoint()  # CheckpointError naming a missing, truncated or altered file
    trl_files = checkpoint.path / TRL_FILES
    if not trl_files.is_dir():
        raise CheckpointError(
            f"checkpoint {checkpoint.path} holds no TRL checkpoint ({TRL_FILES}/): it was not written by --backend trl"
        )
    return checkpoint.step, trl_files


def open_writer(store: RunStore, resume_step: int | None) -> RunWriter:
    """The main process's writer: a new run claimed, or a resumed one reopened with the metrics rows
    after its checkpoint dropped (they are trained again)."""
    if resume_step is None:
        return RunWriter.claim(store.dir)
    writer = RunWriter.reopen(store.dir, engine=ENGINE)
    writer.store.truncate_metrics(resume_step - 1)
    return writer


class StepBoundaries(TrainerCallback):
    """TRL's loop, seen from the run directory: the checkpoint where a new run starts, and a stop
    requested by a signal, taken at the end of a step on every process at once and saved."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.stop_requested = False
        self._first_signal_at = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0 and self.trainer.resume_from is None:  # a new run: resumable from its start
            self.trainer._save_checkpoint(self.trainer.model, None)

    def on_step_end(self, args, state, control, **kwargs):
        accelerator = self.trainer.accelerator
        stop = torch.tensor([float(self.stop_requested)], device=accelerator.device)
        if accelerator.num_processes > 1:  # the same decision on every process, or DDP would wait forever
            stop = accelerator.gather(stop)
        if bool(stop.max() > 0) and state.global_step % self.trainer.cfg.num_iterations == 0:  # at a step's end
            control.should_training_stop = control.should_save = True

    @contextlib.contextmanager
    def taking_signals(self) -> Iterator[None]:
        """While TRL trains: the first SIGINT or SIGTERM asks for a stop at the end of the step, a
        second one stops at once (KeyboardInterrupt); under a launcher, only one that comes
        ``SAME_STOP_SECONDS`` after the first. Only the main thread can take signals."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        grace = SAME_STOP_SECONDS if under_a_launcher() else 0.0

        def request(signum, frame):
            if not self.stop_requested:
                self.stop_requested, self._first_signal_at = True, time.monotonic()
            elif time.monotonic() - self._first_signal_at >= grace:
                raise KeyboardInterrupt

        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {signum: signal.signal(signum, request) for signum in stops}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def joined_mismatch(accelerator, so_far: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """A step's sampler-mismatch totals with a micro-batch's, every process's, joined in (each pass of
    an update compares the same old log-probs, so the means and extremes are the first pass's)."""
    every = accelerator.gather(totals[None].to(accelerator.device))
    return core.combine_mismatch_totals(torch.cat([so_far[None].to(every.device), every]))


def save_on_the_way_out(trainer) -> None:
    """Best effort, after an exception between steps on one process: a checkpoint of the last
    finished step. Mid-step (the adapter may be updated, the RNG has moved) or with several
    processes (saving is collective) the run resumes from its last checkpoint instead."""
    if trainer.writer is None or trainer._step_open or trainer.accelerator.num_processes > 1:
        return
    step = trainer.step_index
    if step in trainer.run_store.checkpoint_steps():
        return
    try:
        trainer._save_checkpoint(trainer.model, None)
    except Exception as error:
        warn_unsaved(trainer.run_store, step, error)
