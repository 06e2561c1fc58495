"""Changing a trainer's course: set_live, fork and resume (``Trainer`` delegates to these functions).

The run directory's life itself (its lock, config, steps and checkpoints) is ``run_writer.RunWriter``,
which the Trainer has. What a change may touch is the option schema's: ``LIVE_FIELDS`` change
between steps, ``FORK_REFUSES`` (what shapes the model and its adapter) need a new run.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from workbench.config import OPTIONS, ConfigError, RunConfig
from workbench.engine import devices
from workbench.models.policy import PolicyLoadError
from workbench.options import MethodOptions
from workbench.run.store import Checkpoint, CheckpointError, RunStore
from workbench.run.writer import RunWriter, resume_changes


def set_live(trainer, changes: dict) -> RunConfig:
    """Change hyperparameters that are safe to change between steps (``LIVE_FIELDS``) at a step
    boundary: at once between steps; during an open step (a widget's thread, a StepCursor) they are
    checked now and act when the next step starts, so a step never runs with two settings.
    ``method_options`` given here are merged into the current ones. A run directory's config.yaml is
    rewritten when they act, so a resumed run carries on with the new values. Returns the config in
    force from ``trainer.changes_act_from`` on."""
    fixed = sorted(set(changes) - set(LIVE_FIELDS))
    if fixed:
        raise ConfigError(
            fixed[0],
            changes[fixed[0]],
            f"a field that can change mid-run ({', '.join(LIVE_FIELDS)}); fork the run to change it",
        )
    with trainer._boundary:
        waiting = trainer._waiting_changes
        cfg = trainer.cfg.replace(**waiting).replace(**changes)  # merges method_options; validates the whole config
        trainer.live_change_acts_from = trainer.changes_act_from
        if trainer._step_start is None:
            apply_live(trainer, changes)
        else:
            options = {**waiting.get("method_options", {}), **changes.get("method_options", {})}
            trainer._waiting_changes = {**waiting, **changes, **({"method_options": options} if options else {})}
    return cfg


def apply_live(trainer, changes: dict) -> None:
    """Put checked live ``changes`` in force now (at a step boundary) and into config.yaml."""
    cfg = trainer.cfg.replace(**changes)
    trainer.cfg = trainer.method.cfg = cfg
    trainer.method.options = MethodOptions(cfg.method_options, trainer.method.OPTIONS)
    apply_optimizer_settings(trainer)
    if trainer.writer is not None:
        trainer.writer.write_config(cfg)


def apply_optimizer_settings(trainer) -> None:
    """The config decides the optimizer's settings, also after a state dict (which carries the
    parent's or the checkpoint's) was loaded."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = trainer.cfg.learning_rate
        group["weight_decay"] = trainer.cfg.weight_decay


def fork(trainer, out_dir: str | Path | None, changes: dict):
    """A new run that starts from ``trainer``'s adapter, optimizer state and step, with any config
    ``changes`` (all fields, not only live ones): a branch to compare against. Every field it
    accepts takes effect (a new task is built; the optimizer takes the new learning rate and
    weight decay); those that would change the model or the adapter's shape are refused."""
    cfg = trainer.cfg.replace(**changes)
    rebuild = [f for f in FORK_REFUSES if getattr(cfg, f) != getattr(trainer.cfg, f)]
    if rebuild:
        raise ConfigError(
            rebuild[0],
            getattr(cfg, rebuild[0]),
            "the parent's value: a fork keeps the model and "
            f"adapter shape ({', '.join(FORK_REFUSES)}); start a new run to change it",
        )
    # a copy: Optimizer.load_state_dict keeps the tensors it is given, so the parent's moments (or the
    # snapshot its open step rolls back to) would otherwise be the branch's too, moved by both
    boundary = trainer._step_start or (None, trainer.optimizer.state_dict(), trainer.nan_skips)
    adapter, optimizer_state, nan_skips = copy.deepcopy(boundary)
    writer = RunWriter.claim(out_dir) if out_dir is not None else None
    try:
        policy = copy.deepcopy(trainer.policy)
        if adapter is not None:  # a step is part-way: the branch starts where it started
            policy.load_adapter_state(adapter)
        if trainer.cfg.gradient_checkpointing and not cfg.gradient_checkpointing:
            policy.model.gradient_checkpointing_disable()
        task = trainer.task if cfg.task == trainer.cfg.task else None  # None: the branch builds its own
        branch = type(trainer)(cfg, policy=policy, task=task)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    branch.optimizer.load_state_dict(optimizer_state)
    apply_optimizer_settings(branch)
    branch.step_index, branch.nan_skips = trainer.step_index, nan_skips
    branch._history = [dict(r) for r in trainer._history]
    if writer is not None:
        branch.start_run(writer)
    return branch


def resume(cls, run_dir: str | Path, read_only: bool, kwargs: dict):
    """A ``cls`` trainer continuing a run from its latest checkpoint, exactly as if it had not stopped.

    The checkpoint is read and checked before anything is applied or written: a missing,
    truncated or corrupt file raises CheckpointError naming it, and the run directory is
    left as it was. Metrics of steps after the checkpoint are dropped (they run again).
    RunConfig fields among ``kwargs`` that can change mid-run (``LIVE_FIELDS``) are applied
    and recorded in config.yaml; others that differ from the run's are refused (fork instead).
    ``read_only=True``: the policy of the last checkpoint, to evaluate or inspect; nothing is
    locked or written, so it works on a live or a read-only run."""
    changes = {k: kwargs.pop(k) for k in list(kwargs) if k in RUN_CONFIG_FIELDS}
    writer = None if read_only else RunWriter.reopen(run_dir)
    store = writer.store if writer is not None else RunStore(run_dir)
    try:
        cfg = store.config()
        # written before "auto" was measured: "auto" is what it trained in then
        cfg = devices.chosen_precision(cfg, devices.device(cfg.device), recorded=cfg.dtype)
        changes = resume_changes(cfg, changes, store.dir, LIVE_FIELDS)
        checkpoint = store.load_checkpoint()
        trainer = cls(cfg, **kwargs)
        restore(trainer, checkpoint, with_optimizer=writer is not None)
        if writer is None:
            trainer._history = [r for r in store.read_metrics() if r["step"] < checkpoint.step]
        else:
            trainer.writer = writer
            trainer._history = store.truncate_metrics(checkpoint.step - 1)
            if changes:
                apply_live(trainer, changes)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return trainer


def restore(trainer, checkpoint: Checkpoint, with_optimizer: bool = True) -> None:
    """Load a checked checkpoint into ``trainer``; a file that does not fit the model is named.
    Without the optimizer (``with_optimizer=False``: a read-only look, which trains nothing) any
    engine's checkpoint loads, the TRL backend's (whose optimizer groups its parameters otherwise) too."""
    try:
        trainer.policy.load_adapter_state(checkpoint.adapter)
    except (PolicyLoadError, RuntimeError) as error:
        raise CheckpointError(
            f"checkpoint file {checkpoint.path / 'adapter.safetensors'} does not fit this model and adapter: {error}"
        ) from error
    try:
        if with_optimizer:
            trainer.optimizer.load_state_dict(checkpoint.optimizer)
        torch.set_rng_state(checkpoint.torch_rng)
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(
            f"checkpoint file {checkpoint.path / 'optimizer.pt'} does not fit this adapter: {error}"
        ) from error
    apply_optimizer_settings(trainer)  # config.yaml decides: set_live rewrites it
    trainer.step_index = checkpoint.step
    trainer.nan_skips = checkpoint.state.get("nan_skips", 0)


RUN_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(RunConfig))

# RunConfig fields a fork cannot change: they shape the model and the adapter it copies
FORK_REFUSES = tuple(name for name, option in OPTIONS.items() if option.changes_in == "new_run")

# RunConfig fields a running trainer can change between steps (Trainer.set_live); the others
# shape what was built (model, adapter, batch layout, method) and need a fork.
LIVE_FIELDS = tuple(name for name, option in OPTIONS.items() if option.changes_in == "live")
