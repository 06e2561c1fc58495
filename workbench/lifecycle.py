"""A trainer's run on disk and its changes of course: start, checkpoint, close, resume, set_live, fork.

``Trainer`` inherits these; they are here so that trainer.py reads as the step. The run
directory itself (files, lock, digests) is ``store.RunStore``.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import torch

from .config import ConfigError, RunConfig
from .policy import PolicyLoadError
from .store import Checkpoint, CheckpointError, RunStore


class RunLifecycle:
    def _start_run(self, store: RunStore) -> None:
        """Write a new run directory (claimed by ``claim_run_directory``) and a checkpoint of where it starts,
        so that it can be resumed whatever happens next."""
        try:
            store.create(self.cfg)
            for record in self._history:  # a fork's inherited history
                store.append_metrics(record)
            self.store = store
            self.save_checkpoint()
        except BaseException:
            self.store = None
            store.unlock()
            raise

    def close(self) -> None:
        """Let go of the run directory (its writer lock); the trainer no longer writes it."""
        if self.store is not None:
            self.store.unlock()
            self.store = None

    def _checkpoint_if_due(self) -> None:
        if self.store is not None and self.cfg.checkpoint_every and self.step_index % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def _save_on_the_way_out(self) -> None:
        """Best effort: a checkpoint of the last finished step, so ``resume`` continues from it."""
        if self.store is None or self.step_index in self.store.checkpoint_steps():
            return
        try:
            self.save_checkpoint()
        except Exception as error:  # a full disk, say: the earlier checkpoint stays, and is named
            earlier = self.store.checkpoint_steps()
            warnings.warn(f"could not save a checkpoint at step {self.step_index} ({error}); the run resumes "
                          f"from step {earlier[-1] if earlier else 0}", RuntimeWarning, stacklevel=3)

    # --- changing course ----------------------------------------------------------------------
    def set_live(self, **changes) -> RunConfig:
        """Change hyperparameters that are safe to change between steps (``LIVE_FIELDS``); they act
        from the next step. ``method_options`` given here are merged into the current ones. A run
        directory's config.yaml is rewritten, so a resumed run carries on with the new values."""
        fixed = sorted(set(changes) - set(LIVE_FIELDS))
        if fixed:
            raise ConfigError(fixed[0], changes[fixed[0]],
                              f"a field that can change mid-run ({', '.join(LIVE_FIELDS)}); fork the run to change it")
        if "method_options" in changes:
            changes["method_options"] = {**self.cfg.method_options, **changes["method_options"]}
        cfg = self.cfg.replace(**changes)  # validates the whole config, method options included
        self.cfg = self.method.cfg = cfg
        self.method.options = {**self.method.defaults, **cfg.method_options}
        self._apply_optimizer_settings()
        if self.store is not None:
            self.store.write_config(cfg)
        return cfg

    def _apply_optimizer_settings(self) -> None:
        """The config decides the optimizer's settings, also after a state dict (which carries
        the parent's or the checkpoint's) was loaded."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.learning_rate
            group["weight_decay"] = self.cfg.weight_decay

    def fork(self, out_dir: str | Path | None = None, **changes) :
        """A new run that starts from this one's adapter, optimizer state and step, with any
        config ``changes`` (all fields, not only live ones): a branch to compare against. Every
        field it accepts takes effect (a new task is built; the optimizer takes the new learning
        rate and weight decay); those that would change the model or the adapter's shape are
        refused."""
        cfg = self.cfg.replace(**changes)
        rebuild = [f for f in FORK_REFUSES if getattr(cfg, f) != getattr(self.cfg, f)]
        if rebuild:
            raise ConfigError(rebuild[0], getattr(cfg, rebuild[0]), "the parent's value: a fork keeps the model and "
                              f"adapter shape ({', '.join(FORK_REFUSES)}); start a new run to change it")
        store = claim_run_directory(out_dir) if out_dir is not None else None
        try:
            policy = copy.deepcopy(self.policy)
            if self.cfg.gradient_checkpointing and not cfg.gradient_checkpointing:
                policy.model.gradient_checkpointing_disable()
            task = self.task if cfg.task == self.cfg.task else None  # None: the branch builds its own
            branch = type(self)(cfg, policy=policy, task=task)
        except BaseException:
            if store is not None:
                store.unlock()
            raise
        branch.optimizer.load_state_dict(self.optimizer.state_dict())
        branch._apply_optimizer_settings()
        branch.step_index, branch.nan_skips = self.step_index, self.nan_skips
        branch._history = [dict(r) for r in self._history]
        if store is not None:
            branch._start_run(store)
        return branch

    # --- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        if self.store is None:
            raise ValueError("this trainer has no run directory: pass out_dir= to save checkpoints")
        return self.store.save_checkpoint(self.step_index, self.policy, self.optimizer, {"nan_skips": self.nan_skips})

    @classmethod
    def resume(cls, run_dir: str | Path, read_only: bool = False, **kwargs) :
        """Continue a run from its latest checkpoint, exactly as if it had not stopped.

        The checkpoint is read and checked before anything is applied or written: a missing,
        truncated or corrupt file raises CheckpointError naming it, and the run directory is
        left as it was. Metrics of steps after the checkpoint are dropped (they run again).
        RunConfig fields among ``kwargs`` that can change mid-run (``LIVE_FIELDS``) are applied
        and recorded in config.yaml; others that differ from the run's are refused (fork instead).
        ``read_only=True``: the policy of the last checkpoint, to evaluate or inspect; nothing is
        locked or written, so it works on a live or a read-only run."""
        changes = {k: kwargs.pop(k) for k in list(kwargs) if k in RUN_CONFIG_FIELDS}
        store = RunStore(run_dir)
        if not read_only:
            store.lock()
        try:
            cfg = store.config()
            changes = _resume_changes(cfg, changes, store.dir)
            checkpoint = store.load_checkpoint()
            trainer = cls(cfg, **kwargs)
            trainer._restore(checkpoint)
            if read_only:
                trainer._history = [r for r in store.read_metrics() if r["step"] < checkpoint.step]
            else:
                trainer.store = store
                trainer._history = store.truncate_metrics(checkpoint.step - 1)
                if changes:
                    trainer.set_live(**changes)
        except BaseException:
            store.unlock()
            raise
        return trainer

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Load a checked checkpoint into this trainer; a file that does not fit the model is named."""
        try:
            self.policy.load_adapter_state(checkpoint.adapter)
        except (PolicyLoadError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint file {checkpoint.path / 'adapter.safetensors'} does not fit this "
                                  f"model and adapter: {error}") from error
        try:
            self.optimizer.load_state_dict(checkpoint.optimizer)
            torch.set_rng_state(checkpoint.torch_rng)
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint file {checkpoint.path / 'optimizer.pt'} does not fit this "
                                  f"adapter: {error}") from error
        self._apply_optimizer_settings()  # config.yaml decides: set_live rewrites it
        self.step_index = checkpoint.step
        self.nan_skips = checkpoint.state.get("nan_skips", 0)



RUN_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(RunConfig))

# RunConfig fields a fork cannot change: they shape the model and the adapter it copies
FORK_REFUSES = ("model", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "device", "dtype")

# RunConfig fields a running trainer can change between steps (Trainer.set_live); the others
# shape what was built (model, adapter, batch layout, method) and need a fork.
LIVE_FIELDS = ("learning_rate", "temperature", "top_p", "top_k", "entropy_coef", "beta", "epsilon", "epsilon_high",
               "max_grad_norm", "top_entropy_quantile", "pivot_z_threshold", "method_options")


def claim_run_directory(out_dir: str | Path) -> RunStore:
    """The writer lock of a directory that holds no run yet (else a ConfigError naming it)."""
    store = RunStore(out_dir)
    if not store.holds_run():  # checked again under the lock: another process may have started one
        store.lock()
    if store.holds_run():
        store.unlock()
        steps = store.checkpoint_steps()
        saved = f" (its last checkpoint is at step {steps[-1]})" if steps else ""
        raise ConfigError("out_dir", str(store.dir), f"a directory that holds no run yet; this one holds a run{saved}: "
                          f"continue it with Trainer.resume({str(store.dir)!r}) (workbench train --resume)")
    return store


def _resume_changes(cfg: RunConfig, changes: dict, run_dir: Path) -> dict:
    """The requested config changes that differ from the run's: live ones are returned (to be
    applied), a non-live one is refused."""
    differ = {k: v for k, v in changes.items() if getattr(cfg, k) != v}
    fixed = sorted(set(differ) - set(LIVE_FIELDS))
    if fixed:
        raise ConfigError(fixed[0], differ[fixed[0]], f"the value in {run_dir / 'config.yaml'} "
                          f"({getattr(cfg, fixed[0])!r}): a resumed run keeps what shapes it; only "
                          f"{', '.join(LIVE_FIELDS)} can change on resume. Fork the run to change the rest")
    if differ:
        cfg.replace(**{**differ, "method_options": {**cfg.method_options, **differ.get("method_options", {})}})
    return differ
