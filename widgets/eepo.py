"""EEPOStepper: EEPO's sample-then-forget, one phase per button press.

Each press runs ``next()`` on the trainer's ``phases()`` generator and draws what that phase
recorded: the stage-1 rollouts, the entropy gate with its window against alpha, the
unlearning step's effect on the stage-1 log-probs and the KL(policy || rollout model), and the
stage-2 rollouts beside stage 1 with the answers and strategies the two stages share marked.
Everything comes from the phases' batches and numbers: the model is never run here.

A press runs the phase on a thread (``_runner.BackgroundRunner``): the button is disabled and the
status names the phase until it is done, so a click while a phase runs is refused rather than
queued. The main view fits a 1,366 x 768 screen: the rollouts and the gate/unlearning figures are
two tabs, and the tab the phase just filled is shown.
"""

from __future__ import annotations

import html

import ipywidgets as W

from workbench.config import ConfigError
from workbench.engine.step_cursor import StepCursor
from workbench.metrics import registry
from workbench.metrics.registry import REWARD_MEAN

from ._live import busy, figure_row, set_status, status_line, update_prompt_selector
from ._runner import BackgroundRunner
from .live_figure import LiveFigure
from .style import BLACK, FONT_SIZE, GATE, QUANTITY, STAGES, panel_layout, rgba
from .tokens import CSS, ColorScale, TokenDecoder, legend, row_header, token_strip

PHASES = ("sample_stage1", "unlearn", "sample_stage2", "score", "advantage", "update", "metrics")
SHARED = ("#56B4E9", "#000")  # badge colours: sky blue for shared, bluish green for new (Okabe-Ito)
NEW = ("#009E73", "#fff")
TABS = ("rollouts", "gate · unlearning")
EEPO_METRICS = set(registry.in_group("eepo"))  # what the metrics phase shows besides the reward
STEPPER_CSS = f"""
.wb-stages {{ display:grid; grid-template-columns:repeat(2, minmax(0, 1fr)); gap:16px; }}
.wb-stages h4 {{ margin:4px 0; font-size:{FONT_SIZE + 1}px; }}
.wb-badge {{ display:inline-block; padding:0 6px; border-radius:8px; font-size:{FONT_SIZE - 3}px; margin-left:4px; }}
.wb-timeline span {{ margin-right:10px; font-size:{FONT_SIZE - 1}px; }}
.wb-numbers {{ font-size:{FONT_SIZE - 1}px; }}
.wb-stepper-rollouts {{ max-height:290px; overflow-y:auto; }}
"""


class EEPOStepper(W.VBox):
    """Step an EEPO trainer one phase per press of "Next phase" (or ``next_phase()``)."""

    _ready = False

    def __init__(self, trainer, tokenizer=None):
        if trainer.cfg.method != "eepo":
            raise ConfigError("method", trainer.cfg.method, "'eepo' (EEPOStepper steps through EEPO's phases)")
        self.trainer = trainer
        self.decode = TokenDecoder(tokenizer or trainer.policy.tokenizer)
        self.phase = None  # the last phase drawn
        self.stage1 = None  # the stage-1 batch of the step in progress
        self.unlearn_numbers: dict | None = None
        self.runner = BackgroundRunner(StepCursor(trainer), self._on_runner_change, name="EEPOStepper")

        self.button = W.Button(
            description="Next phase",
            icon="step-forward",
            button_style="primary",
            tooltip="run the next phase of EEPO's step",
        )
        self.button.on_click(lambda _: None if self.runner.running else self.next_phase(wait=False))
        self.prompt_control = W.Dropdown(description="prompt", layout=W.Layout(width="420px"))
        self.prompt_control.observe(lambda _: self._draw_rollouts(), names="value")
        self.status = status_line()
        self.timeline = W.HTML()
        self.numbers = W.HTML()
        self.rollouts = W.HTML()
        self.rollouts.add_class("wb-stepper-rollouts")
        self.figures = {"window": self._window_figure(), "unlearning": self._unlearning_figure()}
        figs = figure_row(*self.figures.values())
        self.tabs = W.Tab(children=[self.rollouts, figs], titles=TABS)
        super().__init__(
            [W.HBox([self.button, self.prompt_control]), self.status, self.timeline, self.numbers, self.tabs],
            layout=W.Layout(width="100%"),
        )
        self.add_class("wb-eepo-stepper")  # a stable hook for styling and browser tests
        self._draw_timeline()
        self.rollouts.value = f"<style>{CSS}{STEPPER_CSS}</style><i>press Next phase to sample stage 1</i>"
        self._on_runner_change()
        self._ready = True

    # --- stepping ---------------------------------------------------------------------------
    def next_phase(self, wait: bool = True):
        """Run the next phase of the current step (a new step after ``metrics``); returns it when
        ``wait``, else runs it on a thread (the button's way: ``wait()`` joins it)."""
        if not self.runner.cursor.is_open and not self.runner.running:
            self.stage1, self.unlearn_numbers = None, None
        self.runner.launch(steps=None, phases=1, wait=wait)
        return self.phase if wait else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a phase started by the button; True if it has ended. Raises its error, if any."""
        return self.runner.wait(timeout)

    @property
    def next_name(self) -> str:
        """The phase the next press runs."""
        done = PHASES.index(self.phase.name) if self.runner.cursor.is_open and self.phase is not None else -1
        return PHASES[done + 1]

    def _on_runner_change(self) -> None:
        # called by the runner: when a phase starts (state "running") and when it has ended
        phase = self.runner.last_phase
        if not self.runner.running and phase is not None and phase is not self.phase:
            self._show_phase(phase)
        self.button.disabled = self.runner.running
        if self.runner.running:
            self.status.value = busy(
                f"<span style='font-size:{FONT_SIZE}px'>running phase "
                f"<code>{self.next_name}</code> of step {self.trainer.step_index}…</span>"
            )
        elif self.runner.error is not None:
            set_status(
                self.status,
                f"{type(self.runner.error).__name__}: {self.runner.error} (the step was "
                "discarded; the policy is as before it)",
                error=True,
            )
        else:
            set_status(self.status, f"ready: Next phase runs {self.next_name}")

    def _show_phase(self, phase) -> None:
        self.phase = phase
        if phase.name == "sample_stage1":
            self.stage1 = phase.batch
            update_prompt_selector(self.prompt_control, phase.batch)
            self._mark_stale()
        elif phase.name == "unlearn":
            self.unlearn_numbers = dict(phase.numbers)
            self._draw_window(phase)
            self._draw_unlearning(phase)
        if phase.name in ("sample_stage1", "sample_stage2"):
            self.tabs.selected_index = 0
        elif phase.name == "unlearn":
            self.tabs.selected_index = 1
        self._draw_timeline()
        self._draw_numbers()
        self._draw_rollouts()

    def close(self) -> None:
        """Abandon an unfinished step (the trainer restores the adapter) and close the widgets."""
        if self._ready:  # ipywidgets also calls close() on an instance whose __init__ raised
            self.runner.stop()
            for fig in self.figures.values():
                fig.close()
        super().close()

    # --- drawing ----------------------------------------------------------------------------
    def _draw_timeline(self) -> None:
        done = PHASES.index(self.phase.name) if self.phase is not None else -1
        step = self.phase.step if self.phase is not None else self.trainer.step_index
        marks = []
        for i, name in enumerate(PHASES):
            if i <= done:
                marks.append(f"<span style='color:{GATE['open']}'>✔ {name}</span>")
            elif i == done + 1:
                marks.append(f"<span><b>▶ {name}</b> (next)</span>")
            else:
                marks.append(f"<span style='color:#888'>○ {name}</span>")
        if done == len(PHASES) - 1:
            marks.append(f"<span>step done: the next press starts step {step + 1}</span>")
        self.timeline.value = (
            f"<style>{STEPPER_CSS}</style><div class='wb-timeline'><b>step {step}</b> · {''.join(marks)}</div>"
        )

    def _draw_numbers(self) -> None:
        phase = self.phase
        parts = []
        u = self.unlearn_numbers
        if u is not None:
            alpha = self.trainer.method.options["alpha"]
            gate = (
                "<b>on</b>: window mean {:.3f} &lt; α = {:g}"
                if u["gate"]
                else "<b>off</b>: window mean {:.3f} ≥ α = {:g}, no unlearning step"
            ).format(u["window_mean"], alpha)
            if self.trainer.method.options["gate"] != "entropy":
                gate = f"<b>{'on' if u['gate'] else 'off'}</b> (gate = {self.trainer.method.options['gate']})"
            clip = self.trainer.method.options["unlearn_max_grad_norm"]
            clipped = f", clipped to {clip:g}" if u["gate"] and clip is not None and u["grad_norm"] > clip else ""
            parts.append(
                f"gate {gate} · stage-1 entropy {u['stage1_entropy']:.3f} nats · "
                f"unlearning gradient norm {u['grad_norm']:.3g}{clipped} · "
                f"log-prob drop {u['logp_drop']:.3f} nats/token · "
                f"KL(policy ‖ rollout model) {u['kl_policy_rollout']:.4f} nats/token"
            )
        if phase is not None and phase.name not in ("sample_stage1", "unlearn"):
            shown = {
                k: v
                for k, v in phase.numbers.items()
                if isinstance(v, (int, float)) and (phase.name != "metrics" or k == REWARD_MEAN or k in EEPO_METRICS)
            }
            parts.append(
                f"<code>{html.escape(phase.name)}</code>: "
                + " · ".join(f"{html.escape(k)} {v:.3g}" for k, v in shown.items())
            )
        self.numbers.value = "<div class='wb-numbers'>" + "<br>".join(parts) + "</div>"

    def _window_figure(self) -> LiveFigure:
        fig = LiveFigure(layout=panel_layout("entropy gate: window of stage-1 entropy"))
        fig.update_layout(hovermode="closest", bargap=0.35)
        fig.update_xaxes(title_text="step", dtick=1)
        fig.update_yaxes(title_text="stage-1 entropy (nats)", rangemode="tozero")
        fig.add_bar(x=[], y=[], name="stage-1 entropy", marker_color=QUANTITY["entropy"], meta="window")
        fig.add_scatter(
            x=[],
            y=[],
            mode="lines",
            name="α (gate threshold)",
            meta="alpha",
            line={"color": QUANTITY["threshold"], "dash": "dash", "width": 2},
        )
        fig.add_scatter(
            x=[], y=[], mode="lines", name="window mean", meta="window_mean", line={"color": BLACK, "width": 2}
        )
        return fig

    def _unlearning_figure(self) -> LiveFigure:
        fig = LiveFigure(layout=panel_layout("unlearning: stage-1 log-prob per token"))
        fig.update_layout(hovermode="closest", bargap=0.25)
        fig.update_xaxes(title_text="stage-1 response (prompt · #)", type="category")
        fig.update_yaxes(title_text="mean log-prob (nats/token)")
        fig.add_bar(x=[], y=[], name="policy (recorded)", marker_color=STAGES[1], meta="before")
        fig.add_bar(x=[], y=[], name="rollout model (after the step)", marker_color=STAGES[2], meta="after")
        return fig

    def _mark_stale(self) -> None:
        """A new step has begun: the figures still hold the last unlearn's numbers, and say so."""
        drawn = any(f.data[0].y is not None and len(f.data[0].y) for f in self.figures.values())
        if self.unlearn_numbers is not None or not drawn:
            return
        for fig in self.figures.values():
            with fig.batch_update():
                fig.layout.title.text = (
                    f"{fig.layout.meta}<br><sup>from step {self.phase.step - 1}: "
                    f"this step's unlearn has not run yet</sup>"
                )
                for trace in fig.data:
                    trace.opacity = 0.35

    def _draw_window(self, phase) -> None:
        window = list(phase.numbers["entropy_window"])
        steps = [phase.step - len(window) + 1 + i for i in range(len(window))]
        alpha = float(self.trainer.method.options["alpha"])
        fig = self.figures["window"]
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y = steps, window
            earlier = rgba(QUANTITY["entropy"], 0.45)
            fig.data[0].marker.color = [earlier] * (len(window) - 1) + [QUANTITY["entropy"]]
            ends = [steps[0] - 0.5, steps[-1] + 0.5]  # across the bars, even a single one
            fig.data[1].x, fig.data[1].y = ends, [alpha, alpha]
            fig.data[2].x, fig.data[2].y = ends, [phase.numbers["window_mean"]] * 2
            gate = "<span style='color:{}'>{}</span>".format(
                *((GATE["open"], "ON") if phase.numbers["gate"] else (GATE["shut"], "off"))
            )
            _set_title(fig, f"step {phase.step} · entropy gate {gate}: window of stage-1 entropy vs α")

    def _draw_unlearning(self, phase) -> None:
        # Both bars are the engine's numbers: each stage-1 response's mean token log-prob before
        # and after the unlearning step (empty when the gate stayed shut).
        group = phase.batch.group.tolist()
        labels = [f"{g} · #{k}" for g, k in zip(group, _index_in_group(group))]
        before, after = phase.numbers.get("logp_before", []), phase.numbers.get("logp_after", [])
        fig = self.figures["unlearning"]
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y = labels[: len(before)], before
            fig.data[1].x, fig.data[1].y = labels[: len(after)], after
            _set_title(
                fig,
                f"step {phase.step} · unlearning: log-prob drop {phase.numbers['logp_drop']:.3f}, "
                f"KL {phase.numbers['kl_policy_rollout']:.4f} nats/token",
            )

    def _draw_rollouts(self) -> None:
        if self.stage1 is None or self.prompt_control.value is None:
            return
        # from sample_stage2 on, the phases carry both stages; before, only stage 1 exists
        batch = self.phase.batch if len(self.phase.batch) > len(self.stage1) else self.stage1
        group = self.prompt_control.value
        rows = {s: [i for i in range(len(batch)) if batch.group[i] == group and batch.stage[i] == s] for s in (1, 2)}
        scale = ColorScale(batch.entropy.float().cpu().numpy(), batch.mask.cpu().numpy(), signed=False)
        entropy = {"entropy": batch.entropy}
        columns = []
        for s in (1, 2):
            other = rows[3 - s]
            body = [f"<h4>stage {s}{' (after unlearning)' if s == 2 else ''}</h4>"]
            if not rows[s]:
                body.append("<i>not sampled yet</i>")
            for k, row in enumerate(rows[s]):
                body.append(
                    f"<div class='wb-row'>{row_header(batch, row, f'#{k} · ')}"
                    f"{_badges(batch, row, other, s)}"
                    f"{token_strip(batch, row, self.decode, 'entropy', entropy, scale)}</div>"
                )
            columns.append(f"<div>{''.join(body)}</div>")
        prompt = html.escape(batch.problems[group].prompt)
        self.rollouts.value = (
            f"<style>{CSS}{STEPPER_CSS}</style><div class='wb-tokens'>"
            f"<div class='wb-prompt'>{prompt}</div>"
            f"{legend('entropy', scale)}<div class='wb-legend'>"
            f"{_badge('shared', SHARED)} also found by the other stage · "
            f"{_badge('new', NEW)} a strategy stage 1 did not find</div>"
            f"<div class='wb-stages'>{''.join(columns)}</div></div>"
        )


def _set_title(fig: LiveFigure, title: str) -> None:
    """A fresh title (kept in ``layout.meta`` for the stale note) and full-strength traces."""
    fig.layout.meta, fig.layout.title.text = title, title
    for trace in fig.data:
        trace.opacity = 1.0


def _index_in_group(group: list[int]) -> list[int]:
    seen: dict[int, int] = {}
    out = []
    for g in group:
        out.append(seen.get(g, 0))
        seen[g] = out[-1] + 1
    return out


def _badge(text: str, colors: tuple[str, str]) -> str:
    return f"<span class='wb-badge' style='background:{colors[0]};color:{colors[1]}'>{html.escape(text)}</span>"


def _badges(batch, row: int, other_rows: list[int], stage: int) -> str:
    """Marks for the answer and strategy of ``row`` that the other stage shares, or a stage-2
    strategy stage 1 missed (text and colour, so colour is never the only cue)."""
    if batch.answers is None or not other_rows:
        return ""
    marks = []
    answer, strategy = batch.answers[row], batch.strategies[row]
    if answer is not None and answer in {batch.answers[i] for i in other_rows}:
        marks.append(_badge(f"shared answer {answer}", SHARED))
    if strategy is not None:
        if strategy in {batch.strategies[i] for i in other_rows}:
            marks.append(_badge("shared strategy", SHARED))
        elif stage == 2:
            marks.append(_badge("new strategy", NEW))
    return f"<div>{''.join(marks)}</div>" if marks else ""
