"""Poly-EPO (arXiv 2604.17654; predecessor arXiv 2509.25424): set-level RL, and the GRPO+DIV baseline.

Poly-EPO scores SETS of n responses out of the N sampled for a prompt with the
polychromic objective

    f(S) = mean_{y in S} r(y) x d(S),   d(S) = |U| / n if |U| > 1 else 0,

U the distinct strategy clusters of S other than the degenerate cluster (100: unparsed).
Over all C(N, n) sets (N=8, n=4: 70), or ``num_sets`` of them sampled without replacement,
with the baseline f^ = mean f over those sets, the marginal set advantage of response y is

    A(y) = sum_{S containing y} (f(S) - f^)       (reduce="sum", default)
         = that sum / #{S containing y}           (reduce="mean": 35 sets for 8/4)

and every token of y gets A(y). With full enumeration and "sum" the expected policy
gradient is M grad E[f], M = C(N, n) - C(N-1, n-1) (35 for 8/4). With K sets sampled out of
C = C(N, n), the expected "sum" advantage is exactly (K - 1) / (C - 1) times the enumerated one
(the sample baseline costs the -1), so the gradient stays unbiased up to that constant.

The advantage is not divided by any std, so ``scale_rewards`` does not act on Poly-EPO.
The paper's loss settings are clip 0.20 / 0.28, KL 0, no entropy bonus and a constant length
normalisation. ``epsilon_high`` (0.28) and ``loss_type`` ("dr_grpo") are filled in when the
config leaves them None (``CONFIG_DEFAULTS``), and the run records them; KL (the RunConfig's
default) and the entropy bonus (every method's but entropy_bonus's) are 0.

GRPO+DIV shapes the reward instead: d_i = (N / |cluster(y_i)| - 1) / (N - 1), 1 for a
response alone in its cluster, 0 when all share one, and the advantage is GRPO's group
advantage of r_i + div_coef d_i. Degenerate (unparsed) responses get d_i = 0, as the
polychromic objective never counts their cluster.

Strategy clusters come from ``strategy_clusters``: the built-in tasks' programmatic
strategy labels (default), the parsed answers (any task), or a user callable
``(texts, problem) -> list[int]`` such as an LM judge, given directly or by a name made
with ``register_clusterer`` (a name, unlike a function, can be saved in config.yaml).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import ClassVar

import torch
from torch import Tensor

from workbench import core
from workbench.methods.base import Method
from workbench.options import ConfigError, MethodOptions, anything, choice, integer, number

REDUCE = ("sum", "mean")
CLUSTERERS = ("strategy", "answer")
DEGENERATE_CLUSTER = 100
# above this many sets, full enumeration costs more than it is worth: sample num_sets instead
MAX_ENUMERATED_SETS = 1_000_000
# the GRPO+DIV metric reports the polychromic objective over (at most this many) sets of this size
DIAGNOSTIC_SET_SIZE = 4
DIAGNOSTIC_MAX_SETS = 10_000
_REGISTERED: dict[str, Callable] = {}


def register_clusterer(name: str, fn: Callable) -> None:
    """Make ``fn(texts, problem) -> list[int]`` usable as ``method_options["clusterer"] = name``."""
    if name in CLUSTERERS:
        raise ValueError(f"clusterer name {name!r} is built in; choose another name")
    if not callable(fn):
        raise TypeError(f"clusterer {fn!r} is not callable")
    _REGISTERED[name] = fn


@lru_cache(maxsize=8)
def _all_sets(num_responses: int, set_size: int) -> Tensor:
    """[C(N, n), n] indices of every n-subset of range(N), lexicographic (built once per (N, n))."""
    return torch.tensor(list(itertools.combinations(range(num_responses), set_size)), dtype=torch.long)


def set_indices(num_responses: int, set_size: int, num_sets: int | None = None, seed: int = 0) -> Tensor:
    """[S, n] response indices of the sets: all C(N, n) when ``num_sets`` is None or at least
    C(N, n), else ``num_sets`` distinct sets drawn uniformly without replacement."""
    if not 1 <= set_size <= num_responses:
        raise ValueError(f"set_size={set_size!r} must be an integer from 1 to the group size {num_responses}")
    total = math.comb(num_responses, set_size)
    if num_sets is None or num_sets >= total:
        if total > MAX_ENUMERATED_SETS:
            raise ValueError(
                f"num_sets=None would enumerate C({num_responses}, {set_size}) = {total} sets "
                f"(limit {MAX_ENUMERATED_SETS}); pass num_sets to sample that many"
            )
        return _all_sets(num_responses, set_size)
    if num_sets < 1:
        raise ValueError(f"num_sets={num_sets!r} must be None or an integer >= 1")
    generator = torch.Generator().manual_seed(seed)
    if total <= MAX_ENUMERATED_SETS:
        return _all_sets(num_responses, set_size)[torch.randperm(total, generator=generator)[:num_sets]]
    # too many sets to list: draw random subsets and drop repeats (rare at this size)
    chosen: dict[tuple[int, ...], None] = {}
    while len(chosen) < num_sets:
        draws = torch.rand(num_sets, num_responses, generator=generator).argsort(-1)[:, :set_size].sort(-1).values
        for row in draws.tolist():
            chosen.setdefault(tuple(row))
    return torch.tensor(list(chosen)[:num_sets], dtype=torch.long)


def polychromic_objective(
    rewards: Tensor, clusters: Tensor, index: Tensor, degenerate_cluster: int = DEGENERATE_CLUSTER
) -> Tensor:
    """f [S] of each set (rows of ``index`` [S, n]) of ONE group's ``rewards`` and ``clusters`` [N]."""
    n = index.shape[1]
    members = torch.as_tensor(clusters, dtype=torch.long)[index].sort(-1).values
    first = torch.ones_like(members, dtype=torch.bool)
    first[:, 1:] = members[:, 1:] != members[:, :-1]
    distinct = (first & (members != degenerate_cluster)).sum(-1)
    d = torch.where(distinct > 1, distinct.double() / n, torch.zeros_like(distinct, dtype=torch.float64))
    return rewards.double()[index].mean(-1) * d


def _marginal(rewards: Tensor, clusters, index: Tensor, reduce: str, degenerate_cluster: int) -> tuple[Tensor, Tensor]:
    """(advantages [N], f [S]) of one group over the sets in ``index``."""
    if reduce not in REDUCE:
        raise ValueError(f"reduce={reduce!r} is not allowed; use one of {', '.join(REDUCE)}")
    f = polychromic_objective(rewards, clusters, index, degenerate_cluster)
    n, N = index.shape[1], rewards.shape[0]
    flat = index.reshape(-1)
    adv = torch.zeros(N, dtype=torch.float64).index_add_(0, flat, (f - f.mean()).repeat_interleave(n))
    if reduce == "mean":
        count = torch.bincount(flat, minlength=N)
        adv = torch.where(count > 0, adv / count.clamp(min=1), torch.zeros_like(adv))
    return adv.float(), f


def marginal_set_advantages(
    rewards: Tensor,
    clusters: Sequence[int] | Tensor,
    set_size: int = 4,
    reduce: str = "sum",
    degenerate_cluster: int = DEGENERATE_CLUSTER,
    num_sets: int | None = None,
    seed: int = 0,
) -> Tensor:
    """Marginal set advantages [N] of ONE group's responses (``rewards`` [N], ``clusters`` [N]);
    a response in none of the sampled sets gets 0."""
    rewards = torch.as_tensor(rewards, dtype=torch.float64).cpu()
    if len(clusters) != rewards.shape[0]:
        raise ValueError(f"{len(clusters)} clusters for {rewards.shape[0]} rewards; give one cluster per response")
    index = set_indices(rewards.shape[0], set_size, num_sets, seed)
    return _marginal(rewards, clusters, index, reduce, degenerate_cluster)[0]


def diversity_bonus(clusters: Sequence[int] | Tensor, degenerate_cluster: int = DEGENERATE_CLUSTER) -> Tensor:
    """GRPO+DIV's d_i = (N / |cluster(y_i)| - 1) / (N - 1) for ONE group [N]; 0 for the degenerate cluster."""
    c = torch.as_tensor(clusters, dtype=torch.long)
    N = c.shape[0]
    if N < 2:
        return torch.zeros(N)
    size = (c[:, None] == c[None, :]).sum(-1).float()
    d = (N / size - 1) / (N - 1)
    return torch.where(c == degenerate_cluster, torch.zeros_like(d), d)


def _relabel(labels: Sequence, degenerate_cluster: int) -> list[int]:
    """Small distinct ints per distinct label, in order of first appearance, skipping the
    degenerate id; None -> the degenerate cluster."""
    ids: dict = {}
    free = (i for i in itertools.count() if i != degenerate_cluster)
    out = []
    for x in labels:
        if x is not None and x not in ids:
            ids[x] = next(free)
        out.append(degenerate_cluster if x is None else ids[x])
    return out


def strategy_clusters(
    batch, rows, clusterer: str | Callable = "strategy", degenerate_cluster: int = DEGENERATE_CLUSTER
) -> list[int]:
    """Cluster ids of ``rows`` (one group) of a scored batch.

    "strategy": the task's strategy labels; "answer": the parsed answers; a callable
    ``(texts, problem) -> list[int]`` (None or ``degenerate_cluster`` = degenerate).
    Unparsed responses (label None) fall in the degenerate cluster.
    """
    rows = [int(i) for i in torch.as_tensor(rows).reshape(-1).tolist()]
    clusterer = _REGISTERED.get(clusterer, clusterer) if isinstance(clusterer, str) else clusterer
    if callable(clusterer):
        problem = batch.problems[int(batch.group[rows[0]])]
        result = list(clusterer([batch.text[i] for i in rows], problem))
        if len(result) != len(rows):
            raise ValueError(
                f"the clusterer returned {len(result)} cluster ids for {len(rows)} texts; give one per text"
            )
        return [degenerate_cluster if c is None else int(c) for c in result]
    if clusterer not in CLUSTERERS:
        raise ValueError(
            f"clusterer={clusterer!r} is not allowed; use one of {', '.join(_clusterer_names())} or a callable"
        )
    labels = batch.strategies if clusterer == "strategy" else batch.answers
    if labels is None:
        field = "strategies" if clusterer == "strategy" else "answers"
        raise ValueError(f"clusterer={clusterer!r} needs a scored batch: batch.{field} is None")
    return _relabel([labels[i] for i in rows], degenerate_cluster)


def _clusterer_names() -> list[str]:
    return [*CLUSTERERS, *sorted(_REGISTERED)]


def _validate_clustering(o) -> None:
    if not callable(o["clusterer"]) and o["clusterer"] not in _clusterer_names():
        raise ConfigError(
            "method_options.clusterer",
            o["clusterer"],
            f"one of {', '.join(_clusterer_names())}, a "
            "name given to register_clusterer, or a callable (texts, problem) -> list[int]",
        )


def _clustering_options() -> dict:
    """The clustering options Poly-EPO and GRPO+DIV share."""
    return {
        "clusterer": anything(
            "strategy",
            "what makes two responses the same: strategy, answer, a registered "
            "name, or a callable (texts, problem) -> list[int]",
            "strategy, answer, a name given to register_clusterer, or a callable",
            suggestions=CLUSTERERS,
        ),
        "degenerate_cluster": integer(
            DEGENERATE_CLUSTER, "the cluster id of responses that count for nothing (unparsed)", low=-math.inf
        ),
    }


def clusters_are_answers(batch, clusterer) -> bool:
    """Whether ``batch``'s clusters are its parsed answers: chosen (``"answer"``), or a task's
    strategy labels that equal its answers (reasoning_gym's and data files' do)."""
    if clusterer == "answer":
        return True
    if clusterer != "strategy" or batch.strategies is None or batch.answers is None:
        return False
    labelled = [(s, a) for s, a in zip(batch.strategies, batch.answers) if s is not None]
    return bool(labelled) and all(s == a for s, a in labelled)


class _SaysWhenClustersAreAnswers:
    """Where one answer is right, answer clusters make a set diverse only through wrong answers:
    a set of right responses scores 0 and, once most responses are right, the wrong ones get
    the larger advantages (a group of 3 right and 1 wrong, sets of 3: -1/9 each and +1/3). Said
    once per run; docs/methods.md and docs/RESULTS.md's real-model study show what follows."""

    name: ClassVar[str]
    said_clusters_are_answers = False

    def say_once_if_clusters_are_answers(self, batch, clusterer) -> None:
        if self.said_clusters_are_answers or not clusters_are_answers(batch, clusterer):
            return
        self.said_clusters_are_answers = True
        warnings.warn(
            f"{self.name}: the clusters are the parsed answers (this task labels a completion's strategy "
            "with its answer), so where a question has one right answer only wrong answers make a set "
            "diverse, and once most responses are right the wrong ones get the larger advantages. Use a "
            "task with several right strategies (countdown, coins) or method_options.clusterer = a "
            "function that reads the reasoning (register_clusterer).",
            UserWarning,
            stacklevel=3,
        )


def _distinct_clusters(clusters: list[int], degenerate_cluster: int) -> int:
    return len(set(clusters) - {degenerate_cluster})


class PolyEPO(_SaysWhenClustersAreAnswers, Method):
    name = "poly_epo"
    # the paper's: its clip-higher acts only where a batch gets more than one update (two here, as
    # the paper's two mini-batch steps per batch)
    CONFIG_DEFAULTS = {"loss_type": "dr_grpo", "epsilon_high": 0.28, "num_iterations": 2}
    OPTIONS = {
        "set_size": integer(4, "n: responses per set (2 to num_generations - 1)", low=2),
        "reduce": choice("sum", "combine a response's advantage over the sets containing it", REDUCE),
        "num_sets": integer(None, "sets sampled per group", low=1, optional=True, none_means="all C(N, n) sets"),
        **_clustering_options(),
    }

    @classmethod
    def validate(cls, cfg) -> None:
        o = MethodOptions(cfg.method_options, cls.OPTIONS)
        N, n = cfg.num_generations, o["set_size"]
        # first, to name the group's own bound: n = N leaves one set, equal to its own baseline,
        # so every advantage is 0 (M = 0)
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n < N:
            raise ConfigError(
                "method_options.set_size",
                n,
                f"an integer from 2 to num_generations - 1 = {N - 1} "
                "(set_size = num_generations gives one set and zero advantages)",
            )
        super().validate(cfg)
        k = o["num_sets"]
        if k is None and math.comb(N, n) > MAX_ENUMERATED_SETS:
            raise ConfigError(
                "method_options.num_sets",
                k,
                f"an integer: C({N}, {n}) = {math.comb(N, n)} sets are "
                f"too many to enumerate (limit {MAX_ENUMERATED_SETS})",
            )
        _validate_clustering(o)

    def advantages(self, ctx, batch):
        o = self.options
        self.say_once_if_clusters_are_answers(batch, o["clusterer"])
        adv = torch.zeros(len(batch))
        objective, distinct = [], []
        for g, rows in enumerate(batch.group_rows()):
            clusters = strategy_clusters(batch, rows, o["clusterer"], o["degenerate_cluster"])
            # seeded by (seed, step, group) alone, so a resumed run draws the same sets
            seed = core.derive_seed(self.cfg.seed, ctx.step_index, g)
            index = set_indices(len(rows), o["set_size"], o["num_sets"], seed)
            group_adv, f = _marginal(
                batch.rewards[rows].double().cpu(), clusters, index, o["reduce"], o["degenerate_cluster"]
            )
            adv[rows.cpu()] = group_adv
            objective.append(float(f.mean()))
            distinct.append(_distinct_clusters(clusters, o["degenerate_cluster"]))
        batch.advantages = adv.to(batch.mask.device)
        batch.token_advantages = batch.advantages[:, None] * batch.mask
        batch.step_numbers["set_rl"] = advantage_numbers = {
            "poly_set_objective_mean": sum(objective) / len(objective),
            "poly_distinct_clusters": sum(distinct) / len(distinct),
        }
        return {"advantage_abs_mean": float(batch.advantages.abs().mean()), **advantage_numbers}

    def extra_metrics(self, ctx, batch):
        return dict(batch.step_numbers["set_rl"])


class GRPODiv(_SaysWhenClustersAreAnswers, Method):
    name = "grpo_div"
    OPTIONS = {
        "div_coef": number(0.5, "lambda: weight of the diversity bonus d_i added to the reward", low=0.0),
        **_clustering_options(),
    }

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        o = MethodOptions(cfg.method_options, cls.OPTIONS)
        _validate_clustering(o)

    def advantages(self, ctx, batch):
        o = self.options
        self.say_once_if_clusters_are_answers(batch, o["clusterer"])
        bonus = torch.zeros(len(batch))
        objective, distinct = [], []
        for rows in batch.group_rows():
            clusters = strategy_clusters(batch, rows, o["clusterer"], o["degenerate_cluster"])
            bonus[rows.cpu()] = diversity_bonus(clusters, o["degenerate_cluster"])
            index = set_indices(len(rows), min(DIAGNOSTIC_SET_SIZE, len(rows)), DIAGNOSTIC_MAX_SETS)
            f = polychromic_objective(batch.rewards[rows].double().cpu(), clusters, index, o["degenerate_cluster"])
            objective.append(float(f.mean()))
            distinct.append(_distinct_clusters(clusters, o["degenerate_cluster"]))
        bonus = bonus.to(batch.rewards.device)
        shaped = batch.rewards.float() + o["div_coef"] * bonus
        batch.advantages = batch.ungrouped(core.group_advantages(batch.grouped(shaped), self.cfg.scale_rewards))
        batch.token_advantages = batch.advantages[:, None] * batch.mask
        batch.step_numbers["set_rl"] = advantage_numbers = {
            "div_bonus_mean": float(bonus.mean()),
            "poly_set_objective_mean": sum(objective) / len(objective),
            "poly_distinct_clusters": sum(distinct) / len(distinct),
        }
        return {"advantage_abs_mean": float(batch.advantages.abs().mean()), **advantage_numbers}

    def extra_metrics(self, ctx, batch):
        return dict(batch.step_numbers["set_rl"])
