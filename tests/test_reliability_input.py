"""Reliability (issue 8): bad input gets a clear error naming the field, the value and what is
allowed, and a failing user reward function is named; nothing already written is lost.
Rows of docs/reliability.md; the embedded model, 2 prompts x 4 responses x 8 tokens."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
from reliability_common import code_sum, tiny_config, tree_digest

from workbench import PRESETS, ConfigError, PolicyLoadError, RunConfig, Trainer, methods, tasks
from workbench.run.store import RunStore
from workbench.tasks import Countdown, DatasetTask, RewardFunctionError, RewardFunctionTask

# =============================================================================================
# Bad input gets a clear error
# =============================================================================================
# (wrong type, out of range) for every RunConfig field; None where a field has no range
BAD_VALUES = {
    "model": (123, "  "),
    "task": (5, "chess"),
    "method": (["grpo"], "ppo"),
    "seed": ("0", -1),
    "num_prompts": (2.0, 0),
    "num_generations": ("8", 1),
    "max_completion_length": (None, 0),
    "temperature": ("hot", 0.0),
    "top_p": ([0.5], 1.5),
    "top_k": (1.5, -1),
    "learning_rate": ("1e-3", 2.0),
    "weight_decay": (None, -0.1),
    "max_grad_norm": ("1", 0.0),
    "num_iterations": (1.5, 0),
    "gradient_accumulation_steps": ("2", 0),
    "micro_batch_tokens": (1.5, 0),
    "loss_type": (3, "mean"),
    "scale_rewards": (True, "std"),
    "epsilon": ("0.2", 0.0),
    "epsilon_high": ("x", -0.1),
    "beta": ("0", -0.1),
    "entropy_coef": ("0", -1.0),  # None is the method's setting
    "top_entropy_quantile": ("x", 0.0),
    "lora_r": (8.0, 0),
    "lora_alpha": ("16", 0),
    "lora_dropout": ("0", 1.0),
    "target_modules": (7, []),
    "track_kl": ("yes", 1),
    "pivot_z_threshold": ("1", math.inf),
    "save_rollouts": ("no", 0),
    "report_to": (7, "mlflow"),
    "checkpoint_every": (2.5, -1),
    "device": (0, "tpu"),
    "dtype": (32, "int8"),
    "gradient_checkpointing": ("true", 1),
    "threads": ("4", -1),
    "check_memory": ("yes", 1),
    "method_options": ([("alpha", 1)], {"no_such_option": 1}),
}
FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
FLOAT_FIELDS = [f.name for f in dataclasses.fields(RunConfig) if "float" in str(f.type)]


def test_every_config_field_has_bad_values_below():
    assert set(FIELDS) <= set(BAD_VALUES), f"add bad values for {sorted(set(FIELDS) - set(BAD_VALUES))}"


@pytest.mark.parametrize("field,value", [(f, v) for f in BAD_VALUES if f in FIELDS for v in BAD_VALUES[f]],
                         ids=lambda x: repr(x)[:20])
def test_a_bad_value_of_any_field_names_the_field_the_value_and_what_is_allowed(field, value):
    with pytest.raises(ConfigError) as info:
        RunConfig(**{field: value})
    error = info.value
    assert error.field.split(".")[0] == field and error.allowed.strip()
    shown = (repr(error.value), f"{error.value!r} ({type(error.value).__name__})")  # the type when it is the problem
    assert str(error) in [f"{error.field}={v} is not allowed: {error.allowed}" for v in shown]
    assert error.value is value or error.field == "method_options.no_such_option"


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        RunConfig(**{field: value})


def test_a_field_reassigned_after_construction_is_checked_by_the_trainer():
    cfg = tiny_config()
    cfg.num_generations = 1  # dataclass fields can be reassigned; Trainer validates again
    with pytest.raises(ConfigError, match="num_generations=1"):
        Trainer(cfg)


@pytest.mark.parametrize("method", ["eepo", "policy_split"])
@pytest.mark.parametrize("groups", [3, 5])
def test_odd_group_size_is_refused_for_two_halves(method, groups):
    with pytest.raises(ConfigError, match=f"num_generations={groups} is not allowed: an even number") as info:
        RunConfig(method=method, num_generations=groups)
    assert info.value.field == "num_generations"


@pytest.mark.parametrize("set_size", [4, 5, 1])
def test_poly_epo_set_size_must_be_smaller_than_the_group(set_size):
    with pytest.raises(ConfigError, match=f"set_size={set_size} is not allowed: an integer from 2 to "
                                          "num_generations - 1 = 3") as info:
        RunConfig(method="poly_epo", num_generations=4, method_options={"set_size": set_size})
    assert info.value.field == "method_options.set_size"


NUMERIC_OPTIONS = [(name, key) for name in methods.names() for key, default in methods.get(name).defaults.items()
                   if isinstance(default, (int, float)) and not isinstance(default, bool)]


@pytest.mark.parametrize("method,key", NUMERIC_OPTIONS)
@pytest.mark.parametrize("value", [math.nan, "0.1", True])
def test_numeric_method_options_refuse_nan_text_and_bools(method, key, value):
    with pytest.raises(ConfigError) as info:
        RunConfig(method=method, num_generations=8, method_options={key: value})
    assert info.value.field == f"method_options.{key}"


def test_unknown_method_task_and_preset_list_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        RunConfig(method="ppo")
    assert all(name in str(info.value) for name in methods.names())
    with pytest.raises(ConfigError) as info:
        RunConfig(task="chess")
    assert all(name in str(info.value) for name in tasks.names())
    with pytest.raises(ValueError, match="allowed: coins, countdown"):
        tasks.get("chess")
    with pytest.raises(ConfigError) as info:
        RunConfig.preset("nope")
    assert all(name in str(info.value) for name in PRESETS)
    with pytest.raises(ConfigError, match=r"method_options.alpha.*its options: none"):
        RunConfig(method="grpo", method_options={"alpha": 0.3})


@pytest.mark.parametrize("model", ["/no/such/model", "./no-such-model", "~/no-such-model"])
def test_a_missing_model_path_fails_before_the_run_directory_exists(tmp_path, model):
    with pytest.raises(PolicyLoadError, match=re.escape(f"model path {model!r} does not exist")):
        Trainer(tiny_config(model=model), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_dataset_without_the_named_column_lists_the_columns(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "solution": str(i)}) + "\n" for i in range(5)))
    with pytest.raises(ValueError, match=r"column 'prompt' is missing.*available columns: 'question', 'solution'"):
        Trainer(tiny_config(task=str(data)), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"column 'answer' is missing.*'question', 'solution'"):
        DatasetTask.from_file(data, prompt_column="question")


def test_yaml_with_unknown_keys_or_bad_syntax_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_generation: 8\nlearning_rat: 1e-3\n")
    with pytest.raises(ConfigError, match="learning_rat.*an unknown key; valid keys:.*learning_rate") as info:
        RunConfig.from_yaml(path)
    assert all(name in str(info.value) for name in FIELDS)
    path.write_text("num_generations: [8\n")
    with pytest.raises(ConfigError, match=r"config=.*c.yaml.*valid YAML"):
        RunConfig.from_yaml(path)
    path.write_text("- grpo\n")
    with pytest.raises(ConfigError, match="a YAML mapping"):
        RunConfig.from_yaml(path)


def test_a_failing_config_never_touches_an_existing_run(run_copy, tmp_path, capsys):
    from workbench.cli import main

    before = tree_digest(run_copy)
    attempts = [
        lambda: Trainer(tiny_config(), out_dir=run_copy),  # valid, but the directory holds a run
        lambda: Trainer(tiny_config(), out_dir=run_copy, num_generations=3, method="eepo"),
        lambda: Trainer.resume(run_copy, temperature=-1.0),
        lambda: Trainer.resume(run_copy, method_options={"alpha": 0.3}),
        lambda: Trainer(RunConfig.from_yaml(_write(tmp_path / "bad.yaml", "top_p: 2\n")), out_dir=run_copy),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigError):
            attempt()
        assert tree_digest(run_copy) == before
    assert main(["train", "--out", str(run_copy), "--set", "num_generations=1"]) == 2
    assert "num_generations=1 is not allowed" in capsys.readouterr().err
    assert main(["train", "--out", str(run_copy), "--steps", "1"]) == 2
    assert "holds a run (its last checkpoint is at step 2)" in capsys.readouterr().err
    assert tree_digest(run_copy) == before

    trainer = Trainer.resume(run_copy)  # rewrites metrics.jsonl (same rows): digest again after it
    after_resume = tree_digest(run_copy)
    for bad in ({"temperature": -1.0}, {"num_generations": 8}, {"method_options": {"alpha": 1}}):
        with pytest.raises(ConfigError):
            trainer.set_live(**bad)
    with pytest.raises(ConfigError, match="out_dir"):
        trainer.fork(out_dir=run_copy, learning_rate=1e-3)
    with pytest.raises(ConfigError, match="fork"):
        trainer.fork(out_dir=tmp_path / "branch", lora_r=4)
    assert tree_digest(run_copy) == after_resume and not (tmp_path / "branch").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# =============================================================================================
# User reward functions that fail
# =============================================================================================
def raises(prompts, completions, **_):
    raise ValueError("cannot score this")


def wrong_count(prompts, completions, **_):
    return [1.0] * (len(completions) - 1)


def returns_nan(prompts, completions, **_):
    return [math.nan] * len(completions)


@pytest.mark.parametrize("func,problem,row", [(raises, "raised ValueError: cannot score this", 0),
                                              (wrong_count, "returned 7 values for 8 completions", 7),
                                              (returns_nan, "returned nan, not a number", 0)])
def test_a_failing_reward_function_names_the_prompt_and_completion(tmp_path, func, problem, row):
    trainer = Trainer(tiny_config(), reward_funcs=func, out_dir=tmp_path / "run")
    seen = []
    trainer.subscribe(lambda phase: seen.append(phase.batch) if phase.name == "sample" else None)
    adapter = trainer.policy.adapter_state()
    with pytest.raises(RewardFunctionError) as info:
        trainer.step()
    message, batch = str(info.value), seen[0]
    assert f"reward function {func.__name__!r} {problem}" in message
    assert f"first offending prompt: {batch.problems[int(batch.group[row])].prompt!r}" in message
    assert f"completion: {batch.text[row]!r}" in message and "reward_errors='zero'" in message
    assert all(torch.equal(adapter[k], v) for k, v in trainer.policy.adapter_state().items())
    assert trainer.step_index == 0 and RunStore(tmp_path / "run").read_metrics() == []


def fails_on_odd_sums(prompts, completions, **_):
    if any(code_sum(c) % 2 for c in completions):
        raise ValueError("odd")
    return [1.0] * len(completions)


def nan_on_multiples_of_three(prompts, completions, **_):
    return [math.nan if code_sum(c) % 3 == 0 else 0.5 for c in completions]


def test_reward_errors_zero_scores_failures_0_and_counts_them_in_metrics_jsonl(tmp_path):
    trainer = Trainer(tiny_config(), reward_funcs=[fails_on_odd_sums, nan_on_multiples_of_three],
                      reward_errors="zero", out_dir=tmp_path / "run")
    result = trainer.step()
    sums = [code_sum(t) for t in result.batch.text]
    failed = [s % 2 == 1 or s % 3 == 0 for s in sums]
    expected = sum(s % 2 for s in sums) + sum(s % 3 == 0 for s in sums)  # one per function and completion
    assert 0 < sum(failed) < len(sums), "some completions should fail and some not"
    assert result.metrics["reward_errors"] == expected
    assert [float(r) for r in result.batch.rewards] == [0.0 if bad else 1.5 for bad in failed]
    assert RunStore(tmp_path / "run").read_metrics()[0]["reward_errors"] == expected
    assert trainer.step().metrics["reward_errors"] >= 0  # per step, not cumulative
    assert trainer.task.error_count >= expected
    wrapped = RewardFunctionTask(Countdown(), wrong_count, reward_errors="zero")
    problems = Countdown().prompts("train", 3)
    assert [s.reward for s in wrapped.score_batch(problems, ["a", "b", "c"])] == [0.0, 0.0, 0.0]
    assert wrapped.error_count == 3


