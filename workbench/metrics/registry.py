"""The one list of every metric the workbench records: its name, unit, group, producer and meaning.

A metric is a row column of metrics.jsonl (``Trainer.records``) or a field of an evaluation result
(eval.json, ``Trainer.evaluate``). Each is declared once here as a constant, e.g. ``REWARD_MEAN``;
a ``Metric`` is a ``str`` equal to its name, so the constant is the key of a row
(``row[REWARD_MEAN]``) wherever the bare name was. The dashboard, the report, the sweep view and the
comparison read units, group titles and which method panels exist from here.

``produced_by`` says which part writes it: "trainer" (the step's bookkeeping), "rollout"
(``metrics.rollout_metrics`` of the scored batch), "update" (the loss and optimizer step), "method"
(a method's ``advantages`` numbers and ``extra_metrics``) and "evaluation" (``evaluate``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workbench.metrics.entropy import HIGH_ENTROPY_THRESHOLD

NATS = "nats"
NATS_PER_TOKEN = "nats/token"
SECONDS = "s"
TOKENS = "tokens"
FRACTION = "fraction"
PER_GROUP = "count per group"  # a mean over prompts of a count within each prompt's group
COUNT = "count"
NUMBER = ""  # a plain number: a reward, a loss, a norm

PRODUCERS = ("trainer", "rollout", "update", "method", "evaluation")


@dataclass(frozen=True)
class Group:
    """Metrics shown together. ``method`` groups belong to one method; the dashboard and the report
    give such a group a panel of its metrics in ``unit`` once a run records them."""

    name: str
    title: str
    unit: str
    method: bool = False


GROUPS = {
    g.name: g
    for g in (
        Group("reward", "reward and accuracy", FRACTION),
        Group("entropy", "token entropy", NATS),
        Group("pivots", "critical decision pivots", NATS),
        Group("diversity", "diversity per group", PER_GROUP),
        Group("length", "response length", TOKENS),
        Group("update", "the update: loss, KL to the reference, clipping", NUMBER),
        Group("sampling", "the sampler against the training pass: log-prob difference, importance ratio", NUMBER),
        Group("step", "the step: index, time, failures", NUMBER),
        Group("settings", "the live settings in force at the step (set_live changes them between steps)", NUMBER),
        Group("evaluation", "evaluation on a held-out split", FRACTION),
        Group("eepo", "EEPO: the two stages and the unlearning step", FRACTION, method=True),
        Group("policy_split", "Policy Split: the two modes", FRACTION, method=True),
        Group("erpo", "ERPO: the entropy gate and progress", FRACTION, method=True),
        Group("poly_epo", "Poly-EPO: sets and clusters", PER_GROUP, method=True),
        Group("adaptive_entropy", "adaptive entropy control: the coefficient", NUMBER, method=True),
        Group("w_reinforce", "W-REINFORCE: the responses pushed down", FRACTION, method=True),
        Group("passk_training", "Pass@k Training: the groups' pass@k", FRACTION, method=True),
    )
}


class Metric(str):
    """A metric's name (this string) with its ``unit``, ``group``, ``produced_by`` and ``help``.

    A name holding ``{k}`` is a family (``pass@{k}``): ``find("pass@4")`` finds it."""

    unit: str
    group: str
    produced_by: tuple[str, ...]
    help: str

    def __new__(cls, name: str, unit: str, group: str, produced_by: str | tuple[str, ...], help: str):
        produced_by = (produced_by,) if isinstance(produced_by, str) else tuple(produced_by)
        if group not in GROUPS:
            raise ValueError(f"group={group!r} is not allowed: one of {', '.join(GROUPS)}")
        if unknown := [p for p in produced_by if p not in PRODUCERS]:
            raise ValueError(f"produced_by={unknown[0]!r} is not allowed: one of {', '.join(PRODUCERS)}")
        metric = super().__new__(cls, name)
        metric.unit, metric.group, metric.produced_by, metric.help = unit, group, produced_by, help
        return metric

    def __reduce__(self):
        # pickled (Ray, multiprocessing) as the plain name it stands for
        return str, (str(self),)

    @property
    def label(self) -> str:
        """The name in words, for a legend: ``distinct_strategies`` -> "distinct strategies"."""
        return self.replace("_", " ")

    @property
    def axis_title(self) -> str:
        """The name with its unit, for an axis: ``entropy_mean (nats)`` (not ``title``, which would
        hide ``str.title``)."""
        return title(self)


# --- the trainer's bookkeeping ---------------------------------------------------------------------
STEP = Metric("step", COUNT, "step", "trainer", "the step's index, from 0")
STEP_TIME = Metric("step_time", SECONDS, "step", "trainer", "wall-clock seconds the whole step took")
NAN_SKIPS = Metric("nan_skips", COUNT, "step", "trainer", "updates skipped so far for a non-finite loss or gradient")
REWARD_ERRORS = Metric(
    "reward_errors", COUNT, "step", "trainer", "reward-function failures scored 0 in this step (reward_errors='zero')"
)
LEARNING_RATE = Metric("learning_rate", NUMBER, "update", "trainer", "the optimizer's learning rate at this step")
TEMPERATURE = Metric("temperature", NUMBER, "settings", "trainer", "the sampling temperature this step ran with")
TOP_P = Metric("top_p", FRACTION, "settings", "trainer", "the nucleus-sampling top_p this step ran with")
BETA = Metric("beta", NUMBER, "settings", "trainer", "the KL-to-reference weight this step's loss had")
ENTROPY_COEF = Metric(
    "entropy_coef",
    NUMBER,
    "settings",
    "trainer",
    "the entropy-bonus weight this step's loss had (a method may steer it)",
)

# --- the scored rollouts (metrics.rollout_metrics) ---------------------------------------------------
REWARD_MEAN = Metric("reward_mean", NUMBER, "reward", "rollout", "mean reward of the step's responses")
REWARD_STD = Metric("reward_std", NUMBER, "reward", "rollout", "standard deviation of the responses' rewards")
ACCURACY = Metric("accuracy", FRACTION, "reward", ("rollout", "evaluation"), "fraction of responses that succeed")
FRAC_REWARD_ZERO_STD = Metric(
    "frac_reward_zero_std",
    FRACTION,
    "reward",
    "rollout",
    "fraction of prompts whose responses all got the same reward: no GRPO signal (TRL's name)",
)
PARSED_FRACTION = Metric("parsed_fraction", FRACTION, "reward", "rollout", "responses with a parsable answer")
TRUNCATED_FRACTION = Metric(
    "truncated_fraction", FRACTION, "reward", "rollout", "fraction of responses cut off at the length limit, before EOS"
)
ENTROPY_MEAN = Metric("entropy_mean", NATS, "entropy", ("rollout", "evaluation"), "mean token entropy of the responses")
ENTROPY_P50 = Metric("entropy_p50", NATS, "entropy", "rollout", "median token entropy")
ENTROPY_P80 = Metric("entropy_p80", NATS, "entropy", "rollout", "80th percentile of token entropy")
ENTROPY_P95 = Metric("entropy_p95", NATS, "entropy", "rollout", "95th percentile of token entropy")
HIGH_ENTROPY_TOKEN_FRACTION = Metric(
    "high_entropy_token_fraction",
    FRACTION,
    "entropy",
    "rollout",
    f"fraction of tokens above {HIGH_ENTROPY_THRESHOLD} nats, the 80th percentile the 80/20 paper measured "
    "(a collapse drives it down)",
)
RESPONSE_LENGTH = Metric("response_length", TOKENS, "length", ("rollout", "evaluation"), "mean response length")
UNIQUE_ANSWERS = Metric(
    "unique_answers", PER_GROUP, "diversity", ("rollout", "evaluation"), "distinct parsed answers per prompt"
)
DISTINCT_STRATEGIES = Metric(
    "distinct_strategies", PER_GROUP, "diversity", "rollout", "distinct solution strategies among a prompt's responses"
)
DISTINCT_CORRECT_STRATEGIES = Metric(
    "distinct_correct_strategies",
    PER_GROUP,
    "diversity",
    ("rollout", "evaluation"),
    "distinct strategies among a prompt's correct responses",
)
PIVOTS_PER_RESPONSE = Metric("pivots_per_response", COUNT, "pivots", "rollout", "critical decision pivots per response")
ENTROPY_AT_PIVOTS = Metric("entropy_at_pivots", NATS, "pivots", "rollout", "mean token entropy at pivots")
ENTROPY_ELSEWHERE = Metric("entropy_elsewhere", NATS, "pivots", "rollout", "mean token entropy away from pivots")

# --- the update -------------------------------------------------------------------------------------
LOSS = Metric("loss", NUMBER, "update", "update", "the policy loss (NaN when the update was skipped)")
CLIP_FRACTION = Metric("clip_fraction", FRACTION, "update", "update", "fraction of tokens whose ratio the PPO clip cut")
KL = Metric("kl", NATS_PER_TOKEN, "update", "update", "KL of the policy to the reference (the base model), per token")
GRAD_NORM = Metric("grad_norm", NUMBER, "update", "update", "gradient norm before clipping")
SKIPPED = Metric("skipped", FRACTION, "update", "update", "1 when this step's update was skipped (non-finite loss)")
SAMPLING_LOGP_DIFFERENCE_MEAN = Metric(
    "sampling_logp_difference_mean",
    NATS,
    "sampling",
    "update",
    "mean |log-prob of the training pass - the sampler's| at the policy the update starts from",
)
SAMPLING_LOGP_DIFFERENCE_MAX = Metric(
    "sampling_logp_difference_max", NATS, "sampling", "update", "the largest such difference of a token"
)
IMPORTANCE_SAMPLING_RATIO_MIN = Metric(
    "importance_sampling_ratio_min",
    NUMBER,
    "sampling",
    "update",
    "smallest token ratio p(training pass) / p(sampler): 1 when the two agree",
)
IMPORTANCE_SAMPLING_RATIO_MEAN = Metric(
    "importance_sampling_ratio_mean", NUMBER, "sampling", "update", "mean token ratio p(training pass) / p(sampler)"
)
IMPORTANCE_SAMPLING_RATIO_MAX = Metric(
    "importance_sampling_ratio_max", NUMBER, "sampling", "update", "largest token ratio p(training pass) / p(sampler)"
)
ADVANTAGE_ABS_MEAN = Metric("advantage_abs_mean", NUMBER, "update", "method", "mean |advantage| of the responses")

# --- EEPO ----------------------------------------------------------------------------------------------
EEPO_STAGE1_ENTROPY = Metric("eepo_stage1_entropy", NATS, "eepo", "method", "mean token entropy of stage 1")
EEPO_WINDOW_MEAN = Metric("eepo_window_mean", NATS, "eepo", "method", "mean of the gate's window of stage-1 entropy")
EEPO_GATE = Metric("eepo_gate", FRACTION, "eepo", "method", "1 when the entropy gate let the unlearning step run")
EEPO_LOGP_DROP = Metric(
    "eepo_logp_drop", NATS_PER_TOKEN, "eepo", "method", "drop in the stage-1 tokens' log-prob from the unlearning step"
)
EEPO_KL_POLICY_ROLLOUT = Metric(
    "eepo_kl_policy_rollout", NATS_PER_TOKEN, "eepo", "method", "KL(policy || rollout model) after the unlearning step"
)
EEPO_UNLEARN_GRAD_NORM = Metric("eepo_unlearn_grad_norm", NUMBER, "eepo", "method", "the unlearning gradient's norm")
STAGE1_ACCURACY = Metric("stage1_accuracy", FRACTION, "eepo", "method", "mean reward of stage 1's responses")
STAGE2_ACCURACY = Metric("stage2_accuracy", FRACTION, "eepo", "method", "mean reward of stage 2's responses")
STAGE1_ENTROPY = Metric("stage1_entropy", NATS, "eepo", "method", "mean token entropy of stage 1's responses")
STAGE2_ENTROPY = Metric("stage2_entropy", NATS, "eepo", "method", "mean token entropy of stage 2's responses")
STAGE1_DISTINCT_ANSWERS = Metric("stage1_distinct_answers", PER_GROUP, "eepo", "method", "distinct answers in stage 1")
STAGE2_DISTINCT_ANSWERS = Metric("stage2_distinct_answers", PER_GROUP, "eepo", "method", "distinct answers in stage 2")
STAGE1_DISTINCT_STRATEGIES = Metric(
    "stage1_distinct_strategies", PER_GROUP, "eepo", "method", "distinct strategies in stage 1"
)
STAGE2_DISTINCT_STRATEGIES = Metric(
    "stage2_distinct_strategies", PER_GROUP, "eepo", "method", "distinct strategies in stage 2"
)
STAGE_OVERLAP_ANSWERS = Metric(
    "stage_overlap_answers", FRACTION, "eepo", "method", "Jaccard overlap of the two stages' answers"
)
STAGE_OVERLAP_STRATEGIES = Metric(
    "stage_overlap_strategies", FRACTION, "eepo", "method", "Jaccard overlap of the two stages' strategies"
)
STAGE2_NEW_STRATEGIES = Metric(
    "stage2_new_strategies", PER_GROUP, "eepo", "method", "strategies stage 2 found that stage 1 did not"
)

# --- Policy Split ------------------------------------------------------------------------------------
NORMAL_ACCURACY = Metric("normal_accuracy", FRACTION, "policy_split", "method", "mean reward of the normal mode")
HIGH_ENTROPY_ACCURACY = Metric(
    "high_entropy_accuracy", FRACTION, "policy_split", "method", "mean reward of the high-entropy mode"
)
NORMAL_ENTROPY = Metric("normal_entropy", NATS, "policy_split", "method", "mean token entropy of the normal mode")
HIGH_ENTROPY_ENTROPY = Metric(
    "high_entropy_entropy", NATS, "policy_split", "method", "mean token entropy of the high-entropy mode"
)
NORMAL_UNIQUE_CORRECT_ANSWERS = Metric(
    "normal_unique_correct_answers", PER_GROUP, "policy_split", "method", "distinct correct answers of the normal mode"
)
HIGH_ENTROPY_UNIQUE_CORRECT_ANSWERS = Metric(
    "high_entropy_unique_correct_answers",
    PER_GROUP,
    "policy_split",
    "method",
    "distinct correct answers of the high-entropy mode",
)
KL_NORMAL_TO_OTHER = Metric(
    "kl_normal_to_other",
    NATS_PER_TOKEN,
    "policy_split",
    "method",
    "KL(normal || high-entropy), k3 estimate on the normal mode's tokens",
)
KL_HIGH_ENTROPY_TO_OTHER = Metric(
    "kl_high_entropy_to_other",
    NATS_PER_TOKEN,
    "policy_split",
    "method",
    "KL(high-entropy || normal), k3 estimate on the high-entropy mode's tokens",
)
HE_BONUS_ABS_MEAN = Metric(
    "he_bonus_abs_mean",
    NUMBER,
    "policy_split",
    "method",
    "mean |bonus| the high-entropy mode's tokens add to the advantage",
)
NORMAL_PENALTY_ABS_MEAN = Metric(
    "normal_penalty_abs_mean",
    NUMBER,
    "policy_split",
    "method",
    "mean |penalty| of the normal-context term (eta2): the bonus, contexts swapped",
)

# --- ERPO ------------------------------------------------------------------------------------------------
ERPO_GATE_MEAN = Metric("erpo_gate_mean", FRACTION, "erpo", "method", "mean entropy-gate weight over valid tokens")
ERPO_GATE_AT_PIVOTS = Metric("erpo_gate_at_pivots", FRACTION, "erpo", "method", "mean gate weight at pivots")
ERPO_GATE_ELSEWHERE = Metric("erpo_gate_elsewhere", FRACTION, "erpo", "method", "mean gate weight away from pivots")
ERPO_PSI_ABS_MEAN = Metric("erpo_psi_abs_mean", NUMBER, "erpo", "method", "mean |psi|, the advantage modulation")
ERPO_PROGRESS_ABS_MEAN = Metric(
    "erpo_progress_abs_mean", NATS, "erpo", "method", "mean |log-prob progress| of the policy over the reference"
)
ERPO_TOKEN_ADVANTAGE_ABS_MEAN = Metric(
    "erpo_token_advantage_abs_mean", NUMBER, "erpo", "method", "mean |token advantage| after modulation"
)

# --- Poly-EPO and GRPO with a diversity bonus ---------------------------------------------------------------
POLY_SET_OBJECTIVE_MEAN = Metric("poly_set_objective_mean", NUMBER, "poly_epo", "method", "mean set objective")
POLY_DISTINCT_CLUSTERS = Metric(
    "poly_distinct_clusters", PER_GROUP, "poly_epo", "method", "distinct clusters among a prompt's responses"
)
DIV_BONUS_MEAN = Metric("div_bonus_mean", NUMBER, "poly_epo", "method", "mean diversity bonus added to the reward")

# --- adaptive entropy control ----------------------------------------------------------------------------
ADAPTIVE_ENTROPY_COEF = Metric(
    "adaptive_entropy_coef", NUMBER, "adaptive_entropy", "method", "the controller's entropy coefficient at the step"
)
ADAPTIVE_ENTROPY_MEASURED = Metric(
    "adaptive_entropy_measured", NATS, "adaptive_entropy", "method", "the step's mean token entropy the controller read"
)

# --- W-REINFORCE and Pass@k Training ----------------------------------------------------------------------
W_REINFORCE_NEGATIVE_FRACTION = Metric(
    "w_reinforce_negative_fraction", FRACTION, "w_reinforce", "method", "share of responses pushed down (incorrect)"
)
PASSK_GROUP_MEAN = Metric(
    "passk_group_mean", FRACTION, "passk_training", "method", "mean pass@k of the groups, the reward the method uses"
)

# --- evaluation ------------------------------------------------------------------------------------------
PASS_AT_K = Metric("pass@{k}", FRACTION, "evaluation", "evaluation", "unbiased pass@k: P(one of k samples succeeds)")
SAMPLES = Metric("samples", COUNT, "evaluation", "evaluation", "responses the evaluation sampled")
PROMPTS = Metric("prompts", COUNT, "evaluation", "evaluation", "distinct questions the evaluation sampled")
ACCURACY_CI95 = Metric("accuracy_ci95", FRACTION, "evaluation", "evaluation", "pass@1's 95% half-width, over prompts")
ACCURACY_CI95_SAMPLING = Metric(
    "accuracy_ci95_sampling", FRACTION, "evaluation", "evaluation", "pass@1's 95% half-width on these prompts"
)

METRICS: dict[str, Metric] = {m: m for m in globals().values() if isinstance(m, Metric)}
# TRL's log names of what the registry records under another name (loss, kl, grad_norm, learning_rate,
# entropy_coef and frac_reward_zero_std are the same names in both)
TRL_NAMES = {
    "clip_ratio/region_mean": CLIP_FRACTION,
    "completions/clipped_ratio": TRUNCATED_FRACTION,
    "sampling/sampling_logp_difference/mean": SAMPLING_LOGP_DIFFERENCE_MEAN,
    "sampling/sampling_logp_difference/max": SAMPLING_LOGP_DIFFERENCE_MAX,
    "sampling/importance_sampling_ratio/min": IMPORTANCE_SAMPLING_RATIO_MIN,
    "sampling/importance_sampling_ratio/mean": IMPORTANCE_SAMPLING_RATIO_MEAN,
    "sampling/importance_sampling_ratio/max": IMPORTANCE_SAMPLING_RATIO_MAX,
}
# names rows of older runs carry -> the name the metric has now (read as the new name)
RENAMED = {"zero_spread_groups": FRAC_REWARD_ZERO_STD}


def current_names(row: dict) -> dict:
    """A metrics row with a renamed metric under its current name (a row of an older run)."""
    if not RENAMED.keys() & row.keys():
        return row
    return {RENAMED.get(key, key): value for key, value in row.items()}


_FAMILIES = [(re.compile(re.escape(m).replace(r"\{k\}", r"(\d+)") + "$"), m) for m in METRICS.values() if "{k}" in m]


def pass_at(k: int) -> str:
    """The evaluation field of pass@k, e.g. ``pass@4``."""
    return PASS_AT_K.replace("{k}", str(k))


def pass_k(name: str) -> int | None:
    """The k of a pass@k field (``pass@4`` -> 4), None for any other name."""
    match = _FAMILIES[0][0].match(name) if find(name) is PASS_AT_K else None
    return int(match.group(1)) if match else None


def find(name: str) -> Metric | None:
    """The metric recorded as ``name`` (a family's member, ``pass@4``, finds the family), or None."""
    if name in METRICS:
        return METRICS[name]
    return next((m for pattern, m in _FAMILIES if pattern.match(name)), None)


def get(name: str) -> Metric:
    """``find``, raising for a name nothing records."""
    metric = find(name)
    if metric is None:
        raise KeyError(f"metric={name!r} is not one the workbench records; known: {', '.join(sorted(METRICS))}")
    return metric


def title(name: str) -> str:
    """An axis title: the name with its unit when the registry knows it (a column a user's reward
    function or an imported log added is shown by name alone)."""
    metric = find(name)
    return f"{name} ({metric.unit})" if metric is not None and metric.unit else name


def in_group(group: str) -> list[Metric]:
    """The metrics of ``group``, in declaration order."""
    if group not in GROUPS:
        raise KeyError(f"group={group!r} is not allowed: one of {', '.join(GROUPS)}")
    return [m for m in METRICS.values() if m.group == group]


def panel_metrics(group: str) -> list[Metric]:
    """What a method group's panel draws: its metrics in the group's unit."""
    return [m for m in in_group(group) if m.unit == GROUPS[group].unit]


def method_groups() -> list[Group]:
    """The groups that belong to one method: each gets a panel where a run records them."""
    return [g for g in GROUPS.values() if g.method]
