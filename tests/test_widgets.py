"""TrainingDashboard, TokenView and EEPOStepper through their Python state: buttons pressed via
the API, figure data against the trainer's records, colours against the batch's values."""

import dataclasses
import re
import time

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

from widgets import EEPOStepper, TokenView, TrainingDashboard  # noqa: E402
from widgets.thinned_history import ThinnedHistory  # noqa: E402
from workbench import RunConfig, Trainer  # noqa: E402
from workbench.config import ConfigError  # noqa: E402
from workbench.metrics import fit_reward_entropy, registry  # noqa: E402
from workbench.metrics.registry import GROUPS, STAGE1_ACCURACY, STAGE2_ACCURACY  # noqa: E402

SMALL = dict(num_prompts=2, num_generations=4, max_completion_length=16)


@pytest.fixture(scope="module")
def trainer():
    return Trainer(RunConfig(**SMALL))


@pytest.fixture
def dashboard(trainer):
    dash = TrainingDashboard(trainer, steps=3, min_interval=0)
    yield dash
    dash.close()


def column(trainer, name):
    return [r[name] for r in trainer.records]


# --- TrainingDashboard ------------------------------------------------------------------------
def test_steps_add_the_recorded_points(trainer, dashboard):
    before = len(trainer.records)
    dashboard.step()
    dashboard.buttons["step"].click()  # the button runs in the background
    assert dashboard.wait(timeout=120)
    assert len(trainer.records) == before + 2
    for name in ("reward_mean", "entropy_mean", "kl", "clip_fraction", "distinct_strategies", "unique_answers"):
        trace = dashboard.trace(name)
        np.testing.assert_allclose(trace.y, column(trainer, name))
        np.testing.assert_array_equal(trace.x, column(trainer, "step"))
    upper, lower = dashboard.trace("entropy_p95"), dashboard.trace("entropy_p50")
    assert lower.fill == "tonexty"  # the p50-p95 band fills up to the p95 trace drawn just before it
    entropy_fig = dashboard.figures["entropy"]
    assert list(entropy_fig.data).index(upper) + 1 == list(entropy_fig.data).index(lower)
    np.testing.assert_allclose(upper.y, column(trainer, "entropy_p95"))
    np.testing.assert_allclose(lower.y, column(trainer, "entropy_p50"))
    assert f"step {trainer.step_index}" in dashboard.status.value
    assert dashboard.state == "idle"


def test_step_phase_advances_one_phase_and_stop_discards_the_step(trainer, dashboard):
    adapter = {k: v.clone() for k, v in trainer.policy.adapter_state().items()}
    step, records = trainer.step_index, len(trainer.records)
    names = [dashboard.step_phase().name for _ in range(4)]
    assert names == ["sample", "score", "advantage", "update"]
    assert trainer.step_index == step and dashboard.buttons["stop"].disabled is False
    moved = trainer.policy.adapter_state()
    assert any(not torch.equal(moved[k], adapter[k]) for k in adapter)  # the update phase moved it
    dashboard.stop()
    assert dashboard.state == "stopped" and trainer.step_index == step and len(trainer.records) == records
    restored = trainer.policy.adapter_state()
    assert all(torch.equal(restored[k], adapter[k]) for k in adapter)


def test_a_background_run_pauses_within_one_phase(trainer, dashboard):
    start = dashboard.feed.source.phase_count
    dashboard.start(50)
    deadline = time.monotonic() + 120
    while dashboard.feed.source.phase_count < start + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    dashboard.pause()
    at_pause = dashboard.feed.source.phase_count
    assert dashboard.wait(timeout=120)
    assert dashboard.feed.source.phase_count <= at_pause + 1  # only the phase in flight finished
    settled = dashboard.feed.source.phase_count
    time.sleep(0.5)
    assert dashboard.feed.source.phase_count == settled and dashboard.state == "paused"
    assert trainer.step_index < 50
    dashboard.step()  # resumes the unfinished step and finishes it
    assert dashboard.state == "idle"


def buttons_enabled(dashboard):
    return {name for name, button in dashboard.buttons.items() if not button.disabled}


@pytest.mark.parametrize("how", ["pause", "step"])
def test_the_buttons_come_back_after_a_background_run_ends(trainer, dashboard, how):
    # the last state change comes from the worker thread while it is still alive: the buttons
    # must follow the state, not whether that thread has ended yet
    if how == "pause":
        start = dashboard.feed.source.phase_count
        dashboard.buttons["start"].click()
        while dashboard.feed.source.phase_count < start + 1:
            time.sleep(0.01)
        dashboard.buttons["pause"].click()
    else:
        dashboard.buttons["step"].click()
    assert dashboard.wait(timeout=120)
    assert dashboard.state == ("paused" if how == "pause" else "idle")
    expected = {"start", "step", "step_phase"} | ({"stop"} if dashboard.runner.cursor.is_open else set())
    assert buttons_enabled(dashboard) == expected
    dashboard.step()  # and training goes on from where it stopped
    assert dashboard.state == "idle" and not dashboard.runner.cursor.is_open


def test_running_twice_is_refused(dashboard):
    dashboard.start(50)
    try:
        with pytest.raises(RuntimeError, match="in progress"):
            dashboard.step()
    finally:
        dashboard.stop()
        dashboard.wait(timeout=120)


def test_redraws_are_throttled_and_coalesced(trainer):
    dash = TrainingDashboard(trainer, min_interval=0.3)
    try:
        time.sleep(0.35)
        before = dash.redraws
        for _ in range(50):
            dash.request_redraw()
        assert dash.redraws == before + 1  # the first draws at once, the rest wait
        time.sleep(0.6)
        assert dash.redraws == before + 2  # ...and are drawn once, at the end of the interval
    finally:
        dash.close()


def test_ten_thousand_steps_stay_under_the_point_cap(dashboard):
    h = np.linspace(1.5, 0.1, 10_000)
    records = [{"step": i, "reward_mean": -0.3 * np.exp(h[i]) + 1.4, "entropy_mean": h[i], "entropy_p50": h[i] * 0.8,
                "entropy_p95": h[i] * 1.5, "kl": 0.01, "clip_fraction": 0.02, "distinct_strategies": 2.0,
                "unique_answers": 3.0, "parsed_fraction": 1.0, "accuracy": 0.5} for i in range(10_000)]
    dashboard.redraw(records)
    for fig in dashboard.figures.values():
        for trace in fig.data:
            assert len(trace.x) <= dashboard.max_points
    steps = dashboard.trace("reward_mean").x
    assert steps[0] == 0 and steps[-1] == 9_999
    assert list(steps[-500:]) == list(range(9_500, 10_000))  # recent steps are exact
    assert dashboard.trace("accuracy").y[-1] == 0.5  # a column the trainer does not record appears when present
    assert dashboard.drawing.fit["a"] == pytest.approx(0.3, rel=1e-6) and dashboard.drawing.fit["ceiling"] == pytest.approx(1.1)
    assert dashboard.trace("fit_ceiling").visible
    assert "1.100" in dashboard.drawing.fit_line.value


def test_thinned_history_memory_is_flat():
    h = ThinnedHistory(["step", "x"], cap=100)
    for i in range(10_000):
        h.extend([{"step": i, "x": float(i)}])
        assert len(h) <= 100
    assert h.columns["step"][0] == 0 and h.columns["step"][-1] == 9_999
    assert "x" in h.present


def test_fit_of_reward_on_entropy():
    h = np.array([0.2, 0.5, 0.9, 1.3, 1.6])
    fit = fit_reward_entropy(h, -0.25 * np.exp(h) + 0.9)
    assert fit["a"] == pytest.approx(0.25) and fit["b"] == pytest.approx(0.9) and fit["ceiling"] == pytest.approx(0.65)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit_reward_entropy([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) is None  # no spread in entropy
    assert fit_reward_entropy(h[:4], h[:4]) is None  # two parameters need more than a handful of points


def test_bad_arguments_name_the_field(trainer):
    with pytest.raises(ValueError, match="steps=0"):
        TrainingDashboard(trainer, steps=0)


# --- TokenView --------------------------------------------------------------------------------
def spans(html_text):
    return re.findall(r"<span class='wb-token( wb-pivot)?' style='[^']*' data-value='([^']*)'", html_text)


def test_token_colours_are_the_recorded_values(trainer):
    if trainer.last_batch is None:
        trainer.step()
    batch = trainer.last_batch
    view = TokenView(trainer)
    assert [v for _, v in view.value_control.options] == ["entropy", "logprob", "token_advantage", "gate", "kl"]
    for group in range(batch.num_groups):
        view.prompt_control.value = group
        rows = [i for i in range(len(batch)) if batch.group[i] == group]
        for value, tensor in (("entropy", batch.entropy), ("token_advantage", batch.token_advantages)):
            view.value_control.value = value
            found = spans(view.strips.value)
            expected = [float(tensor[r, t]) for r in rows for t in range(int(batch.mask[r].sum()))]
            np.testing.assert_allclose([float(v) for _, v in found], expected, rtol=1e-5, atol=1e-6)
            pivots = sum(int(batch.pivots[r, : int(batch.mask[r].sum())].sum()) for r in rows)
            assert sum(1 for p, _ in found if p) == pivots
        for r in rows:
            assert f"answer <b>{batch.answers[r]}</b>" in view.strips.value or batch.answers[r] is None
    assert "top-5:" in view.strips.value and "colour = token advantage" in view.legend.value


def test_tokens_coloured_by_their_kl_to_the_reference(trainer):
    """At beta 0 the update measures the KL on one response a group: those rows are coloured by the k3
    of their recorded log-probs against the reference's (the adapter off), the others grey."""
    if trainer.last_batch is None:
        trainer.step()
    batch = trainer.last_batch
    view = TokenView(trainer, value="kl")
    for group in range(batch.num_groups):
        view.prompt_control.value = group
        rows = [i for i in range(len(batch)) if batch.group[i] == group]
        ref, _ = trainer.token_logprobs([batch.prompt_ids[r] for r in rows], batch.ids[rows], adapter="reference")
        by_hand = torch.expm1(ref - batch.logprobs[rows]) - (ref - batch.logprobs[rows])
        found = [float(v) for _, v in spans(view.strips.value)]
        measured = [not batch.token_kl[r].isnan().any() for r in rows]
        assert sum(measured) == 1  # the group's first response
        at = 0
        for k, r in enumerate(rows):
            n = int(batch.mask[r].sum())
            if measured[k]:
                np.testing.assert_allclose(found[at : at + n], by_hand[k, :n].numpy(), rtol=1e-3, atol=1e-6)
            else:
                assert all(np.isnan(found[at : at + n]))
            at += n
    assert "grey: KL not measured" in view.legend.value and "colour = KL to the reference (k3)" in view.legend.value


def test_token_view_follows_the_trainer(trainer):
    if trainer.last_batch is None:
        trainer.step()
    view = TokenView(trainer, value="logprob", prompt=1)
    old = trainer.last_batch
    trainer.step()
    view.update()
    assert view.batch is trainer.last_batch is not old
    assert view.prompt_control.value == 1 and view.value_control.value == "logprob"
    view.update(old)
    assert view.batch is old
    with pytest.raises(ValueError, match="value='he_bonus'.*entropy, logprob"):
        view.update(value="he_bonus")


class HostileTokenizer:
    """Decodes every token to markup, as an adversarial model could write."""

    def decode(self, ids):
        return "<script>alert(1)</script>" if ids[0] % 2 else "<b onmouseover='x()'>"


def test_model_text_is_escaped(trainer):
    if trainer.last_batch is None:
        trainer.step()
    batch = trainer.last_batch.select(range(len(trainer.last_batch)))
    batch.problems = [dataclasses.replace(p, prompt="<img src=x onerror=alert(1)>") for p in batch.problems]
    batch.answers = ["<i>42</i>"] * len(batch)
    batch.strategies = ["</div><script>bad()</script>"] * len(batch)
    view = TokenView(batch, tokenizer=HostileTokenizer())
    page = view.strips.value
    assert "<script" not in page and "<img" not in page and "<b onmouseover" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x" in page and "&lt;i&gt;42" in page


def test_token_view_without_tokenizer_shows_ids(trainer):
    if trainer.last_batch is None:
        trainer.step()
    view = TokenView(trainer.last_batch)
    assert "⟨" in view.strips.value and "no tokenizer" in view.legend.value


# --- EEPOStepper ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eepo_trainer():
    return Trainer(RunConfig(**SMALL, method="eepo", method_options={"gate": "always"}))


def test_eepo_stepper_one_phase_per_press(eepo_trainer):
    stepper = EEPOStepper(eepo_trainer)
    step = eepo_trainer.step_index
    stepper.button.click()  # the phase runs on a thread: the button waits, a second click is refused
    assert stepper.button.disabled and "running phase <code>sample_stage1</code>" in stepper.status.value
    stepper.button.click()
    assert stepper.wait(timeout=120)
    assert stepper.phase.name == "sample_stage1" and not stepper.button.disabled
    assert "Next phase runs unlearn" in stepper.status.value
    stage1 = stepper.phase.batch
    group0 = [i for i in range(len(stage1)) if stage1.group[i] == 0]
    assert len(spans(stepper.rollouts.value)) == int(stage1.mask[group0].sum())
    assert "not sampled yet" in stepper.rollouts.value

    stepper.button.click()
    assert stepper.wait(timeout=120)
    u = stepper.phase.numbers
    assert stepper.phase.name == "unlearn" and u["gate"]
    assert stepper.tabs.selected_index == 1  # the tab the phase just filled: gate and unlearning
    window = stepper.figures["window"]
    np.testing.assert_allclose(window.data[0].y, u["entropy_window"])
    assert list(window.data[1].y) == [0.3, 0.3]  # alpha, the default
    unlearning = stepper.figures["unlearning"]
    mask = stage1.mask.float()
    per_response = (stage1.logprobs * mask).sum(-1) / mask.sum(-1)
    np.testing.assert_allclose(unlearning.data[0].y, per_response.numpy(), rtol=1e-5)
    np.testing.assert_allclose(unlearning.data[1].y, u["logp_after"])
    after = torch.tensor(u["logp_after"])
    assert (after < per_response).float().mean() > 0.5  # the step lowers most stage-1 responses
    tokens = mask.sum(-1)
    assert float(((per_response - after) * tokens).sum() / tokens.sum()) == pytest.approx(u["logp_drop"], abs=1e-4)
    assert f"{u['kl_policy_rollout']:.4f}" in stepper.numbers.value
    assert u["grad_norm"] > 0 and f"unlearning gradient norm {u['grad_norm']:.3g}" in stepper.numbers.value
    assert ("clipped to 0.3" in stepper.numbers.value) == (u["grad_norm"] > 0.3)

    names = [stepper.next_phase().name for _ in range(2)]
    assert names == ["sample_stage2", "score"]
    batch = stepper.phase.batch
    rows = [i for i in range(len(batch)) if batch.group[i] == 0]
    assert len(spans(stepper.rollouts.value)) == int(batch.mask[rows].sum())  # both stages, side by side
    assert "stage 2 (after unlearning)" in stepper.rollouts.value and "not sampled yet" not in stepper.rollouts.value
    shared = {batch.strategies[i] for i in rows if batch.stage[i] == 1} & \
             {batch.strategies[i] for i in rows if batch.stage[i] == 2} - {None}
    assert ("shared strategy" in stepper.rollouts.value) == bool(shared)

    names = [stepper.next_phase().name for _ in range(3)]
    assert names == ["advantage", "update", "metrics"]
    assert eepo_trainer.step_index == step + 1 and "step done" in stepper.timeline.value
    assert stepper.next_phase().name == "sample_stage1"  # the next press starts a new step
    for fig in stepper.figures.values():  # the figures still hold step 0's unlearn, and say so
        assert f"from step {step}: this step's unlearn has not run yet" in fig.layout.title.text
        assert all(trace.opacity < 1 for trace in fig.data)
    stepper.close()  # abandons it: the trainer restores its adapter
    assert eepo_trainer.step_index == step + 1


def test_eepo_stepper_needs_an_eepo_trainer(trainer):
    with pytest.raises(ConfigError, match="method='grpo'.*'eepo'"):
        EEPOStepper(trainer)


def test_a_method_panel_appears_when_the_rows_hold_its_group(dashboard):
    assert set(dashboard.figures) == {"reward", "entropy", "kl", "diversity", "sampling"}  # GRPO: no method group
    rows = [{"step": i, "reward_mean": 0.5, "entropy_mean": 1.0, STAGE1_ACCURACY: 0.25 + 0.1 * i,
             STAGE2_ACCURACY: 0.5} for i in range(3)]
    dashboard.redraw(rows)
    assert set(dashboard.figures) == {"reward", "entropy", "kl", "diversity", "sampling", "eepo"}
    tabs = dashboard.drawing.tabs
    assert tabs.titles[-1] == GROUPS["eepo"].title and tabs.children[-1] is dashboard.figures["eepo"]
    np.testing.assert_allclose(dashboard.trace(STAGE1_ACCURACY).y, [0.25, 0.35, 0.45])
    assert dashboard.figures["eepo"].layout.yaxis.title.text == GROUPS["eepo"].unit
    assert {t.meta for t in dashboard.figures["eepo"].data} == set(registry.panel_metrics("eepo"))
    dashboard.redraw(rows)
    assert len(tabs.children) == 4  # added once
