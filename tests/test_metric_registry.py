"""The metric registry is the one list: every metric a short run of each method records is in it,
and nothing is in it that no run records."""

import json
import pickle

import pytest

from workbench import RunConfig, Trainer, methods
from workbench.metrics import registry
from workbench.metrics.registry import KL, PASS_AT_K, REWARD_MEAN, STAGE1_ACCURACY

TINY = dict(num_prompts=2, num_generations=4, max_completion_length=8, threads=1)
# options a method needs to train on 4 responses a prompt and to run its every part
OPTIONS = {"eepo": {"gate": "always"}, "poly_epo": {"set_size": 2}, "passk_training": {"k": 2}}


@pytest.fixture(scope="module")
def produced() -> dict[str, set[str]]:
    """What two steps of each method record, by method, and "evaluation": what evaluate returns."""
    out: dict[str, set[str]] = {}
    trainer = None
    for name in methods.names():
        trainer = Trainer(RunConfig(**TINY, method=name, method_options=OPTIONS.get(name, {})))
        advantage_numbers: set[str] = set()
        # an engine may record the advantage phase's numbers (the TRL backend merges them into its row)
        trainer.subscribe(lambda p: advantage_numbers.update(p.numbers) if p.name == "advantage" else None)
        trainer.step()
        trainer.step()
        out[name] = {key for record in trainer.records for key in record} | advantage_numbers
    out["evaluation"] = set(trainer.evaluate("test", n_samples=2, num_prompts=2))
    return out


def test_every_recorded_metric_is_in_the_registry(produced):
    for producer, names in produced.items():
        unknown = sorted(name for name in names if registry.find(name) is None)
        assert unknown == [], f"{producer} records metrics the registry does not list: {unknown}"


def test_the_registry_lists_nothing_that_no_run_records(produced):
    recorded = {registry.find(name) for names in produced.values() for name in names}
    assert sorted(set(registry.METRICS) - recorded) == []


def test_evaluation_metrics_say_so(produced):
    for name in produced["evaluation"]:
        assert "evaluation" in registry.get(name).produced_by, name
    assert {registry.find(name).group for name in produced["eepo"] - produced["grpo"]} == {"eepo"}


def test_a_metric_is_its_name():
    row = {REWARD_MEAN: 0.5, "kl": 0.1}
    assert row["reward_mean"] == 0.5 and row[KL] == 0.1
    assert json.loads(json.dumps(row)) == {"reward_mean": 0.5, "kl": 0.1}
    copied = pickle.loads(pickle.dumps(REWARD_MEAN))
    assert copied == "reward_mean" and type(copied) is str  # a process on the other side needs no registry


def test_lookups_units_and_panels():
    assert registry.find("pass@16") is PASS_AT_K and registry.pass_k("pass@16") == 16
    assert registry.pass_k("reward_mean") is None and registry.pass_at(4) == "pass@4"
    assert registry.title("entropy_mean") == "entropy_mean (nats)" and registry.title("my_column") == "my_column"
    assert KL.axis_title == "kl (nats/token)" and STAGE1_ACCURACY.label == "stage1 accuracy"
    assert STAGE1_ACCURACY in registry.panel_metrics("eepo")
    assert {g.name for g in registry.method_groups()} == {"eepo", "policy_split", "erpo", "poly_epo", "w_reinforce", "passk_training", "adaptive_entropy"}
    with pytest.raises(KeyError, match="metric='rewards_mean' is not one the workbench records"):
        registry.get("rewards_mean")
    with pytest.raises(ValueError, match="group='rewards' is not allowed"):
        registry.Metric("x", "", "rewards", "trainer", "")
    with pytest.raises(ValueError, match="produced_by='trl' is not allowed"):
        registry.Metric("x", "", "reward", "trl", "")
