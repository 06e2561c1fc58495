"""EEPOStepper: EEPO's sample-then-forget, one phase per button press.

Each press runs ``next()`` on the trainer's ``phases()`` generator and draws what that phase
recorded: the stage-1 rollouts, the entropy gate with its window against alpha, the
unlearning step's effect on the stage-1 log-probs and the KL(policy || rollout model), and the
stage-2 rollouts beside stage 1 with the answers and strategies the two stages share marked.
Everything comes from the phases' batches and numbers: the model is never run here.
"""

from __future__ import annotations

import html

import ipywidgets as W
import plotly.graph_objects as go

from workbench.config import ConfigError
from workbench.step_cursor import StepCursor

from ._live import update_prompt_selector
from .style import FONT_SIZE, OKABE_ITO, panel_layout, series_color
from .tokens import CSS, ColorScale, TokenDecoder, legend, row_header, token_strip

PHASES = ("sample_stage1", "unlearn", "sample_stage2", "score", "advantage", "update", "metrics")
SHARED = ("#56B4E9", "#000")  # badge colours: sky blue for shared, bluish green for new (Okabe-Ito)
NEW = ("#009E73", "#fff")
STEPPER_CSS = f"""
.wb-stages {{ display:grid; grid-template-columns:repeat(2, minmax(0, 1fr)); gap:16px; }}
.wb-stages h4 {{ margin:4px 0; font-size:{FONT_SIZE + 1}px; }}
.wb-badge {{ display:inline-block; padding:0 6px; border-radius:8px; font-size:{FONT_SIZE - 3}px; margin-left:4px; }}
.wb-timeline span {{ margin-right:10px; font-size:{FONT_SIZE - 1}px; }}
.wb-numbers {{ font-size:{FONT_SIZE - 1}px; }}
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
        self._cursor = StepCursor(trainer)

        self.button = W.Button(description="Next phase", icon="step-forward", button_style="primary")
        self.button.on_click(lambda _: self.next_phase())
        self.prompt_control = W.Dropdown(description="prompt", layout=W.Layout(width="420px"))
        self.prompt_control.observe(lambda _: self._draw_rollouts(), names="value")
        self.timeline = W.HTML()
        self.numbers = W.HTML()
        self.rollouts = W.HTML()
        self.figures = {"window": self._window_figure(), "unlearning": self._unlearning_figure()}
        figs = W.HBox(list(self.figures.values()), layout=W.Layout(flex_flow="row wrap", grid_gap="8px"))
        super().__init__([W.HBox([self.button, self.prompt_control]), self.timeline, self.numbers, figs,
                          self.rollouts], layout=W.Layout(width="100%"))
        self.add_class("wb-eepo-stepper")  # a stable hook for styling and browser tests
        self._draw_timeline()
        self.rollouts.value = f"<style>{CSS}{STEPPER_CSS}</style><i>press Next phase to sample stage 1</i>"
        self._ready = True

    # --- stepping ---------------------------------------------------------------------------
    def next_phase(self):
        """Run the next phase of the current step (a new step after ``metrics``); returns it."""
        if not self._cursor.is_open:
            self.stage1, self.unlearn_numbers = None, None
        phase = self._cursor.next_phase()  # an error closes the step: the trainer restored the policy
        self.phase = phase
        if phase.name == "sample_stage1":
            self.stage1 = phase.batch
            update_prompt_selector(self.prompt_control, phase.batch)
        elif phase.name == "unlearn":
            self.unlearn_numbers = dict(phase.numbers)
            self._draw_window(phase)
            self._draw_unlearning(phase)
        self._draw_timeline()
        self._draw_numbers()
        self._draw_rollouts()
        return phase

    def close(self) -> None:
        """Abandon an unfinished step (the trainer restores the adapter) and close the widgets."""
        if self._ready:  # ipywidgets also calls close() on an instance whose __init__ raised
            self._cursor.discard()
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
                marks.append(f"<span style='color:{OKABE_ITO[2]}'>✔ {name}</span>")
            elif i == done + 1:
                marks.append(f"<span><b>▶ {name}</b> (next)</span>")
            else:
                marks.append(f"<span style='color:#888'>○ {name}</span>")
        if done == len(PHASES) - 1:
            marks.append(f"<span>step done: the next press starts step {step + 1}</span>")
        self.timeline.value = (f"<style>{STEPPER_CSS}</style><div class='wb-timeline'><b>step {step}</b> · "
                               f"{''.join(marks)}</div>")

    def _draw_numbers(self) -> None:
        phase = self.phase
        parts = []
        u = self.unlearn_numbers
        if u is not None:
            alpha = self.trainer.method.options["alpha"]
            gate = ("<b>on</b>: window mean {:.3f} &lt; α = {:g}" if u["gate"] else
                    "<b>off</b>: window mean {:.3f} ≥ α = {:g}, no unlearning step").format(u["window_mean"], alpha)
            if self.trainer.method.options["gate"] != "entropy":
                gate = f"<b>{'on' if u['gate'] else 'off'}</b> (gate = {self.trainer.method.options['gate']})"
            clip = self.trainer.method.options["unlearn_max_grad_norm"]
            clipped = f", clipped to {clip:g}" if u["gate"] and clip is not None and u["grad_norm"] > clip else ""
            parts.append(f"gate {gate} · stage-1 entropy {u['stage1_entropy']:.3f} nats · "
                         f"unlearning gradient norm {u['grad_norm']:.3g}{clipped} · "
                         f"log-prob drop {u['logp_drop']:.3f} nats/token · "
                         f"KL(policy ‖ rollout model) {u['kl_policy_rollout']:.4f} nats/token")
        if phase is not None and phase.name not in ("sample_stage1", "unlearn"):
            shown = {k: v for k, v in phase.numbers.items() if isinstance(v, (int, float)) and
                     (phase.name != "metrics" or k.startswith(("stage", "reward_mean", "eepo_")))}
            parts.append(f"<code>{html.escape(phase.name)}</code>: " + " · ".join(
                f"{html.escape(k)} {v:.3g}" for k, v in shown.items()))
        self.numbers.value = "<div class='wb-numbers'>" + "<br>".join(parts) + "</div>"

    def _window_figure(self) -> go.FigureWidget:
        fig = go.FigureWidget(layout=panel_layout("entropy gate: window of stage-1 entropy"))
        fig.update_layout(hovermode="closest", bargap=0.35)
        fig.update_xaxes(title_text="step", dtick=1)
        fig.update_yaxes(title_text="stage-1 entropy (nats)", rangemode="tozero")
        fig.add_bar(x=[], y=[], name="stage-1 entropy", marker_color=series_color(0), meta="window")
        fig.add_scatter(x=[], y=[], mode="lines", name="α (gate threshold)", meta="alpha",
                        line={"color": series_color(3), "dash": "dash", "width": 2})
        fig.add_scatter(x=[], y=[], mode="lines", name="window mean", meta="window_mean",
                        line={"color": series_color(1), "width": 2})
        return fig

    def _unlearning_figure(self) -> go.FigureWidget:
        fig = go.FigureWidget(layout=panel_layout("unlearning: stage-1 log-prob per token"))
        fig.update_layout(hovermode="closest", bargap=0.25)
        fig.update_xaxes(title_text="stage-1 response (prompt · #)", type="category")
        fig.update_yaxes(title_text="mean log-prob (nats/token)")
        fig.add_bar(x=[], y=[], name="before the step (recorded)", marker_color=series_color(0), meta="before")
        fig.add_bar(x=[], y=[], name="after the step", marker_color=series_color(3), meta="after")
        return fig

    def _draw_window(self, phase) -> None:
        window = list(phase.numbers["entropy_window"])
        steps = [phase.step - len(window) + 1 + i for i in range(len(window))]
        alpha = float(self.trainer.method.options["alpha"])
        fig = self.figures["window"]
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y = steps, window
            fig.data[0].marker.color = [series_color(5)] * (len(window) - 1) + [series_color(0)]
            ends = [steps[0] - 0.5, steps[-1] + 0.5]  # across the bars, even a single one
            fig.data[1].x, fig.data[1].y = ends, [alpha, alpha]
            fig.data[2].x, fig.data[2].y = ends, [phase.numbers["window_mean"]] * 2
            fig.layout.title.text = (f"entropy gate {'ON' if phase.numbers['gate'] else 'off'}: "
                                     f"window of stage-1 entropy vs α")

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
            fig.layout.title.text = (f"unlearning: log-prob drop {phase.numbers['logp_drop']:.3f}, "
                                     f"KL {phase.numbers['kl_policy_rollout']:.4f} nats/token")

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
                body.append(f"<div class='wb-row'>{row_header(batch, row, f'#{k} · ')}"
                            f"{_badges(batch, row, other, s)}"
                            f"{token_strip(batch, row, self.decode, 'entropy', entropy, scale)}</div>")
            columns.append(f"<div>{''.join(body)}</div>")
        prompt = html.escape(batch.problems[group].prompt)
        self.rollouts.value = (f"<style>{CSS}{STEPPER_CSS}</style><div class='wb-tokens'>"
                               f"<div class='wb-prompt'>{prompt}</div>"
                               f"{legend('entropy', scale)}<div class='wb-legend'>"
                               f"{_badge('shared', SHARED)} also found by the other stage · "
                               f"{_badge('new', NEW)} a strategy stage 1 did not find</div>"
                               f"<div class='wb-stages'>{''.join(columns)}</div></div>")


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

