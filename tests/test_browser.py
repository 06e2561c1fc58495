"""The widgets in a real browser (``lab_browser``: JupyterLab, headless Chromium, 1,366 x 768 with the
side bar open). The test clicks as a participant would: Start, Pause, Start again, Step, Step phase
and Stop on the dashboard; Next phase through a whole EEPO step; a live change made in code that the
hyperparameter panel must show. Any error in the browser console fails it, also after reloading the
page while the kernel's widgets live. Saves the screenshots under docs/img/. The figures' own
browser tests (drawing while the kernel is busy, reloads, saved state) are test_browser_figures.py."""

import re

import pytest
from lab_browser import DONE, run_in_kernel, shoot, status_step, wait_for_status

SMALL = "num_prompts=2, num_generations=4, max_completion_length=16"
CELLS = [
    "from workbench import RunConfig, Trainer\n"
    "from widgets import TokenView, TrainingDashboard\n\n"
    f"trainer = Trainer(RunConfig({SMALL}))\n"
    "dash = TrainingDashboard(trainer, steps=200)\n"
    "dash",
    "dash.step()\n"
    "view = TokenView(trainer)\n"
    "view",
    "from widgets import EEPOStepper\n\n"
    f"eepo = Trainer(RunConfig({SMALL.replace('4', '8', 1)}, method='eepo', method_options={{'gate': 'always'}}))\n"
    "stepper = EEPOStepper(eepo)\n"
    "stepper",
    "from widgets import HyperparameterPanel\n\n"
    "panel = HyperparameterPanel(trainer)\n"
    "panel",
    f"print({DONE!r})",
]


@pytest.fixture
def cells():
    return CELLS


@pytest.mark.slow
def test_a_participant_clicks_through_the_widgets(page, tmp_path):
    from playwright.sync_api import expect

    dash = page.locator(".wb-dashboard")
    button = {name: dash.locator("button", has_text=name).first for name in ("Start", "Pause", "Stop")}
    button["Step"] = dash.locator("button", has_text=re.compile(r"^\s*Step\s*$"))
    button["Step phase"] = dash.locator("button", has_text="Step phase")
    page.wait_for_function("Array.from(document.querySelectorAll('.wb-dashboard .js-plotly-plot'))"
                           ".some(d => (d.data || []).some(t => t.meta === 'reward_mean' && t.x.length === 1))",
                           timeout=120_000)

    # Start, Pause: the buttons come back (item 1), Start again: training resumes
    for round_ in range(2):
        before = status_step(dash)
        button["Start"].click()
        wait_for_status(dash, r"running")
        expect(button["Pause"]).to_be_enabled()
        wait_for_status(dash, rf"\bstep (?!{before}\b)\d+")  # a step finished
        button["Pause"].click()
        wait_for_status(dash, r"^paused")
        for name in ("Start", "Step", "Step phase"):
            expect(button[name]).to_be_enabled(timeout=10_000)
        expect(button["Pause"]).to_be_disabled()
        assert status_step(dash) > before, f"round {round_}: training did not resume"
    before = status_step(dash)
    button["Step"].click()
    wait_for_status(dash, rf"^idle · step {before + 1}\b")
    expect(button["Start"]).to_be_enabled(timeout=10_000)
    button["Step phase"].click()
    wait_for_status(dash, r"unfinished step, last phase sample")
    expect(button["Stop"]).to_be_enabled(timeout=10_000)
    button["Stop"].click()
    wait_for_status(dash, rf"^stopped · step {before + 1}\b")
    steps = before + 1
    page.wait_for_function("n => Array.from(document.querySelectorAll('.wb-dashboard .js-plotly-plot'))"
                           ".some(d => (d.data || []).some(t => t.meta === 'reward_mean' && t.x.length === n))",
                           arg=steps, timeout=60_000)
    shoot(page, dash, "dashboard")
    page.locator(".wb-token-view .wb-token").first.wait_for(timeout=60_000)
    shoot(page, page.locator(".wb-token-view"), "token-view")

    # the EEPO stepper through a whole step; a double click runs one phase, not two (item 5)
    stepper = page.locator(".wb-eepo-stepper")
    next_phase = stepper.locator("button", has_text="Next phase")
    timeline = stepper.locator(".wb-timeline")
    next_phase.dblclick()
    expect(timeline).to_contain_text("✔ sample_stage1", timeout=120_000)
    expect(next_phase).to_be_enabled(timeout=10_000)
    expect(timeline).to_contain_text("▶ unlearn (next)")
    for name in ("unlearn", "sample_stage2", "score", "advantage", "update", "metrics"):
        next_phase.click()
        expect(timeline).to_contain_text(f"✔ {name}", timeout=120_000)
        expect(next_phase).to_be_enabled(timeout=10_000)
        if name == "unlearn":
            expect(stepper.locator(".js-plotly-plot .bars .point").first).to_be_visible(timeout=30_000)
            shoot(page, stepper, "eepo-stepper-gate", tmp_path)  # for a person to look at
    expect(timeline).to_contain_text("step done")
    assert stepper.locator(".wb-token").count() > 0
    stepper.get_by_role("tab", name="rollouts").click()
    shoot(page, stepper, "eepo-stepper")

    # a live change made in code shows in the panel (item 4)
    panel = page.locator(".wb-hyperparameter-panel")
    temperature = panel.locator(".widget-inline-hbox", has=page.locator("label", has_text=re.compile(
        r"^temperature$"))).locator("input").first
    expect(temperature).to_have_value("1")
    run_in_kernel(page, "trainer.set_live(temperature=1.3)")
    expect(temperature).to_have_value("1.3", timeout=10_000)
    panel.locator(".widget-gridbox").first.screenshot(path=str(tmp_path / "panel-live-fields.png"))  # to look at

    # A reload while the kernel's figures live restores every widget model at once (item 9):
    # anywidget gives each model 2 s to load its module, and stock plotly's (5 MB, once per figure)
    # takes longer on a busy 2-core machine.
    page.reload()
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
    page.wait_for_timeout(12_000)
    assert not page.errors, f"browser console errors: {page.errors[:5]}"
