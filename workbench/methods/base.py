"""Method: the hooks a training method may override. GRPO is the default of every hook.

A step runs ``sample`` -> score -> ``advantages`` -> update -> metrics. ``sample`` is a
generator that yields one ``Phase`` per sampling phase and returns the batch, so methods
with several sampling phases (EEPO, Policy Split) can be stepped through.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar

from .. import core
from ..batch import RolloutBatch
from ..events import Phase
from ..options import ConfigError, Option, named


class Method:
    name: ClassVar[str] = "grpo"
    # the method_options this method understands, each declared once (workbench.options)
    OPTIONS: ClassVar[dict[str, Option]] = {}
    # their defaults, derived from OPTIONS
    defaults: ClassVar[dict[str, Any]] = {}
    # RunConfig fields left None that this method fills (its paper's settings); the filled value
    # is what the run records in config.yaml
    CONFIG_DEFAULTS: ClassVar[dict[str, Any]] = {"loss_type": "dapo"}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.OPTIONS = named(cls.OPTIONS)
        cls.defaults = {key: option.default for key, option in cls.OPTIONS.items()}

    def __init__(self, cfg):
        self.cfg = cfg
        self.options = {**self.defaults, **cfg.method_options}

    @classmethod
    def validate(cls, cfg) -> None:
        """Each option against its declaration; a method adds the checks that involve several
        settings (EEPO's even num_generations, Poly-EPO's set size below it)."""
        unknown = sorted(set(cfg.method_options) - set(cls.OPTIONS))
        if unknown:
            allowed = ", ".join(sorted(cls.OPTIONS)) or "none"
            raise ConfigError(f"method_options.{unknown[0]}", cfg.method_options[unknown[0]],
                              f"an option of method {cls.name!r}; its options: {allowed}")
        for key, value in cfg.method_options.items():
            cls.OPTIONS[key].check(value, f"method_options.{key}")

    # --- hooks ------------------------------------------------------------------------
    def sample(self, trainer, problems) -> Generator[Phase, None, RolloutBatch]:
        batch = trainer.sample_group(problems, self.cfg.num_generations)
        yield Phase("sample", trainer.step_index, batch, {"responses": len(batch)})
        return batch

    def advantages(self, trainer, batch: RolloutBatch) -> dict[str, float]:
        """Fill ``batch.advantages`` [N] and ``batch.token_advantages`` [N, T]."""
        rewards = batch.grouped(batch.rewards)
        batch.advantages = batch.ungrouped(core.group_advantages(rewards, self.cfg.scale_rewards))
        batch.token_advantages = batch.advantages[:, None] * batch.mask
        return {"advantage_abs_mean": float(batch.advantages.abs().mean())}

    def loss_settings(self) -> dict[str, float | None]:
        """Coefficients of the PPO-clip loss; baselines change their defaults."""
        cfg = self.cfg
        return {
            "epsilon": cfg.epsilon,
            "epsilon_high": cfg.epsilon_high,
            "entropy_coef": cfg.entropy_coef,
            "top_entropy_quantile": cfg.top_entropy_quantile,
            "beta": cfg.beta,
        }

    def token_loss(self, logp, logp_old, advantages, mask, settings, generator=None):
        """Per-token loss [B, T] and the ratio-clipped flags; PPO-clip unless a baseline says otherwise."""
        return core.ppo_clip_token_loss(logp, logp_old, advantages, settings["epsilon"], settings["epsilon_high"])

    def training_batch(self, batch: RolloutBatch) -> RolloutBatch:
        """The rows the loss is computed on (Policy Split trains each response in two contexts)."""
        return batch

    def precomputed_logprobs(self, batch: RolloutBatch, with_entropy: bool):
        """(rows, log-probs [rows, T]) under the current policy, with their graph, for rows the
        method already ran forward (EEPO's unlearning pass), or None. The update's first pass
        uses them as one micro-batch instead of running those rows again."""
        return None

    def old_logprobs(self, batch: RolloutBatch, rows, recomputed):
        """logp_old of ``rows`` for the PPO ratio. GRPO: the detached current log-probs, which
        equal the sampling policy's when each batch gets one update (no extra pass)."""
        return recomputed

    def extra_metrics(self, trainer, batch: RolloutBatch) -> dict[str, float]:
        return {}
