"""GRPO and the loss-level baselines of METHODS.md section 1.

GRPO is ``Method`` unchanged. The baselines differ only in the coefficients of the loss,
so each is a few lines: the entropy bonus (``entropy_coef`` 0.01 unless set), clip-higher
(``epsilon_high`` 0.28 unless set) and the high-entropy-minority rule (``top_entropy_quantile``
0.2 unless set).
"""

from __future__ import annotations

from .base import Method


class GRPO(Method):
    name = "grpo"


class EntropyBonus(GRPO):
    name = "entropy_bonus"

    def loss_settings(self):
        return {**super().loss_settings(), "entropy_coef": self.cfg.entropy_coef or 0.01}


class ClipHigher(GRPO):
    name = "clip_higher"

    def loss_settings(self):
        settings = super().loss_settings()
        return {**settings, "epsilon_high": 0.28 if settings["epsilon_high"] is None else settings["epsilon_high"]}


class TopEntropy(GRPO):
    name = "top_entropy"

    def loss_settings(self):
        quantile = self.cfg.top_entropy_quantile
        return {**super().loss_settings(), "top_entropy_quantile": 0.2 if quantile == 1.0 else quantile}
