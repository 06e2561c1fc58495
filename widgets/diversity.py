"""DiversityPanel: pass@k curves per split, strategies and pairwise similarity of one prompt's
responses, and distinct-n over steps.

Everything drawn is what the run recorded, read through its feed (``following.Feed``): each
step's rollouts and the run's evaluations, or ``Trainer.evaluate`` results (the Evaluate button,
or results handed to ``show_pass_at_k``). Distinct-n is text statistics of recorded completions,
never a model pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import ipywidgets as w
import plotly.graph_objects as go

from workbench import metrics
from workbench.metrics.registry import pass_at, pass_k
from workbench.step.batch import RolloutBatch
from workbench.tasks import is_success

from ._live import (
    Throttle,
    busy,
    downsample,
    esc,
    figure_row,
    set_status,
    status_line,
    step_ticks,
    update_prompt_selector,
)
from .following import FOLLOW_INTERVAL, Feed
from .live_figure import LiveFigure
from .style import FONT_SIZE, OKABE_ITO, SEQUENTIAL, panel_layout, series_color

CORRECT_COLOR, INCORRECT_COLOR = OKABE_ITO[2], OKABE_ITO[3]
SPLIT_DASHES = ("solid", "dash", "dot", "dashdot")
UNPARSED = "(unparsed)"
FILES_PER_POLL = 8  # rollouts files a poll reads: a long run's history fills in without blocking the panel


class DiversityPanel(w.VBox):
    """pass@k curves per split, strategy histogram and similarity heatmap of one prompt's group
    in the last batch, and distinct-n over steps, of ``source``: a trainer in this process, or a
    run directory (a str or Path) another process writes, followed (``following.Feed``) every
    ``interval`` seconds; ``poll()`` reads what is new at once.

    pass@k: when this process trains the run, ``splits`` are evaluated by the Evaluate button with
    the panel's samples-per-prompt and prompts settings; a run directory's are what its eval.json
    records (``workbench eval RUN_DIR`` adds to it). The last batch is the newest step's rollouts,
    and distinct-n is read from every step's, the newest first, ``FILES_PER_POLL`` a poll.
    ``distinct_ns`` are the n of distinct-n (the mean over groups of each group's distinct-n);
    ``redraw_interval`` seconds throttles the live redraws.
    """

    def __init__(
        self,
        source,
        splits: Sequence[str] = ("test", "ood"),
        n_samples: int = 8,
        num_prompts: int = 16,
        distinct_ns: Sequence[int] = (1, 2, 3),
        redraw_interval: float = 0.5,
        max_points: int = 2000,
        interval: float = FOLLOW_INTERVAL,
    ):
        self.splits = tuple(splits)
        self.distinct_ns = tuple(distinct_ns)
        self.max_points = max_points
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        self.distinct_records: list[dict[str, float]] = []
        self._batch: RolloutBatch | None = None  # the newest step's rollouts read so far
        self._batch_step = -1
        self._backlog: list[int] = []  # steps whose rollouts are still to be read

        self._build_evaluation_controls(n_samples, num_prompts)
        self._build_figures()
        self._throttle = Throttle(self._redraw, redraw_interval)
        self.feed = Feed(source, self._on_update, interval=interval, detail=self._backlog_text)
        self._redraw()
        self._draw_pass_at_k()
        super().__init__(self._sections())
        self.feed.start()

    def _build_evaluation_controls(self, n_samples: int, num_prompts: int) -> None:
        """The Evaluate button and its settings (shown only when this process trains the run)."""
        self.n_samples = w.IntText(
            value=n_samples,
            description="samples / prompt",
            style={"description_width": "initial"},
            layout=w.Layout(width="190px"),
        )
        self.num_prompts = w.IntText(
            value=num_prompts,
            description="prompts",
            style={"description_width": "initial"},
            layout=w.Layout(width="150px"),
        )
        self.label = w.Text(placeholder="label (default: method and step)", layout=w.Layout(width="260px"))
        self.evaluate_button = w.Button(
            description="Evaluate",
            button_style="primary",
            icon="play",
            tooltip=f"pass@k of the current policy on {', '.join(self.splits)}",
        )
        self.evaluate_button.on_click(lambda _: self.evaluate())
        self.evaluation_status = status_line()

    def _build_figures(self) -> None:
        """The pass@k figure, the prompt selector with its group's figures, and distinct-n."""
        self.passk_figure = _passk_figure()
        self.prompt = w.Dropdown(description="prompt", layout=w.Layout(width="480px"))
        self.prompt.observe(lambda _: self._draw_group(), names="value")
        self.prompt_text = w.HTML()
        self.strategy_figure = _strategy_figure()
        self.similarity_figure = _similarity_figure()
        self.distinct_figure = _distinct_figure(self.distinct_ns)

    def _sections(self) -> list[w.Widget]:
        """The panel's rows, top to bottom."""
        if self.feed.trainer is not None:  # a policy in this process to evaluate
            evaluation = w.HBox([self.n_samples, self.num_prompts, self.label, self.evaluate_button])
        else:
            evaluation = w.HTML("the run's evaluations (its eval.json: <code>workbench eval RUN_DIR</code> adds one)")
        return [
            w.HTML(f"<b style='font-size:{FONT_SIZE + 2}px'>pass@k</b>"),
            evaluation,
            self.evaluation_status,
            self.feed.status,
            self.passk_figure,
            w.HTML(f"<b style='font-size:{FONT_SIZE + 2}px'>one prompt of the last batch</b>"),
            self.prompt,
            self.prompt_text,
            figure_row(self.strategy_figure, self.similarity_figure),
            self.distinct_figure,
        ]

    # --- pass@k -----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, dict[str, float]]:
        """Run ``trainer.evaluate`` on each split with the panel's settings and add the curves
        under the panel's label; returns {split: result}, or {} when a setting is invalid."""
        trainer = self.feed.trainer
        if trainer is None:
            raise RuntimeError(
                f"this panel follows {self.feed.source.location}, with no policy to evaluate: "
                "`workbench eval RUN_DIR` evaluates its last checkpoint into eval.json, shown here"
            )
        n, prompts = self.n_samples.value, self.num_prompts.value
        for name, value in (("samples / prompt", n), ("prompts", prompts)):
            if value < 1:
                set_status(self.evaluation_status, f"{name}={value} is not allowed: an integer >= 1", error=True)
                return {}
        label = self.label.value.strip() or f"{trainer.cfg.method} step {trainer.step_index}"
        self.evaluate_button.disabled = True
        started = time.perf_counter()
        out: dict[str, dict[str, float]] = {}
        try:
            for i, split in enumerate(self.splits):
                self.evaluation_status.value = busy(
                    esc(f"evaluating {label} on {split} ({i + 1}/{len(self.splits)}): {prompts} prompts x {n} samples")
                )
                out[split] = trainer.evaluate(split, n_samples=n, num_prompts=prompts)
        except ValueError as error:
            set_status(self.evaluation_status, str(error), error=True)
            return {}
        finally:
            self.evaluate_button.disabled = False
        self.show_pass_at_k({label: out})
        summary = ", ".join(f"{s} pass@1 {r[pass_at(1)]:.2f} pass@{n} {r[pass_at(n)]:.2f}" for s, r in out.items())
        set_status(self.evaluation_status, f"{label}: {summary} ({time.perf_counter() - started:.1f} s)")
        return out

    def show_pass_at_k(self, results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> None:
        """Overlay precomputed ``trainer.evaluate`` results: {label: {split: result}}, e.g. the
        base model and several policies. A label already shown is replaced."""
        for label, per_split in results.items():
            for split, result in per_split.items():
                if not any(pass_k(key) for key in result):
                    raise ValueError(
                        f"results[{label!r}][{split!r}] has no pass@k entries: expected the dict "
                        "Trainer.evaluate returns"
                    )
            self.results[label] = {split: dict(result) for split, result in per_split.items()}
        self._draw_pass_at_k()

    def _draw_pass_at_k(self) -> None:
        splits = list(dict.fromkeys(s for per_split in self.results.values() for s in per_split))
        traces = []
        for i, (label, per_split) in enumerate(self.results.items()):
            for split, result in per_split.items():
                ks = sorted(k for k in map(pass_k, result) if k)
                traces.append(
                    go.Scatter(
                        x=ks,
                        y=[result[pass_at(k)] for k in ks],
                        name=f"{esc(label)} · {esc(split)}",
                        legendgroup=esc(label),
                        mode="lines+markers",
                        line={"color": series_color(i), "dash": SPLIT_DASHES[splits.index(split) % len(SPLIT_DASHES)]},
                        hovertemplate="%{fullData.name}<br>pass@%{x}: %{y:.3f}<extra></extra>",
                    )
                )
        self.passk_figure.data = []
        self.passk_figure.add_traces(traces)
        # a log axis autoranges an empty figure to 0.1 .. 500k: span 1 .. the largest k instead
        largest = max([max(t.x) for t in traces] or [self.n_samples.value, 2])
        self.passk_figure.layout.xaxis.range = [-0.05, math.log10(largest) + 0.05]

    # --- the last batch -----------------------------------------------------------------------
    def _record(self, step: int, batch) -> None:
        """Distinct-n of a step's batch, in the step order (a step recorded again is replaced)."""
        groups = [[batch.text[i] for i in rows.tolist()] for rows in batch.group_rows()]
        record: dict[str, float] = {"step": step}
        for n in self.distinct_ns:
            record[f"distinct_{n}"] = sum(metrics.distinct_n(texts, n) for texts in groups) / len(groups)
        kept = [r for r in self.distinct_records if r["step"] != step]
        self.distinct_records = sorted([*kept, record], key=lambda r: r["step"])

    def poll(self) -> None:
        """Read what the run recorded since the last poll, and draw it now (the live redraws are
        throttled)."""
        self.feed.poll()
        self._throttle.flush()

    def _on_update(self, update) -> None:
        """Evaluations and rollouts a poll found: the newest step's first, the rest a few a poll."""
        if update.restarted:  # resumed from an earlier checkpoint: the steps after it are gone
            self.distinct_records, self._backlog, self._batch, self._batch_step = [], [], None, -1
        if update.evaluations is not None:
            self.show_pass_at_k(update.evaluations)
        self._backlog = sorted({*self._backlog, *update.rollout_steps})
        reading = self._backlog[-FILES_PER_POLL:]
        for step in reversed(reading):
            batch = self.feed.source.step_batch(step).batch
            self._record(step, batch)
            if step >= self._batch_step:
                self._batch, self._batch_step = batch, step
        del self._backlog[len(self._backlog) - len(reading) :]
        if reading or update.restarted:
            self._throttle()

    def _backlog_text(self) -> list[str]:
        return [f"distinct-n: rollouts of {len(self._backlog)} earlier steps still to read"] if self._backlog else []

    def _redraw(self) -> None:
        update_prompt_selector(self.prompt, self._batch)
        self._draw_group()
        self._draw_distinct()

    def group_rows(self) -> list[int]:
        """Rows of the last batch in the selected prompt's group."""
        if self._batch is None or self.prompt.value is None:
            return []
        return self._batch.group_rows()[self.prompt.value].tolist()

    def _draw_group(self) -> None:
        batch, rows = self._batch, self.group_rows()
        if batch is None or not rows:
            self.prompt_text.value = "<i>no rollouts recorded yet</i>"
            return
        problem = batch.problems[self.prompt.value]
        key = "" if problem.answer is None else f", answer key <code>{esc(problem.answer)}</code>"
        self.prompt_text.value = (
            f"<div style='font-size:{FONT_SIZE}px'><b>prompt</b> <code>{esc(problem.prompt)}"
            f"</code> (step {self._batch_step}{key})</div>"
        )
        rewards, strategies = batch.scored_rewards, batch.scored_strategies
        correct = [is_success(float(rewards[i])) for i in rows]
        labels = [UNPARSED if strategies[i] is None else strategies[i] for i in rows]
        order = sorted(set(labels), key=lambda s: (-labels.count(s), s))
        with self.strategy_figure.batch_update():
            for trace, want in zip(self.strategy_figure.data, (True, False)):
                trace.x = [esc(s) for s in order]
                trace.y = [sum(1 for s, c in zip(labels, correct) if s == label and c == want) for label in order]
        texts = [batch.text[i] for i in rows]
        similarity = metrics.pairwise_similarity(texts)
        ticks = [_row_tag(batch, i, k, c) for k, (i, c) in enumerate(zip(rows, correct))]
        shown = [esc(t) for t in texts]
        hover = [
            [
                f"{ticks[a]} vs {ticks[b]}: similarity {similarity[a, b]:.2f}<br>{ticks[a]}: {shown[a]}"
                f"<br>{ticks[b]}: {shown[b]}"
                for b in range(len(rows))
            ]
            for a in range(len(rows))
        ]
        with self.similarity_figure.batch_update():
            heatmap = self.similarity_figure.data[0]
            heatmap.z, heatmap.x, heatmap.y, heatmap.text = similarity, ticks, ticks, hover

    def _draw_distinct(self) -> None:
        records = list(self.distinct_records)
        steps = [int(r["step"]) for r in records]
        with self.distinct_figure.batch_update():
            for trace, n in zip(self.distinct_figure.data, self.distinct_ns):
                trace.x, trace.y = downsample(steps, [r[f"distinct_{n}"] for r in records], self.max_points)
            self.distinct_figure.layout.xaxis.update(step_ticks(steps))

    def close(self) -> None:
        """Stop following the run, and close the widget."""
        self.feed.close()
        self._throttle.cancel()
        super().close()


def _row_tag(batch, row: int, k: int, correct: bool) -> str:
    """Response ``k`` of its group, with its mode / stage when the batch mixes them, ✓ if correct."""
    parts = [f"#{k}"]
    if len(set(batch.mode)) > 1:
        parts.append("HE" if batch.mode[row] == "high_entropy" else "N")
    if len(set(batch.stage)) > 1:
        parts.append(f"s{batch.stage[row]}")
    if correct:
        parts.append("✓")
    return " ".join(parts)


# --- the empty figures the panel fills --------------------------------------------------------------
def _passk_figure() -> LiveFigure:
    return LiveFigure(
        layout=panel_layout(
            "pass@k per split",
            height=340,
            # ticks at k = 1, 2, 4, ...
            xaxis={"title": {"text": "k (samples per prompt)"}, "type": "log", "dtick": math.log10(2)},
            yaxis={"title": {"text": "pass@k (fraction of prompts)"}, "range": [0, 1.02]},
            hovermode="closest",
        )
    )


def _strategy_figure() -> LiveFigure:
    fig = LiveFigure(
        layout=panel_layout(
            "strategies of this prompt's responses",
            height=340,
            barmode="stack",
            hovermode="closest",
            xaxis={"title": {"text": "strategy"}, "type": "category"},
            yaxis={"title": {"text": "responses"}, "dtick": 1},
        )
    )
    fig.add_bar(name="correct", marker_color=CORRECT_COLOR, x=[], y=[])
    fig.add_bar(name="incorrect", marker_color=INCORRECT_COLOR, x=[], y=[])
    fig.layout.legend.traceorder = "normal"  # plotly lists stacked bars in reverse
    return fig


def _similarity_figure() -> LiveFigure:
    fig = LiveFigure(
        layout=panel_layout(
            "pairwise similarity of the responses",
            height=340,
            hovermode="closest",
            xaxis={"title": {"text": "response"}, "type": "category"},
            yaxis={"title": {"text": "response"}, "type": "category", "autorange": "reversed"},
        )
    )
    fig.add_heatmap(
        z=[],
        zmin=0,
        zmax=1,
        colorscale=SEQUENTIAL,
        hovertemplate="%{text}<extra></extra>",
        colorbar={"title": {"text": "Jaccard of<br>char 3-grams"}},
    )
    return fig


def _distinct_figure(distinct_ns: Sequence[int]) -> LiveFigure:
    fig = LiveFigure(
        layout=panel_layout(
            "distinct-n of each prompt's responses (mean over prompts)",
            height=300,
            xaxis={"title": {"text": "step"}},
            yaxis={"title": {"text": "distinct-n (unique / all n-grams)"}},
        )
    )
    for i, n in enumerate(distinct_ns):
        fig.add_scatter(name=f"distinct-{n}", mode="lines+markers", x=[], y=[], line={"color": series_color(i)})
    return fig
