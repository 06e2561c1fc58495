"""PolicySplitView: Policy Split's normal and high-entropy modes side by side.

Token-entropy distributions of each mode's responses in the last batch, each mode's accuracy
and the KL between the modes over steps (the run's recorded metrics), and example responses of
each mode for one prompt: what the run's feed (``following.Feed``) brings, redrawn as it comes.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as w

from workbench.metrics.registry import (
    HIGH_ENTROPY_ACCURACY,
    KL_HIGH_ENTROPY_TO_OTHER,
    KL_NORMAL_TO_OTHER,
    NORMAL_ACCURACY,
    STEP,
)
from workbench.step.batch import RolloutBatch
from workbench.tasks import is_success

from ._live import Throttle, downsample, esc, figure_row, step_ticks, update_prompt_selector
from .following import FOLLOW_INTERVAL, Feed
from .live_figure import LiveFigure
from .style import FONT_SIZE, panel_layout
from .style import MODES as MODE_COLORS  # this module's MODES are the mode names

MODES = ("normal", "high_entropy")
MODE_NAMES = {"normal": "normal", "high_entropy": "high-entropy"}
ACCURACY = {"normal": NORMAL_ACCURACY, "high_entropy": HIGH_ENTROPY_ACCURACY}
KL = {"normal": KL_NORMAL_TO_OTHER, "high_entropy": KL_HIGH_ENTROPY_TO_OTHER}
KL_NAMES = {"normal": "KL(normal ‖ high-entropy)", "high_entropy": "KL(high-entropy ‖ normal)"}


class PolicySplitView(w.VBox):
    """The two modes of a Policy Split run side by side, of ``source``: a trainer in this process or
    a run directory another process writes (followed every ``interval`` seconds).

    ``examples`` responses per mode are shown for the selected prompt; ``redraw_interval``
    seconds throttles live redraws; at most ``max_points`` points are drawn per curve. ``poll()``
    reads what is new and draws it at once; ``close()`` stops following.
    """

    def __init__(
        self,
        source,
        examples: int = 4,
        redraw_interval: float = 0.5,
        max_points: int = 2000,
        interval: float = FOLLOW_INTERVAL,
    ):
        self.examples = examples
        self.max_points = max_points
        self.steps: list[int] = []
        self.series: dict[str, list[float]] = {name: [] for name in (*ACCURACY.values(), *KL.values())}
        self._batch: RolloutBatch | None = None  # the newest step's rollouts
        self._batch_step = -1
        self._build_figures()
        self.prompt = w.Dropdown(description="prompt", layout=w.Layout(width="480px"))
        self.prompt.observe(lambda _: self._draw_examples(), names="value")
        self.example_html = {m: w.HTML() for m in MODES}
        self._throttle = Throttle(self._redraw, redraw_interval)
        self.feed = Feed(source, self._on_update, interval=interval, detail=self._batch_text)
        try:
            self.feed.poll()  # a trainer's config is known at once: another method is refused here
        except Exception:
            self.feed.close()
            raise
        self.feed.start()
        self._redraw()

        super().__init__(
            [
                self.feed.status,
                self.entropy_figure,
                figure_row(self.accuracy_figure, self.kl_figure),
                self.prompt,
                figure_row(
                    *(
                        w.VBox(
                            [
                                w.HTML(
                                    f"<b style='font-size:{FONT_SIZE + 2}px;color:{MODE_COLORS[m]}'>"
                                    f"{MODE_NAMES[m]} mode</b>"
                                ),
                                self.example_html[m],
                            ],
                        )
                        for m in MODES
                    )
                ),
            ]
        )

    def _build_figures(self) -> None:
        self.entropy_figure = LiveFigure(
            layout=panel_layout(
                "token entropy of each mode's responses (last batch)",
                height=320,
                barmode="overlay",
                hovermode="closest",
                xaxis={"title": {"text": "token entropy (nats)"}},
                yaxis={"title": {"text": "fraction of the mode's tokens"}},
            )
        )
        for m in MODES:
            self.entropy_figure.add_histogram(
                name=MODE_NAMES[m],
                x=[],
                histnorm="probability",
                bingroup="entropy",
                opacity=0.6,
                marker_color=MODE_COLORS[m],
                hovertemplate=f"{MODE_NAMES[m]}<br>%{{x}} nats: %{{y:.3f}} of tokens<extra></extra>",
            )
        self.accuracy_figure = LiveFigure(
            layout=panel_layout(
                "accuracy of each mode",
                height=300,
                xaxis={"title": {"text": "step"}},
                yaxis={"title": {"text": "accuracy (fraction correct)"}, "range": [0, 1.02]},
            )
        )
        self.kl_figure = LiveFigure(
            layout=panel_layout(
                "KL between the modes",
                height=300,
                xaxis={"title": {"text": "step"}},
                yaxis={"title": {"text": f"KL, k3 estimate ({KL_NORMAL_TO_OTHER.unit})"}},
            )
        )
        for m in MODES:
            self.accuracy_figure.add_scatter(
                name=MODE_NAMES[m], mode="lines+markers", x=[], y=[], line={"color": MODE_COLORS[m]}
            )
            self.kl_figure.add_scatter(
                name=KL_NAMES[m], mode="lines+markers", x=[], y=[], line={"color": MODE_COLORS[m]}
            )

    # --- the feed ---------------------------------------------------------------------------
    def _on_update(self, update) -> None:
        if update.config is not None and update.config.method != "policy_split":
            raise ValueError(
                f"PolicySplitView needs a Policy Split run: method={update.config.method!r} "
                "is not allowed; allowed: 'policy_split'"
            )
        if update.restarted:  # resumed from an earlier checkpoint: its rows are the history now
            self.steps, self.series = [], {name: [] for name in self.series}
        for row in update.rows:
            self.steps.append(row[STEP])
            for name, values in self.series.items():
                values.append(row.get(name, float("nan")))
        if update.rollout_steps:
            newest = max(update.rollout_steps)
            self._batch, self._batch_step = self.feed.source.step_batch(newest).batch, newest
        if update.news:
            self._throttle()

    def poll(self) -> None:
        """Read what is new and redraw now (live redraws are throttled)."""
        self.feed.poll()
        self._throttle.flush()

    def close(self) -> None:
        """Stop following the run, and close the widget."""
        self.feed.close()
        self._throttle.cancel()
        super().close()

    def _batch_text(self) -> list[str]:
        return [f"last batch: step {self._batch_step}" if self._batch is not None else "no batch yet"]

    # --- drawing ----------------------------------------------------------------------------
    def _redraw(self) -> None:
        self._draw_entropy()
        self._draw_curves()
        update_prompt_selector(self.prompt, self._batch)
        self._draw_examples()

    def mode_entropies(self, mode: str) -> list[float]:
        """Entropies (nats) of every generated token of ``mode``'s responses in the last batch."""
        batch = self._batch
        if batch is None:
            return []
        rows = [i for i, m in enumerate(batch.mode) if m == mode]
        return batch.entropy[rows][batch.mask[rows].bool()].tolist()

    def _draw_entropy(self) -> None:
        with self.entropy_figure.batch_update():
            for trace, m in zip(self.entropy_figure.data, MODES):
                trace.x = self.mode_entropies(m)

    def _draw_curves(self) -> None:
        steps = list(self.steps)
        with self.accuracy_figure.batch_update(), self.kl_figure.batch_update():
            for m, accuracy, kl in zip(MODES, self.accuracy_figure.data, self.kl_figure.data):
                accuracy.x, accuracy.y = downsample(steps, self.series[ACCURACY[m]][: len(steps)], self.max_points)
                kl.x, kl.y = downsample(steps, self.series[KL[m]][: len(steps)], self.max_points)
            for figure in (self.accuracy_figure, self.kl_figure):
                figure.layout.xaxis.update(step_ticks(steps))

    def example_rows(self, mode: str) -> list[int]:
        """Rows of the last batch shown as ``mode``'s examples for the selected prompt."""
        batch = self._batch
        if batch is None or self.prompt.value is None:
            return []
        rows = batch.group_rows()[self.prompt.value].tolist()
        return [i for i in rows if batch.mode[i] == mode][: self.examples]

    def _draw_examples(self) -> None:
        for m in MODES:
            self.example_html[m].value = _table(self._batch, self.example_rows(m))


def _table(batch, rows: Sequence[int]) -> str:
    """An HTML table of responses: reward, parsed answer, strategy and the (escaped) completion."""
    if not rows:
        return "<i>no responses yet</i>"
    body = []
    for i in rows:
        reward = float(batch.rewards[i])
        body.append(
            f"<tr><td>{reward:.2f} {'✓' if is_success(reward) else '✗'}</td><td>{esc(batch.answers[i])}</td>"
            f"<td>{esc(batch.strategies[i])}</td><td class='wb-text'>{esc(batch.text[i])}</td></tr>"
        )
    # the class scopes the style to these tables
    return (
        f"<style>.wb-rollouts td,.wb-rollouts th{{padding:2px 8px;text-align:left;vertical-align:top}}"
        f".wb-rollouts .wb-text{{font-family:monospace;white-space:pre-wrap}}</style>"
        f"<table class='wb-rollouts' style='font-size:{FONT_SIZE}px;border-collapse:collapse'>"
        f"<tr><th>reward</th><th>answer</th><th>strategy</th><th>completion</th></tr>{''.join(body)}</table>"
    )
