"""Method: the hooks a training method may override. GRPO is the default of every hook.

A step runs ``sample`` -> score -> ``advantages`` -> loss -> record (``workbench.step``); the hooks
see the engine only as a ``StepContext`` (``workbench.step.context``). ``sample`` is a generator
that yields one ``Phase`` per sampling phase and returns the batch, so methods with several
sampling phases (EEPO, Policy Split) can be stepped through. State a method hands from one hook
to a later one lives in the batch (``step_numbers``, ``graph_logprobs``, ``training_rows``),
never in the method object.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, ClassVar

from workbench import core
from workbench.options import ConfigError, MethodOptions, Option, named
from workbench.step.batch import RolloutBatch
from workbench.step.events import Phase

if TYPE_CHECKING:
    from workbench.step.context import StepContext


class Method:
    name: ClassVar[str] = "grpo"
    # the method_options this method understands, each declared once (workbench.options)
    OPTIONS: ClassVar[dict[str, Option]] = {}
    # their defaults, derived from OPTIONS
    defaults: ClassVar[dict[str, Any]] = {}
    # RunConfig fields left None that this method fills (its paper's settings); the filled value
    # is what the run records in config.yaml, and a value the user sets is kept. A subclass
    # declares only the settings it changes and inherits the rest.
    CONFIG_DEFAULTS: ClassVar[dict[str, Any]] = {
        "loss_type": "dapo",
        "entropy_coef": 0.0,
        "top_entropy_quantile": 1.0,
        "num_iterations": 1,
    }
    # the prompt contexts it samples in, each with its system prompt (None: the prompt as it is)
    MODES: ClassVar[dict[str, str | None]] = {"normal": None}
    # the names of the phases its ``sample`` yields, in order
    SAMPLE_PHASES: ClassVar[tuple[str, ...]] = ("sample",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.OPTIONS = named(cls.OPTIONS)
        cls.defaults = {key: option.default for key, option in cls.OPTIONS.items()}
        cls.CONFIG_DEFAULTS = {
            name: value
            for klass in reversed(cls.__mro__)
            for name, value in vars(klass).get("CONFIG_DEFAULTS", {}).items()
        }

    def __init__(self, cfg):
        self.cfg = cfg
        self.options = MethodOptions(cfg.method_options, self.OPTIONS)  # options["x"]: the value that trains

    @classmethod
    def validate(cls, cfg) -> None:
        """Each option against its declaration; a method adds the checks that involve several
        settings (EEPO's even num_generations, Poly-EPO's set size below it)."""
        unknown = sorted(set(cfg.method_options) - set(cls.OPTIONS))
        if unknown:
            allowed = ", ".join(sorted(cls.OPTIONS)) or "none"
            raise ConfigError(
                f"method_options.{unknown[0]}",
                cfg.method_options[unknown[0]],
                f"an option of method {cls.name!r}; its options: {allowed}",
            )
        for key, value in cfg.method_options.items():
            cls.OPTIONS[key].check(value, f"method_options.{key}")

    # --- what others need to know of this method -------------------------------------
    @classmethod
    def samples_on_its_own(cls) -> bool:
        """Whether it samples in phases of its own (EEPO's two stages, Policy Split's two modes)
        rather than one plain group, which any engine's generation (TRL's, vLLM) can do."""
        return cls.sample is not Method.sample

    # --- hooks: each receives the engine as a StepContext (workbench.step) ---------------
    def sample(self, ctx: StepContext, problems) -> Generator[Phase, None, RolloutBatch]:
        batch = ctx.sample_group(problems, self.cfg.num_generations)
        yield Phase("sample", ctx.step_index, batch, {"responses": len(batch)})
        return batch

    def advantages(self, ctx: StepContext, batch: RolloutBatch) -> dict[str, float]:
        """Fill ``batch.advantages`` [N] and ``batch.token_advantages`` [N, T] (and, for a method that
        trains other rows than it sampled, ``batch.training_rows``)."""
        rewards = batch.grouped(batch.scored_rewards)
        batch.advantages = batch.ungrouped(core.group_advantages(rewards, self.cfg.scale_rewards))
        batch.token_advantages = batch.advantages[:, None] * batch.mask
        return {"advantage_abs_mean": float(batch.advantages.abs().mean())}

    def loss_settings(self, batch: RolloutBatch | None = None) -> dict[str, float | None]:
        """Coefficients of the PPO-clip loss, as the config says; ``batch``: the step's, scored and
        with its advantages, for a method whose coefficients change from step to step."""
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

    def old_logprobs(self, batch: RolloutBatch, rows, recomputed):
        """logp_old of ``rows`` for the PPO ratio. GRPO: the detached current log-probs, which
        equal the sampling policy's when each batch gets one update (no extra pass)."""
        return recomputed

    def extra_metrics(self, ctx: StepContext, batch: RolloutBatch) -> dict[str, float]:
        """The method's own columns of the step's metrics row (from the batch, ``step_numbers`` included)."""
        return {}
