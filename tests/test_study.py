"""``workbench compare``: a multi-seed study that resumes, its summary and its report."""

import json
import math

import pytest

from workbench.config import ConfigError
from workbench.run.store import RunStore
from workbench.studies.study import StudyPlan, final_evaluations, histories, mean_ci, run_study, summarize
from workbench.studies.study_report import write_study_report

SMALL = dict(num_prompts=2, num_generations=4, max_completion_length=12)


def small_plan(**changes):
    values = dict(methods=["grpo", "eepo"], seeds=[0, 1], steps=2, eval_prompts=2, eval_samples=4,
                  checkpoint_every=1, overrides=SMALL)
    return StudyPlan(**{**values, **changes})


def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(mean_ci([0.5])[1]) and math.isnan(mean_ci([])[0])


def test_plan_rejects_unknown_methods_and_fields_it_sets_itself():
    with pytest.raises(ConfigError, match="methods.*nope.*grpo"):
        small_plan(methods=["grpo", "nope"])
    with pytest.raises(ConfigError, match="overrides.seed"):
        small_plan(overrides={"seed": 3})


def test_study_runs_every_method_and_seed_then_summarizes(tmp_path):
    out = run_study(tmp_path / "study", small_plan(), progress=False)
    finals = final_evaluations(out)
    assert set(finals.method) == {"base", "grpo", "eepo"}
    assert set(finals[finals.method == "eepo"].seed) == {0, 1}
    assert set(finals.split) == {"test", "ood"}
    history = histories(out)
    assert sorted(history.groupby(["method", "seed"]).step.max()) == [1, 1, 1, 1]
    table = summarize(out)
    row = table[(table.method == "eepo") & (table.split == "test")].iloc[0]
    values = finals[(finals.method == "eepo") & (finals.split == "test")]["pass@1"]
    assert row["seeds"] == 2 and row["pass@1"] == pytest.approx(values.mean())
    grpo = table[(table.method == "grpo") & (table.split == "test")].iloc[0]
    if grpo["pass@1"] > 0:
        assert row["gain_vs_grpo"] == pytest.approx((row["pass@1"] - grpo["pass@1"]) / grpo["pass@1"])
        assert grpo["gain_vs_grpo"] == 0
    else:  # no relative change from a zero baseline
        assert math.isnan(row["gain_vs_grpo"])
    page = write_study_report(out).read_text()
    assert "pass@k on ood" in page and "Token entropy" in page and "eepo" in page
    # a larger evaluation made afterwards (`workbench eval RUN`) is read by entry="latest"
    RunStore(out / "base").add_evaluation("step-0", "test", {"pass@1": 0.25})
    for step, value in ((12, 0.75), (3, 0.5)):
        RunStore(out / "grpo-seed1").add_evaluation(f"step-{step}", "test", {"pass@1": value})
    latest = final_evaluations(out, entry="latest")
    assert sorted(zip(latest.method, latest.seed, latest["pass@1"])) == [("base", 0, 0.25), ("grpo", 1, 0.75)]
    with pytest.raises(ValueError, match="entry='last' is not an evaluation entry; allowed: final, latest"):
        final_evaluations(out, entry="last")


def test_an_evaluation_added_during_a_study_neither_finishes_a_run_nor_is_lost(tmp_path):
    out, plan = tmp_path / "study", small_plan(methods=["grpo"], seeds=[0], steps=1)
    run_dir = plan.run_dir(out, "grpo", 0)
    for directory, value in ((run_dir, 0.5), (out / "base", 0.25)):  # as `workbench eval` adds one
        directory.mkdir(parents=True)
        RunStore(directory).add_evaluation("step-0", "test", {"pass@1": value})
    run_study(out, plan, progress=False)
    for directory, value in ((run_dir, 0.5), (out / "base", 0.25)):
        evaluations = json.loads((directory / "eval.json").read_text())
        assert evaluations["step-0"] == {"test": {"pass@1": value}} and set(evaluations["final"]) == {"test", "ood"}
    assert [row["step"] for row in RunStore(run_dir).read_metrics()] == [0]  # trained, not taken as done


def test_a_stopped_study_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "study"
    plan = small_plan(methods=["grpo"], seeds=[0], steps=3)
    run_study(out, plan, progress=False)
    run_dir = plan.run_dir(out, "grpo", 0)
    first = (run_dir / "eval.json").read_text()
    # as if stopped after step 2's checkpoint: no evaluation, the last step's checkpoint gone
    (run_dir / "eval.json").unlink()
    for checkpoint in (run_dir / "checkpoints").glob("step-3"):
        for f in checkpoint.iterdir():
            f.unlink()
        checkpoint.rmdir()
    run_study(out, plan, progress=False)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads(first)  # seeded: the same run again


def test_a_different_plan_in_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "study"
    run_study(out, small_plan(methods=["grpo"], seeds=[0], steps=1), progress=False)
    with pytest.raises(ValueError, match=r"steps=2 is not allowed: the plan of the study .* \(steps=1\)"):
        run_study(out, small_plan(methods=["grpo"], seeds=[0], steps=2), progress=False)


def test_a_study_with_method_options_evaluates_the_base_model_without_them(tmp_path):
    # the options are EEPO's; the base model is evaluated by no method, so they must not apply
    plan = small_plan(methods=["eepo"], seeds=[0], steps=1, overrides={**SMALL, "method_options": {"alpha": 0.5}})
    out = run_study(tmp_path / "study", plan, progress=False)
    assert (out / "base" / "eval.json").exists() and (out / "eepo-seed0" / "eval.json").exists()
    from workbench.run.store import RunStore

    assert RunStore(out / "eepo-seed0").config().method_options == {"alpha": 0.5}
