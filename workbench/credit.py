"""Same tokens, different credit: one scored batch through every method's advantages.

``credit_by_method(ctx, batch)`` runs each method's ``advantages`` hook on its own copy of one
scored ``RolloutBatch``, with the batch's run config changed only in ``method`` and
``method_options``, and keeps what each method gives every token: the sequence and token
advantages, the tokens its loss counts (``step.loss_mask``), the credit that reaches the loss,
and its own per-token values (ERPO's gate and progress, Policy Split's bonus and the credit of
each response in the other context). A method that cannot run on this batch (an option that
needs a larger group, say) is listed with the reason. ``Credit.summary()`` says where each
differs from GRPO; ``Credit.to_frame()`` is the tidy table; ``widgets.same_batch`` draws it.

The credit that reaches the loss is -d(token loss)/d logp at the update's first pass: logp the
current policy's, logp_old what the method takes (``old_logprobs``; for most, logp itself, so
the ratio is 1), on the tokens the loss keeps. That is the token advantage where the method
keeps the PPO-clip loss, and whatever its own ``token_loss`` makes of it otherwise. What acts
outside the token loss (the entropy bonus, the KL term, the aggregation) is named in the notes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from workbench import methods as registry
from workbench.credit_report import notes, summary_frame, tidy_frame
from workbench.methods.base import Method
from workbench.models.policy import Policy
from workbench.step.batch import RolloutBatch
from workbench.step.context import Adapter, StepContext
from workbench.step.stages import loss_mask
from workbench.tasks import Problem

REFERENCE = registry.Method.name  # GRPO: the plain group advantage every method is compared with
SAME = 1e-6  # credits closer than this are the same
# what a method's advantages write into a batch: cleared on each copy, so that none sees another's
METHOD_OUTPUTS = ("advantages", "token_advantages", "gate", "ref_logprobs")


@dataclass
class MethodCredit:
    """What one method gives the batch's tokens."""

    method: str
    advantages: Tensor  # [N] sequence advantage
    token_advantages: Tensor  # [N, T], 0 on padding
    kept: Tensor  # [N, T] bool: the tokens its loss counts
    credit: Tensor  # [N, T] -d(token loss)/d logp at the update's first pass, on the kept tokens
    clipped: Tensor  # [N, T] bool: kept tokens whose ratio its loss clips there
    loss_settings: dict[str, Any]  # its loss coefficients, loss_type and num_iterations included
    values: dict[str, Tensor] = field(default_factory=dict)  # its own per-token values [N, T]
    notes: list[str] = field(default_factory=list)  # how it differs from GRPO beyond the numbers


@dataclass
class Credit:
    """One batch's credit under each method, GRPO first; ``unavailable``: method -> why it was not run."""

    batch: RolloutBatch  # a copy of the batch given, scored, with no method's outputs
    methods: dict[str, MethodCredit]
    unavailable: dict[str, str]
    tokenizer: Any = None

    @property
    def reference(self) -> MethodCredit:
        return self.methods[REFERENCE]

    def method(self, name: str) -> MethodCredit:
        if name not in self.methods:
            raise ValueError(f"method={name!r} is not allowed: one of {', '.join(self.methods)} (those computed)")
        return self.methods[name]

    def difference(self, name: str) -> Tensor:
        """[N, T] the method's credit minus GRPO's."""
        return self.method(name).credit - self.reference.credit

    def groups(self) -> list[list[str]]:
        """The methods whose credit is the same on every token, grouped, in order (GRPO's first)."""
        out: list[list[str]] = []
        for name, m in self.methods.items():
            home = next((g for g in out if same(self.methods[g[0]].credit, m.credit)), None)
            if home is None:
                out.append([name])
            else:
                home.append(name)
        return out

    def tokens(self, row: int) -> list[str]:
        """The text of each generated token of ``row`` (ids in angle brackets without a tokenizer)."""
        if self.tokenizer is None:
            n = int(self.batch.mask[row].sum())
            return [f"⟨{i}⟩" for i in self.batch.ids[row, :n].tolist()]
        return self.batch.tokens(row, self.tokenizer)

    def summary(self) -> pd.DataFrame:
        """One row per method: how much credit it gives and where it differs from GRPO's."""
        return summary_frame(self)

    def to_frame(self) -> pd.DataFrame:
        """One row per (method, response, token): its text, token advantage, kept, credit, own values."""
        return tidy_frame(self)


def same(a: Tensor, b: Tensor) -> bool:
    """Whether two per-token credits agree on every token."""
    return a.shape == b.shape and bool(((a - b).abs() <= SAME).all())


def credit_by_method(
    ctx: StepContext,
    batch: RolloutBatch,
    methods: Iterable[str] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Credit:
    """Each method's credit for the tokens of ``batch``, a scored batch that the policy of ``ctx``
    (a ``Trainer``, or another ``StepContext``) sampled, ``ctx.cfg`` its run's config. ERPO and
    Policy Split score the responses with that policy, so its adapter should be the one that
    sampled: take a live batch at the ``score`` phase, or a recorded step 0 with a fresh policy.

    ``methods``: names (default: every registered method); GRPO is always computed, first, as the
    reference. ``method_options``: method name -> the options to run it with (otherwise its
    defaults). The batch is not modified; a recorded batch (``RolloutBatch.from_frame``) gets the
    prompt ids of its rows from the policy."""
    names = checked_names(methods, method_options)
    options = {name: dict((method_options or {}).get(name, {})) for name in names}
    base = prepared(batch, ctx.policy)
    current = ctx.token_logprobs(base.prompt_ids, base.ids)[0].to(base.logprobs.device)
    built: dict[str, Method] = {}
    computed: dict[str, MethodCredit] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            built[name] = registry.get(name)(ctx.cfg.replace(method=name, method_options=options[name]))
            computed[name] = _method_credit(ctx, base, built[name], current)
        except ValueError as error:  # options this batch's run cannot take, or a batch the method cannot
            if name == REFERENCE:
                raise
            unavailable[name] = str(error)
    for name, result in computed.items():
        result.notes = notes(built[name], result, computed[REFERENCE], base, same)
    return Credit(base, computed, unavailable, ctx.policy.tokenizer)


def checked_names(names: Iterable[str] | None, method_options: Mapping | None) -> list[str]:
    """The methods to run, GRPO first; an unknown name is refused, with the names allowed."""
    known = registry.names()
    listed = list(known if names is None else ([names] if isinstance(names, str) else names))
    for argument, given in (("methods", listed), ("method_options", list(method_options or {}))):
        for name in given:
            if name not in known:
                raise ValueError(
                    f"{argument} names {name!r}, which is not allowed: a method, one of {', '.join(known)}"
                )
    for name, opts in (method_options or {}).items():
        if not isinstance(opts, Mapping):
            raise ValueError(f"method_options[{name!r}]={opts!r} is not allowed: a mapping of option name to value")
    return [REFERENCE, *dict.fromkeys(n for n in listed if n != REFERENCE)]


def prepared(batch: RolloutBatch, policy) -> RolloutBatch:
    """A copy of ``batch`` without any method's outputs, with the prompt ids each row was sampled
    after (a recorded batch holds none: tokenized again, in the row's mode)."""
    if batch.rewards is None:
        raise ValueError(
            "batch.rewards=None is not allowed: credit_by_method needs a scored batch "
            "(take it at a step's 'score' phase or later, or from a rollouts file)"
        )
    copy = batch.select(range(len(batch)))
    for name in METHOD_OUTPUTS:
        setattr(copy, name, None)
    copy.extras, copy.step_numbers = {}, {}
    if any(not ids for ids in copy.prompt_ids):
        systems = registry.modes()
        prompts = [copy.problems[g].prompt for g in copy.group.tolist()]
        copy.prompt_ids = [policy.format_prompts([p], systems.get(m))[0] for p, m in zip(prompts, copy.mode)]
    return copy


@dataclass
class _MethodContext:
    """The batch's engine as one method sees it here: that method's config, the run's history only
    for the run's own method (another method's hooks start theirs afresh), and no sampling."""

    inner: StepContext
    cfg: Any
    policy: Policy
    records: list[dict]

    @property
    def step_index(self) -> int:
        return self.inner.step_index

    def generator(self, *parts: int) -> torch.Generator:
        return self.inner.generator(*parts)

    def sample_group(
        self,
        problems: list[Problem],
        num_generations: int,
        system: str | None = None,
        mode: str = "normal",
        stage: int = 1,
        generator: torch.Generator | None = None,
    ) -> RolloutBatch:
        raise RuntimeError("credit_by_method works on a batch already sampled: a method's advantages never sample")

    def token_logprobs(
        self,
        prompt_ids: list[list[int]],
        ids: Tensor,
        adapter: Adapter = "policy",
        grad: bool = False,
        with_entropy: bool = False,
        with_complement: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        return self.inner.token_logprobs(prompt_ids, ids, adapter, grad, with_entropy, with_complement)


def _method_credit(ctx: StepContext, base: RolloutBatch, method: Method, current: Tensor) -> MethodCredit:
    """The method's advantages on its own copy of ``base``, and what of them reaches its loss."""
    batch = base.select(range(len(base)))
    view = _MethodContext(ctx, method.cfg, ctx.policy, ctx.records if method.name == ctx.cfg.method else [])
    method.advantages(view, batch)
    advantages, token_advantages = batch.computed_advantages, batch.token_advantages
    if token_advantages is None:
        raise RuntimeError(f"method {method.name!r} filled no token advantages")
    cfg = method.cfg
    settings = {**method.loss_settings(batch), "loss_type": cfg.loss_type, "num_iterations": cfg.num_iterations}
    kept = loss_mask(batch, settings) & batch.mask.bool()
    # what the update's first micro-batch hands the token loss (engine.update): its random stream too
    rows = torch.arange(len(batch))
    old = method.old_logprobs(batch, rows, current)
    logp = current.detach().clone().requires_grad_(True)
    generator = ctx.generator(ctx.step_index, 11, 0, 0)
    loss, clipped = method.token_loss(logp, old.detach(), token_advantages.float(), batch.mask, settings, generator)
    (grad,) = torch.autograd.grad((loss * kept).sum(), logp, allow_unused=True)
    zero = torch.zeros_like(current)
    credit = zero if grad is None else torch.where(kept, zero - grad, zero)  # 0 - g: no -0.0 where g is 0
    return MethodCredit(
        method=method.name,
        advantages=advantages.detach().float().clone(),
        token_advantages=token_advantages.detach().float().clone(),
        kept=kept,
        credit=credit.detach(),
        clipped=clipped.bool() & kept,
        loss_settings=settings,
        values=_own_values(batch),
    )


def _own_values(batch: RolloutBatch) -> dict[str, Tensor]:
    """A method's own per-token values: its gate, its extras that are not all 0, and the credit of
    each response in a context it also trains in (Policy Split), where that differs from its own."""
    values = {} if batch.gate is None else {"gate": batch.gate}
    values.update({k: v for k, v in batch.extras.items() if v.shape == batch.mask.shape and bool(v.abs().sum() > 0)})
    trained = batch.training_rows
    if trained is not None and trained.token_advantages is not None and batch.token_advantages is not None:
        for mode in dict.fromkeys(trained.mode):
            rows = [i for i, m in enumerate(trained.mode) if m == mode]
            in_context = trained.token_advantages[rows]
            row_for_row = len(rows) == len(batch) and torch.equal(trained.ids[rows], batch.ids)
            if row_for_row and not same(in_context, batch.token_advantages):
                values[f"in {mode} context"] = in_context
    return {k: v.detach().float().clone() for k, v in values.items()}
