"""GRPO and the baselines (docs/methods.md).

GRPO is ``Method`` unchanged. Three baselines differ only in the coefficients of the loss,
which they fill into the config (``CONFIG_DEFAULTS``) when it leaves them None, so config.yaml
records what trains and a value the user sets (0 included) is kept: the entropy bonus
(``entropy_coef`` 0.01), clip-higher (``epsilon_high`` 0.28) and the high-entropy-minority
rule (``top_entropy_quantile`` 0.2).
Three change one hook: the entropy advantage (Cheng et al. 2025) shapes the advantages,
Clip-Cov and KL-Cov (Cui et al. 2025, as in verl) change the token loss of the few tokens
with the largest covariance between advantage and log-prob.
"""

from __future__ import annotations

import torch

from workbench import core
from workbench.methods.base import Method
from workbench.metrics import registry as M
from workbench.options import ConfigError, MethodOptions, number


class GRPO(Method):
    name = "grpo"


class EntropyBonus(GRPO):
    name = "entropy_bonus"
    CONFIG_DEFAULTS = {"entropy_coef": 0.01}


class AdaptiveEntropy(GRPO):
    """The entropy bonus with its coefficient steered toward ``entropy_target`` (TRL 1.16's adaptive
    entropy control, ``core.adaptive_entropy_coef``), replayed from the steps recorded so far, so a
    resumed run steers exactly as an uninterrupted one. ``entropy_coef`` is the starting coefficient;
    the row's ``entropy_coef`` is the one the step's loss used."""

    name = "adaptive_entropy"
    CONFIG_DEFAULTS = {"entropy_coef": 0.0}
    OPTIONS = {
        "entropy_target": number(0.2, "the mean token entropy (nats) the coefficient steers toward", low=0.0),
        "entropy_coef_delta": number(0.005, "how far the coefficient moves each step", low=0.0),
        "entropy_coef_min": number(0.0, "the coefficient's lower bound", low=0.0),
        "entropy_coef_max": number(1.0, "the coefficient's upper bound", low=0.0),
    }

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        o = MethodOptions(cfg.method_options, cls.OPTIONS)
        if o["entropy_coef_max"] < o["entropy_coef_min"]:
            raise ConfigError(
                "method_options.entropy_coef_max", o["entropy_coef_max"], f"a number >= {o['entropy_coef_min']:g}"
            )

    def advantages(self, ctx, batch):
        numbers = super().advantages(ctx, batch)
        o = self.options
        # the steps it controlled (a run forked from another method's starts its controller there)
        measured = [row[M.ADAPTIVE_ENTROPY_MEASURED] for row in ctx.records if M.ADAPTIVE_ENTROPY_MEASURED in row]
        coef, applied = core.adaptive_entropy_coef(
            measured,
            self.cfg.entropy_coef,
            o["entropy_target"],
            o["entropy_coef_delta"],
            o["entropy_coef_min"],
            o["entropy_coef_max"],
        )
        batch.step_numbers["adaptive_entropy"] = {"coef": coef, "applied": applied}
        return numbers

    def loss_settings(self, batch=None):
        settings = super().loss_settings()
        if batch is not None and "adaptive_entropy" in batch.step_numbers:
            settings["entropy_coef"] = batch.step_numbers["adaptive_entropy"]["applied"]
        return settings

    def extra_metrics(self, ctx, batch):
        control = batch.step_numbers["adaptive_entropy"]
        return {
            M.ADAPTIVE_ENTROPY_COEF: control["coef"],
            M.ADAPTIVE_ENTROPY_MEASURED: float(core.masked_mean(batch.entropy, batch.mask)),
        }


class ClipHigher(GRPO):
    name = "clip_higher"
    CONFIG_DEFAULTS = {"epsilon_high": 0.28}


class TopEntropy(GRPO):
    name = "top_entropy"
    CONFIG_DEFAULTS = {"top_entropy_quantile": 0.2}


class EntropyAdvantage(GRPO):
    """A~ = A + min(alpha H.detach(), |A| / kappa), with H the entropy recorded at sampling."""

    name = "entropy_advantage"
    OPTIONS = {
        "alpha": number(0.4, "weight of the entropy term alpha H", low=0.0),
        "kappa": number(2.0, "the term is at most |A| / kappa", low=0.0, low_open=True),
    }

    def advantages(self, ctx, batch):
        numbers = super().advantages(ctx, batch)
        shaped = core.entropy_advantage(batch.advantages, batch.entropy, self.options["alpha"], self.options["kappa"])
        batch.token_advantages = shaped * batch.mask
        return numbers


class ClipCov(GRPO):
    """Zero the loss of max(1, floor(ratio N)) random unclipped tokens with low < cov < high."""

    name = "clip_cov"
    OPTIONS = {
        "ratio": number(0.0002, "fraction of tokens whose loss is dropped", low=0.0, high=1.0, low_open=True),
        "cov_low": number(1.0, "lower end of the covariance band of droppable tokens"),
        "cov_high": number(5.0, "upper end of the band (at least cov_low)"),
    }

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        o = MethodOptions(cfg.method_options, cls.OPTIONS)
        if o["cov_high"] < o["cov_low"]:  # an empty band would drop nothing
            raise ConfigError("method_options.cov_high", o["cov_high"], f"a number >= cov_low = {o['cov_low']:g}")

    def token_loss(self, logp, logp_old, advantages, mask, settings, generator=None):
        loss, clipped = super().token_loss(logp, logp_old, advantages, mask, settings)
        o = self.options
        dropped = core.clip_cov_mask(
            advantages, logp, mask, clipped, o["ratio"], o["cov_low"], o["cov_high"], generator
        )
        return loss * ~dropped, clipped | dropped


class KLCov(GRPO):
    """Unclipped -A rho on every token, plus kl_coef |logp - logp_old| on the top tokens by cov."""

    name = "kl_cov"
    OPTIONS = {
        "ratio": number(
            0.0002, "fraction of tokens (largest covariance) that get the KL penalty", low=0.0, high=1.0, low_open=True
        ),
        "kl_coef": number(1.0, "weight of |logp - logp_old| on those tokens", low=0.0),
    }

    def token_loss(self, logp, logp_old, advantages, mask, settings, generator=None):
        ratio = torch.exp(logp - logp_old)
        adv = advantages if advantages.dim() == 2 else advantages[:, None]
        top = core.kl_cov_mask(advantages, logp, mask, self.options["ratio"])
        loss = -adv * ratio + self.options["kl_coef"] * (logp - logp_old).abs() * top
        return loss, torch.zeros_like(top)
