"""DiversityPanel, PolicySplitView, HyperparameterPanel and RunComparison, driven through their
Python state: steps of the embedded model, button clicks, and the figure data they leave."""

import math
import time

import numpy as np
import pytest
import torch

from widgets import DiversityPanel, HyperparameterPanel, PolicySplitView, RunComparison
from widgets._live import Throttle
from widgets.comparison import ema
from workbench import RunConfig, Trainer, methods, metrics
from workbench.config import OPTIONS, ConfigError
from workbench.run.store import RunStore

SMALL = dict(num_prompts=2, num_generations=4, max_completion_length=16)
HTML = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def trainer():
    return Trainer(RunConfig(**SMALL))


@pytest.fixture(scope="module")
def split_trainer():
    return Trainer(RunConfig(method="policy_split", **SMALL))


def announced_batches(trainer):
    """A list that collects the batch of every finished step, and the unsubscribe function."""
    seen = []
    return seen, trainer.subscribe(lambda phase: seen.append(phase.batch) if phase.name == "metrics" else None)


# --- DiversityPanel ------------------------------------------------------------------------------
def test_diversity_panel_records_distinct_n_and_draws_the_last_batch(trainer):
    batches, unsubscribe = announced_batches(trainer)
    trainer.step()
    panel = DiversityPanel(trainer, redraw_interval=0)  # starts from the last batch, then follows the steps
    trainer.step()
    unsubscribe()

    distinct = panel.distinct_figure.data
    assert list(distinct[0].x) == [0, 1]
    for trace, n in zip(distinct, panel.distinct_ns):
        expected = [np.mean([metrics.distinct_n([b.text[i] for i in rows.tolist()], n) for rows in b.group_rows()])
                    for b in batches]
        assert np.allclose(trace.y, expected)

    batch = trainer.last_batch
    for g in range(batch.num_groups):
        panel.prompt.value = g
        rows = batch.group_rows()[g].tolist()
        assert panel.group_rows() == rows
        heatmap = panel.similarity_figure.data[0]
        assert np.allclose(np.asarray(heatmap.z), metrics.pairwise_similarity([batch.text[i] for i in rows]))
        correct, incorrect = panel.strategy_figure.data
        assert sum(correct.y) == sum(float(batch.rewards[i]) > 0.5 for i in rows)
        assert sum(correct.y) + sum(incorrect.y) == len(rows)
        strategies = ["(unparsed)" if batch.strategies[i] is None else batch.strategies[i] for i in rows]
        assert sorted(correct.x) == sorted(set(strategies))
    panel.close()


def test_diversity_panel_evaluate_button_and_precomputed_curves(trainer):
    panel = DiversityPanel(trainer, redraw_interval=0)
    panel.n_samples.value, panel.num_prompts.value = 4, 2
    panel.evaluate_button.click()
    (label,) = panel.results
    assert set(panel.results[label]) == {"test", "ood"}
    assert len(panel.passk_figure.data) == 2
    for trace, split in zip(panel.passk_figure.data, ("test", "ood")):
        result = panel.results[label][split]
        assert list(trace.x) == [1, 2, 4]
        assert list(trace.y) == [result["pass@1"], result["pass@2"], result["pass@4"]]
    # the trainer's own evaluation is deterministic: the curve is what evaluate() returns
    assert panel.results[label]["test"] == trainer.evaluate("test", n_samples=4, num_prompts=2)
    assert "pass@1" in panel.evaluation_status.value

    base = {"test": {"pass@1": 0.1, "pass@2": 0.2, "pass@4": 0.3}, "ood": {"pass@1": 0.0, "pass@2": 0.1, "pass@4": 0.2}}
    panel.show_pass_at_k({"<b>base</b>": base})
    assert len(panel.passk_figure.data) == 4
    names = [t.name for t in panel.passk_figure.data]
    assert "&lt;b&gt;base&lt;/b&gt; · test" in names and not any("<b>" in n for n in names)
    colors = {t.line.color for t in panel.passk_figure.data}
    assert len(colors) == 2  # one colour per label, the split is the dash
    with pytest.raises(ValueError, match="no pass@k"):
        panel.show_pass_at_k({"bad": {"test": {"accuracy": 1.0}}})

    panel.n_samples.value = 0
    assert panel.evaluate() == {}
    assert "samples / prompt=0" in panel.evaluation_status.value and len(panel.passk_figure.data) == 4
    panel.close()


def test_diversity_panel_escapes_completions_and_strategies(trainer):
    if trainer.last_batch is None:
        trainer.step()
    batch = trainer.last_batch
    row = batch.group_rows()[0][0].item()
    batch.text[row], batch.strategies[row] = HTML, "<b>s</b>"
    panel = DiversityPanel(trainer, redraw_interval=0)
    panel.prompt.value = 0
    hover = " ".join(" ".join(r) for r in panel.similarity_figure.data[0].text)
    assert "&lt;img src=x onerror=alert(1)&gt;" in hover and "<img" not in hover
    labels = list(panel.strategy_figure.data[0].x) + list(panel.strategy_figure.data[1].x)
    assert "&lt;b&gt;s&lt;/b&gt;" in labels and "<b>s</b>" not in labels
    panel.close()


# --- PolicySplitView ------------------------------------------------------------------------------
def test_policy_split_view_follows_the_steps(split_trainer):
    view = PolicySplitView(split_trainer, redraw_interval=0)
    assert view.accuracy_figure.data[0].x in (None, ())
    split_trainer.step()
    split_trainer.step()
    history = split_trainer.history
    accuracy, kl = view.accuracy_figure.data, view.kl_figure.data
    assert list(accuracy[0].x) == [0, 1]
    assert np.allclose(accuracy[0].y, history["normal_accuracy"]) and np.allclose(
        accuracy[1].y, history["high_entropy_accuracy"])
    assert np.allclose(kl[0].y, history["kl_normal_to_other"]) and np.allclose(
        kl[1].y, history["kl_high_entropy_to_other"])

    batch = split_trainer.last_batch
    for trace, mode in zip(view.entropy_figure.data, ("normal", "high_entropy")):
        rows = [i for i, m in enumerate(batch.mode) if m == mode]
        assert rows and np.allclose(trace.x, batch.entropy[rows][batch.mask[rows].bool()].numpy())
        assert "nats" in view.entropy_figure.layout.xaxis.title.text

    view.prompt.value = 1
    for mode in ("normal", "high_entropy"):
        rows = view.example_rows(mode)
        assert rows and all(batch.mode[i] == mode and batch.group[i] == 1 for i in rows)
        row = rows[0]
        batch.text[row] = HTML + batch.text[row]
    view.poll()
    for mode in ("normal", "high_entropy"):
        shown = view.example_html[mode].value
        assert "&lt;img src=x onerror=alert(1)&gt;" in shown and "<img" not in shown
    view.close()


def test_policy_split_view_refuses_another_method(trainer):
    with pytest.raises(ValueError, match="method='grpo'.*policy_split"):
        PolicySplitView(trainer)


# --- HyperparameterPanel ---------------------------------------------------------------------------
def test_hyperparameter_panel_applies_live_values(split_trainer):
    panel = HyperparameterPanel(split_trainer)
    assert panel.fields["num_prompts"].input.disabled and "fork" in panel.fields["num_prompts"].input.tooltip
    assert panel.fields["model"].input.disabled and not panel.fields["learning_rate"].input.disabled
    assert set(panel.option_fields) == {"alpha", "eta", "kappa", "clamp_form", "eta2"}

    panel.fields["learning_rate"].input.value = 5e-4
    panel.option_fields["eta"].input.value = 0.05
    panel.apply_button.click()
    assert split_trainer.cfg.learning_rate == 5e-4
    assert all(group["lr"] == 5e-4 for group in split_trainer.optimizer.param_groups)
    assert split_trainer.cfg.method_options == {"eta": 0.05} and split_trainer.method.options["eta"] == 0.05
    assert "applied" in panel.status.value and f"acts from step {split_trainer.step_index}" in panel.status.value
    assert "records learning_rate" in panel.status.value  # the history shows when it acted

    before = split_trainer.cfg
    panel.fields["learning_rate"].input.value = 1e-4
    panel.fields["temperature"].input.value = 0.0  # invalid: nothing of the two is applied
    panel.apply_button.click()
    assert "temperature=0.0 is not allowed" in panel.status.value and "nothing applied" in panel.status.value
    assert split_trainer.cfg == before and split_trainer.optimizer.param_groups[0]["lr"] == 5e-4
    # the invalid field is marked where it is, with the message beside it, and only that one
    marked = [name for name, f in panel.fields.items() if "wb-invalid" in f.row._dom_classes]
    assert marked == ["temperature"] and "temperature=0.0 is not allowed" in panel.fields["temperature"].note.value
    assert panel.tabs.selected_index == 0  # the live tab, where temperature is
    panel.fields["temperature"].input.value = 1.0
    assert not any("wb-invalid" in f.row._dom_classes for f in panel.fields.values())
    assert panel.children.index(panel.status) < panel.children.index(panel.tabs)  # the actions come first

    panel.revert()
    panel.unlock.value = True
    panel.fields["num_prompts"].input.value = 3
    panel.apply_button.click()  # a fixed field needs a fork
    assert "num_prompts cannot change" in panel.status.value and split_trainer.cfg == before
    panel.unlock.value = False  # locking again restores the fixed fields
    assert panel.fields["num_prompts"].input.value == 2 and panel.changes() == {}


def test_hyperparameter_panel_follows_the_trainer_whoever_changes_it(trainer):
    panel = HyperparameterPanel(trainer)
    try:
        panel.fields["learning_rate"].input.value = 7e-4  # an edit pending in another control is kept
        before = trainer.cfg.temperature
        trainer.set_live(temperature=before + 0.2)  # in code, not through the panel
        deadline = time.monotonic() + 10
        while panel.fields["temperature"].get() != before + 0.2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the follower looks every FOLLOW_INTERVAL seconds
        assert panel.fields["temperature"].get() == pytest.approx(before + 0.2)
        assert "the trainer changed: temperature=" in panel.status.value
        assert panel.fields["learning_rate"].get() == 7e-4 and panel.sync() == []
    finally:
        panel.close()
        trainer.set_live(temperature=before)


def test_hyperparameter_panel_forks_with_the_same_adapter(trainer, tmp_path):
    if trainer.last_batch is None:
        trainer.step()
    forked = []
    panel = HyperparameterPanel(trainer, on_fork=forked.append, fork_dir=tmp_path)
    panel.unlock.value = True
    panel.fields["num_generations"].input.value = 6
    panel.fields["temperature"].input.value = 0.8
    panel.fork_button.click()
    (branch,) = panel.forks
    assert forked == [branch]
    assert branch.cfg.num_generations == 6 and branch.cfg.temperature == 0.8
    assert trainer.cfg.num_generations == 4 and trainer.cfg.temperature == 1.0
    assert branch.step_index == trainer.step_index and branch.store.dir == tmp_path / "fork-0"
    parent, child = trainer.policy.adapter_state(), branch.policy.adapter_state()
    assert parent.keys() == child.keys() and all(torch.equal(parent[k], child[k]) for k in parent)
    assert panel.fields["num_generations"].input.value == 4  # the controls show the parent again

    # the branch is shown, one click from training, and compared with its parent
    assert panel.tabs.selected_index == panel.tabs.children.index(panel.branches)
    (row,) = panel.branches.rows
    shown = row.box.children[0].value
    assert "fork 0" in shown and "num_generations=6" in shown and str(tmp_path / "fork-0") in shown
    start = branch.step_index
    row.steps.value = 2
    row.train_button.click()
    row._thread.join(timeout=120)
    assert branch.step_index == start + 2 and "trained to step" in row.status.value
    assert panel.branches.comparison.labels == ["parent", "fork 0"]
    panel.branches.comparison.poll()
    assert len(panel.branches.comparison.figure.data[2].x) == len(branch.history)  # the fork's raw curve

    panel.fields["num_generations"].input.value = 1
    panel.fork_button.click()
    assert "num_generations=1 is not allowed" in panel.status.value and len(panel.forks) == 1
    panel.close()


def test_hyperparameter_panel_edits_a_config():
    panel = HyperparameterPanel(RunConfig(method="eepo"))
    assert set(panel.fields) == {f for f in RunConfig.__dataclass_fields__ if f != "method_options"}
    assert not any(f.input.disabled for f in panel.fields.values())
    panel.fields["temperature"].input.value = 0.7
    panel.fields["epsilon_high"].input.value = "0.28"
    panel.option_fields["gate"].input.value = "always"
    cfg = panel.config
    assert (cfg.temperature, cfg.epsilon_high, cfg.method_options) == (0.7, 0.28, {"gate": "always"})

    panel.fields["top_p"].input.value = 1.5
    assert "top_p=1.5 is not allowed" in panel.status.value
    with pytest.raises(ConfigError, match="top_p"):
        panel.config
    panel.fields["top_p"].input.value = 1.0
    panel.fields["epsilon_high"].input.value = "wide"
    with pytest.raises(ConfigError, match="epsilon_high"):
        panel.config
    panel.fields["epsilon_high"].input.value = ""

    clip = panel.option_fields["unlearn_max_grad_norm"]  # a number, or empty for no clipping
    assert clip.input.value == "0.3" and "empty: the paper's plain step; else a number in (0.0, inf)" in clip.input.tooltip
    clip.input.value = ""
    assert panel.config.method_options == {"gate": "always", "unlearn_max_grad_norm": None}
    clip.input.value = "0.5"
    assert panel.config.method_options == {"gate": "always", "unlearn_max_grad_norm": 0.5}
    clip.input.value = "tight"
    with pytest.raises(ConfigError, match=r"method_options.unlearn_max_grad_norm='tight'.*a number in \(0.0, inf\), or None"):
        panel.config
    clip.input.value = "-1"
    with pytest.raises(ConfigError, match="unlearn_max_grad_norm=-1.0"):
        panel.config
    clip.input.value = "0.3"

    panel.fields["method"].input.value = "policy_split"  # the options follow the method
    assert set(panel.option_fields) == {"alpha", "eta", "kappa", "clamp_form", "eta2"}
    assert panel.config.method_options == {}
    panel.fields["num_generations"].input.value = 5
    assert "an even number" in panel.status.value
    with pytest.raises(TypeError, match="RunConfig or Trainer"):
        HyperparameterPanel({"method": "grpo"})


NUMERIC = sorted(name for name, o in OPTIONS.items() if o.kind in ("int", "float"))


@pytest.mark.parametrize("name", NUMERIC)
def test_declared_ranges_are_the_ones_validate_enforces(name):
    r = OPTIONS[name]

    def allowed(value):
        try:
            RunConfig(**{name: value})
        except ConfigError as error:
            assert error.field == name
            return False
        return True

    if r.kind == "int":
        assert allowed(int(r.low)) and not allowed(int(r.low) - 1)
        return
    eps = 1e-9
    if math.isfinite(r.low):
        assert allowed(r.low) != r.low_open and not allowed(r.low - eps)
        assert allowed(r.low + eps)
    if math.isfinite(r.high):
        assert allowed(r.high) != r.high_open and not allowed(r.high + eps)
        assert allowed(r.high - eps)
    else:
        assert allowed(1e12)
    if not math.isfinite(r.low):
        assert allowed(-1e12)


@pytest.mark.parametrize("name", sorted(name for name, o in OPTIONS.items() if o.kind == "choice"))
def test_declared_choices_are_the_ones_validate_enforces(name):
    for choice in OPTIONS[name].choices:
        RunConfig(**{name: choice})
    with pytest.raises(ConfigError, match=name):
        RunConfig(**{name: "bogus"})


def test_every_control_says_what_its_declaration_allows():
    panel = HyperparameterPanel(RunConfig(method="eepo"))
    for name, field in {**panel.fields, **{f"method_options.{k}": f for k, f in panel.option_fields.items()}}.items():
        option = OPTIONS.get(name) or methods.get("eepo").OPTIONS[name.removeprefix("method_options.")]
        assert option.help in field.input.tooltip, name
    assert panel.fields["learning_rate"].input.tooltip.startswith("AdamW learning rate")
    assert "a number in [0.0, 1.0]" in panel.fields["learning_rate"].row.children[1].value
    assert "empty: the paper&#x27;s plain step" in panel.option_fields["unlearn_max_grad_norm"].row.children[1].value
    assert panel.fields["pivot_z_threshold"].row.children[1].value.endswith(">any number</span>")  # not [-inf, inf)
    assert panel.fields["gradient_checkpointing"].input.layout.width == "auto"  # its name is never cut off


def test_controls_follow_the_declarations_hints():
    from workbench.methods.poly_epo import CLUSTERERS

    panel = HyperparameterPanel(RunConfig(method="poly_epo", target_modules=["q_proj", "v_proj"]))
    assert panel.fields["device"].input.options == OPTIONS["device"].suggestions  # offered; cuda:1 allowed too
    panel.fields["device"].set("cuda:1")
    assert panel.fields["device"].get() == "cuda:1"
    assert panel.fields["task"].input.options == OPTIONS["task"].suggestions
    assert panel.fields["target_modules"].input.value == "q_proj, v_proj"
    assert panel.fields["target_modules"].get() == ["q_proj", "v_proj"]
    clusterer = panel.option_fields["clusterer"]
    assert clusterer.input.options == CLUSTERERS

    def by_length(texts, problem):
        return [len(t) for t in texts]

    clusterer.set(by_length)  # a callable set in code is shown by name and kept
    assert clusterer.input.value == "by_length" and clusterer.get() is by_length


def test_choosing_another_method_shows_its_settings_and_records_them():
    panel = HyperparameterPanel(RunConfig())
    panel.fields["method"].input.value = "entropy_bonus"
    assert panel.fields["entropy_coef"].get() == 0.01 and panel.config.entropy_coef == 0.01
    panel.fields["entropy_coef"].input.value = "0"  # an explicit 0 switches the bonus off, and is kept
    assert panel.config.entropy_coef == 0.0
    panel.fields["method"].input.value = "clip_higher"  # 0 is not entropy_bonus's own setting: kept
    assert (panel.config.entropy_coef, panel.config.epsilon_high) == (0.0, 0.28)
    panel.fields["method"].input.value = "grpo"
    assert panel.fields["epsilon_high"].get() is None and panel.changes() == {}


# --- RunComparison ---------------------------------------------------------------------------------
def test_run_comparison_overlays_a_run_directory_and_a_trainer(trainer, tmp_path):
    if trainer.last_batch is None:
        trainer.step()
    run = Trainer(RunConfig(**SMALL), out_dir=tmp_path / "run")
    run.step()
    comparison = RunComparison([trainer, tmp_path / "run"])
    assert comparison.labels == ["grpo · run 0", "grpo · run"]
    assert comparison.metric.value == "reward_mean" and "entropy_mean" in comparison.metric.options
    smoothed = comparison.figure.data[1::2]
    assert [t.name for t in smoothed] == comparison.labels
    assert len({t.line.color for t in smoothed}) == 2
    on_disk = RunStore(tmp_path / "run").read_metrics()
    assert list(smoothed[1].x) == [r["step"] for r in on_disk]
    assert list(smoothed[1].y) == [r["reward_mean"] for r in on_disk]
    assert list(smoothed[0].y) == trainer.history["reward_mean"].tolist()

    comparison.metric.value = "entropy_mean"
    assert list(smoothed[0].y) == trainer.history["entropy_mean"].tolist()
    assert comparison.figure.layout.yaxis.title.text == "entropy_mean (nats)"
    comparison.smoothing.value = 0.5
    assert np.allclose(smoothed[0].y, ema(trainer.history["entropy_mean"].tolist(), 0.5))

    closed = DiversityPanel(run, redraw_interval=0)
    closed.close()
    run.step()
    comparison.reload_button.click()
    assert len(smoothed[1].x) == 2
    assert len(closed.distinct_records) == 1  # a closed panel no longer listens to the trainer
    comparison.close()  # stops following the run directory
    with pytest.raises(TypeError, match="source=int is not allowed"):
        RunComparison([3])


def test_ema_and_throttle():
    assert ema([1.0, 3.0, float("nan"), 5.0], 0.5) == [1.0, 2.0, pytest.approx(math.nan, nan_ok=True), 3.5]
    drawn = []
    throttle = Throttle(lambda: drawn.append(time.monotonic()), interval=0.05)
    for _ in range(5):
        throttle()
    assert len(drawn) == 1  # the rest wait for the interval
    time.sleep(0.2)
    assert len(drawn) == 2  # ... and the latest state is drawn once it has passed
