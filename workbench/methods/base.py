"""Method: the hooks a training method may override. GRPO is the default of every hook.

A step runs ``sample`` -> score -> ``advantages`` -> update -> metrics. ``sample`` is a
generator that yields one ``Phase`` per sampling phase and returns the batch, so methods
with several sampling phases (EEPO, Policy Split) can be stepped through.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any, ClassVar

from .. import core
from ..batch import RolloutBatch
from ..config import ConfigError
from ..events import Phase


class Method:
    name: ClassVar[str] = "grpo"
    # method_options this method understands, with their defaults
    defaults: ClassVar[dict[str, Any]] = {}
    # numeric options that also take None (which switches the feature off): what else they allow
    optional_numbers: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg):
        self.cfg = cfg
        self.options = {**self.defaults, **cfg.method_options}

    @classmethod
    def validate(cls, cfg) -> None:
        unknown = sorted(set(cfg.method_options) - set(cls.defaults))
        if unknown:
            allowed = ", ".join(sorted(cls.defaults)) or "none"
            raise ConfigError(f"method_options.{unknown[0]}", cfg.method_options[unknown[0]],
                              f"an option of method {cls.name!r}; its options: {allowed}")
        for key, value in cfg.method_options.items():
            if value is None and key in cls.optional_numbers:
                continue
            _check_numeric_type(key, value, cls.defaults[key])

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


def _check_numeric_type(key: str, value: Any, default: Any) -> None:
    """An option whose default is a number takes a finite number (an integer where the default
    is one): a NaN or a string would otherwise only fail mid-step, or silently pass a range check."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return
    integer = isinstance(default, int)
    kind = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(f"method_options.{key}", value, "an integer" if integer else "a finite number")


def check_range(key: str, value: float, low: float = -math.inf, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise a ConfigError naming ``method_options.key`` unless low <= value <= high (open where said)."""
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
        raise ConfigError(f"method_options.{key}", value, f"a number in {bounds}")
