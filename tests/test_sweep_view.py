"""SweepView (issue 21, item 3) on a real sweep: one small ``workbench sweep`` run on a local Ray per
module, then the widget's Python state checked against the files the sweep wrote (trials.json,
each trial's metrics.jsonl and eval.json), while following a directory that appears, changes and
is caught half-written."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from workbench.studies.sweep import STATUSES, Dimension, SweepPlan

pytest.importorskip("ray.tune", reason="SweepView's tests run a sweep: the [ray] extra")

from widgets import SweepView  # noqa: E402
from widgets.style import TRIAL_STATES  # noqa: E402
from widgets.sweep_axes import setting_axis, setting_labels  # noqa: E402

QUIET = 3600  # seconds between timer polls: the tests poll() themselves


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A finished sweep: two trials (a categorical and a log-uniform setting), three steps each."""
    from workbench.integrations.ray_tune import run_sweep

    plan = SweepPlan(space={"method": "grid:grpo,eepo", "learning_rate": "loguniform:1e-3:3e-2"},
                     overrides={"num_prompts": 2, "num_generations": 4, "max_completion_length": 12},
                     steps=3, scheduler="fifo", eval_prompts=2, eval_samples=4)
    return run_sweep(tmp_path_factory.mktemp("sweep") / "sweep", plan, progress=False)


@pytest.fixture
def view(sweep):
    view = SweepView(sweep, interval=QUIET)
    yield view
    view.close()


def trials_on_disk(sweep: Path) -> list[dict]:
    return json.loads((sweep / "trials.json").read_text())["trials"]


def metrics_on_disk(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def evaluation_on_disk(run: Path) -> dict:
    return json.loads((run / "eval.json").read_text())["final"]["test"]


def text(widget) -> str:
    return re.sub(r"<[^>]+>", "", widget.value.split("</style>")[-1]).replace("&#x27;", "'")


def axes(view) -> dict:
    return {d.label: d for d in view.parallel.data[0].dimensions}


def test_the_table_lists_every_trial_with_its_status_steps_metric_settings_and_pass_at_1(sweep, view):
    trials = trials_on_disk(sweep)
    assert [name for _, name in view.table.options] == [t["name"] for t in trials]
    heading = text(view.header).split()
    assert heading == ["trial", "status", "steps", "reward_mean", "method", "learning_rate", "pass@1"]
    for (label, _), trial in zip(view.table.options, trials):
        cells = label.split()
        assert trial["status"] == "finished"
        assert cells[:3] == [trial["name"], "finished", f"{trial['step'] + 1}/3"]
        assert float(cells[3]) == pytest.approx(trial["metric"], rel=1e-3)
        assert cells[4] == trial["params"]["method"]
        assert float(cells[5]) == pytest.approx(trial["params"]["learning_rate"], rel=1e-3)
        assert float(cells[6]) == pytest.approx(evaluation_on_disk(sweep / trial["name"])["pass@1"], abs=1e-3)
    assert text(view.status).startswith("0 running · 2 finished · 0 stopped · 0 failed (of 2 trials)")
    assert "the sweep's process has ended" in text(view.status) and view.error is None


def test_parallel_coordinates_carry_the_settings_and_the_results_read_from_the_files(sweep, view):
    trials, axis = trials_on_disk(sweep), axes(view)
    assert list(axis) == ["method", "learning_rate (log)", "reward_mean (last)", "entropy_mean (test, nats)",
                          "pass@4 (test)"]
    method = axis["method"]
    assert [method.ticktext[int(v)] for v in method.values] == [t["params"]["method"] for t in trials]
    assert list(method.ticktext) == ["grpo", "eepo"]  # every value of the grid, in the plan's order
    rate = axis["learning_rate (log)"]  # log10 of the value over the searched range, labelled in values
    assert [10 ** v for v in rate.values] == pytest.approx([t["params"]["learning_rate"] for t in trials])
    assert list(rate.range) == pytest.approx([-3, math.log10(3e-2)])
    assert rate.ticktext[0] == "0.001" and rate.ticktext[-1] == "0.03"
    assert list(axis["reward_mean (last)"].values) == [t["metric"] for t in trials]
    evaluations = [evaluation_on_disk(sweep / t["name"]) for t in trials]
    assert list(axis["entropy_mean (test, nats)"].values) == [e["entropy_mean"] for e in evaluations]
    assert list(axis["pass@4 (test)"].values) == [e["pass@4"] for e in evaluations]
    line = view.parallel.data[0].line
    assert list(line.color) == [STATUSES.index("finished")] * 2


def test_stopped_and_failed_trials_are_drawn_apart_and_a_failure_says_why(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    trials = trials_on_disk(copy)
    stopped = trials[1]
    stopped.update(status="stopped", step=0, metric=metrics_on_disk(copy / stopped["name"])[0]["reward_mean"])
    (copy / stopped["name"] / "eval.json").unlink()  # a trial stopped early is not evaluated
    failed = {"name": "trial-002", "params": {"method": "grpo", "learning_rate": 0.002}, "status": "failed",
              "step": None, "metric": None, "error": "ValueError: <b>the model diverged</b>"}
    (copy / "trials.json").write_text(json.dumps({"trials": [*trials, failed]}))
    view = SweepView(copy, interval=QUIET)
    try:
        assert text(view.status).startswith("0 running · 1 finished · 1 stopped · 1 failed (of 2 trials)")
        assert list(view.parallel.data[0].line.color) == [STATUSES.index(s) for s in ("finished", "stopped", "failed")]
        entropy = axes(view)["entropy_mean (test, nats)"]
        none = entropy.tickvals[list(entropy.ticktext).index("none")]
        assert entropy.values[1:] == (none, none) and entropy.values[0] > none  # evaluated only when finished
        reward = axes(view)["reward_mean (last)"]
        assert reward.values[1] == stopped["metric"] and reward.ticktext[0] == "none" and reward.values[2] == \
            reward.tickvals[0]
        assert "failed" in text(view.key) and TRIAL_STATES["failed"] in view.key.value
        view.table.value = ("trial-002",)
        assert "trial-002 failed: ValueError: <b>the model diverged</b>" in text(view.detail).replace("&lt;", "<") \
            .replace("&gt;", ">")
        assert "<b>the model" not in view.detail.value  # model and trial text is escaped
        assert [list(t.x) for t in view.curves.data] == [[]]  # it never wrote a step
    finally:
        view.close()


def test_selecting_trials_draws_their_curves_from_their_metrics_files(sweep, view):
    names = [name for _, name in view.table.options]
    assert view.table.value == (names[0],)  # the first trial is selected when the table fills
    view.table.value = tuple(names)
    rows = {name: metrics_on_disk(sweep / name) for name in names}
    assert [t.name for t in view.curves.data] == names
    for trace, name in zip(view.curves.data, names):
        assert list(trace.x) == [r["step"] for r in rows[name]]
        assert list(trace.y) == [r["reward_mean"] for r in rows[name]]
    assert len({t.line.color for t in view.curves.data}) == 2
    assert view.curves.layout.yaxis.title.text == "reward_mean"
    view.curve_metric.value = "entropy_mean"
    assert [list(t.y) for t in view.curves.data] == [[r["entropy_mean"] for r in rows[n]] for n in names]
    assert view.curves.layout.yaxis.title.text == "entropy_mean (nats)"
    view.table.value = (names[1],)
    assert [t.name for t in view.curves.data] == [names[1]]
    assert view.curve_metric.value == "entropy_mean"  # kept across selections


def test_opening_a_trial_shows_its_token_view(sweep, view):
    names = [name for _, name in view.table.options]
    view.table.value = (names[1],)
    assert view.open_button.description == f"token view of {names[1]}" and not view.open_button.disabled
    view.open_button.click()
    tokens = view.token_view
    assert tokens in view.token_box.children
    assert tokens.feed.source.dir == sweep / names[1]
    assert tokens.shown_step == max(int(p.stem.split("-")[1]) for p in (sweep / names[1] / "rollouts").glob("*"))
    assert "wb-token" in tokens.strips.value
    again = view.open_trial(names[0])
    assert again.feed.source.dir == sweep / names[0] and tokens.feed._stop is None  # the first one closed
    with pytest.raises(ValueError, match=r"name='trial-9' is not allowed: a trial of this sweep \(trial-000"):
        view.open_trial("trial-9")
    view.table.value = ()
    assert view.open_button.disabled


def test_a_sweep_that_starts_later_is_waited_for_then_followed_and_a_bad_read_is_shown(sweep, tmp_path):
    later = tmp_path / "later"
    view = SweepView(later, interval=QUIET)
    try:
        assert text(view.status) == f"waiting for the sweep to start (no trials in {later / 'trials.json'} yet)"
        assert view.table.options == () and not later.exists()  # a reader creates nothing
        later.mkdir()
        for name in ("sweep.json", "trials.json"):  # synced from elsewhere: the trials' files come later
            shutil.copy2(sweep / name, later / name)
        view.poll()
        names = [t["name"] for t in trials_on_disk(sweep)]
        assert [name for _, name in view.table.options] == names
        assert "pass@4 (test)" not in axes(view)
        for name in names:
            shutil.copytree(sweep / name, later / name)
        view.poll()
        assert list(axes(view)["pass@4 (test)"].values) == [evaluation_on_disk(later / n)["pass@4"] for n in names]
        assert [list(t.y) for t in view.curves.data] == [[r["reward_mean"] for r in metrics_on_disk(later / names[0])]]
        good = (later / "trials.json").read_text()
        (later / "trials.json").write_text(good[: len(good) // 2])  # caught half-written
        with pytest.raises(ValueError, match="trials.json could not be read"):
            view.poll()
        assert "ValueError: trials.json could not be read" in text(view.status) and "color:#D55E00" in \
            view.status.value
        assert len(view.table.options) == 2  # what was read before stays
        (later / "trials.json").write_text(good)
        view.poll()
        assert view.error is None and "could not be read" not in text(view.status)
    finally:
        view.close()


def test_the_timer_follows_without_being_asked(sweep, tmp_path):
    later = tmp_path / "later"
    view = SweepView(later, interval=0.1)
    try:
        shutil.copytree(sweep, later)  # in whatever order the files come: eval.json may come after trials.json
        deadline = time.monotonic() + 30
        drawn = ["pass@4 (test)", "reward_mean (last)"]
        while not (all(a in axes(view) for a in drawn) and view.curves.data) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(view.table.options) == 2 and [t.name for t in view.curves.data] == ["trial-000"]
        assert list(axes(view)["pass@4 (test)"].values) == [evaluation_on_disk(later / n)["pass@4"]
                                                           for n in ("trial-000", "trial-001")]
    finally:
        view.close()


def test_axes_of_uniform_randint_choice_and_method_option_settings():
    assert setting_labels(["learning_rate", "method_options.alpha"]) == {"learning_rate": "learning_rate",
                                                                        "method_options.alpha": "alpha"}
    assert setting_labels(["temperature", "method_options.temperature"])["method_options.temperature"] == \
        "method_options.temperature"  # a short name that would read as the RunConfig field is not used
    alpha = setting_axis(Dimension("method_options.alpha", "uniform", low=0.1, high=0.5), "alpha",
                         pd.Series([0.2, 0.3]))
    assert alpha == {"label": "alpha", "values": [0.2, 0.3], "range": [0.1, 0.5]}
    window = setting_axis(Dimension("k", "randint", low=2, high=8), "k", pd.Series([2, 8]))
    assert window["values"] == [2.0, 8.0] and window["range"] == [2, 8]
    method = setting_axis(Dimension("method", "choice", values=("eepo", "erpo")), "method",
                          pd.Series(["erpo", "<grpo>"]))
    assert method["ticktext"] == ["eepo", "erpo", "&lt;grpo&gt;"] and method["values"] == [1, 2]
    wide = setting_axis(Dimension("learning_rate", "loguniform", low=1e-5, high=1e-1), "learning_rate",
                        pd.Series([1e-3]))
    assert wide["ticktext"] == ["1e-05", "0.0001", "0.001", "0.01", "0.1"] and wide["values"] == [-3.0]


def test_bad_arguments_say_what_is_allowed(tmp_path):
    with pytest.raises(TypeError, match=r"sweep_dir=int is not allowed: a sweep directory \(str or Path\)"):
        SweepView(3)
    with pytest.raises(ValueError, match=r"interval=0 is not allowed: seconds > 0"):
        SweepView(tmp_path, interval=0)


def test_importing_the_widgets_and_the_sweep_view_loads_no_ray():
    code = "import sys, widgets; widgets.SweepView; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
