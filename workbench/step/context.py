"""StepContext: what a method's hooks see of the engine that runs the step.

An engine (the workbench ``Trainer``, the TRL backend, a third one) implements this protocol, by
calling the functions of ``workbench.step`` with its own sampler, autocast and seeds; a method
sees nothing else of it. The type checker verifies both engines against it (tests/test_step_contract.py).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from workbench.models.policy import Policy
from workbench.step.batch import RolloutBatch
from workbench.tasks import Problem

Adapter = Any  # "policy", "reference", or a dict of moved adapter tensors (EEPO's rollout model)


@runtime_checkable
class StepContext(Protocol):
    """What a method's hooks see of the engine that runs the step: all of it."""

    # the run's RunConfig (typed loosely: workbench.config imports the methods that receive this context)
    cfg: Any
    policy: Policy

    @property
    def step_index(self) -> int:
        """The step being trained, counted from 0."""

    @property
    def records(self) -> list[dict]:
        """The metrics rows of the steps before this one (EEPO's gate reads its window there)."""

    def generator(self, *parts: int) -> torch.Generator:
        """A random stream seeded from (the run's seed, ``parts``) alone, so resume is exact."""

    def sample_group(
        self,
        problems: list[Problem],
        num_generations: int,
        system: str | None = None,
        mode: str = "normal",
        stage: int = 1,
        generator: torch.Generator | None = None,
    ) -> RolloutBatch:
        """``num_generations`` responses per problem from the current adapter, after an optional
        ``system`` prompt, with their telemetry (``workbench.step.sample_group``)."""

    def token_logprobs(
        self,
        prompt_ids: list[list[int]],
        ids: torch.Tensor,
        adapter: Adapter = "policy",
        grad: bool = False,
        with_entropy: bool = False,
        with_complement: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs [N, T] of ``ids`` after ``prompt_ids`` (``workbench.step.token_logprobs``)."""
