"""SweepView: a hyperparameter sweep (``workbench sweep``) followed live while another process runs
it: its trials as a table to select from, their settings against their results in parallel
coordinates, the selected trials' curves, and a trial's token view.

It reads only what the sweep writes (``workbench.studies.sweep``: sweep.json, trials.json and each trial's
run directory) and never Ray, so it follows a sweep run from a terminal or a cluster as well.
"""

from __future__ import annotations

import os
from pathlib import Path

import ipywidgets as w
import pandas as pd

from workbench.metrics import registry
from workbench.metrics.registry import STEP, pass_at
from workbench.run.lock import lock_held
from workbench.run.source import RunSource, open_run
from workbench.studies.sweep import EVAL_FILE, STATUSES, TRIALS_FILE, SweepPlan, load_plan, read_trials

from ._live import Every, Polled, PollGuard, esc, numeric_columns, set_status, status_line, step_ticks
from .following import FOLLOW_INTERVAL
from .live_figure import LiveFigure
from .style import FONT_SIZE, TRIAL_STATES, panel_layout, run_color
from .sweep_axes import setting_labels, sweep_axes, value_text
from .tokens import TokenView

TABLE_ROWS = 8  # trials shown without scrolling
CSS = (
    f"<style>.wb-sweep-table select, .wb-sweep-head {{ font-family:monospace; font-size:{FONT_SIZE - 1}px; }}"
    ".wb-sweep-head { margin:0 0 -4px; padding:0 0 0 6px; white-space:pre; font-weight:bold; }</style>"
)
# line colours of the parallel coordinates: one flat band of the scale per status (codes 0..4)
STATUS_SCALE = [[(i + edge) / len(STATUSES), TRIAL_STATES[s]] for i, s in enumerate(STATUSES) for edge in (0, 1)]
STATUS_KEY = (
    f"<div style='font-size:{FONT_SIZE - 2}px;color:#333'>lines: "
    + " ".join(f"<span style='color:{TRIAL_STATES[s]}'>&#9632;</span> {s}" for s in STATUSES[1:])
    + " · <i>none</i>: no value yet (only a finished trial is evaluated on the test split)</div>"
)


class SweepView(Polled, w.VBox):
    """Follow the sweep directory ``sweep_dir`` (which may not exist yet): polled every ``interval``
    seconds, or at once by ``poll()``; ``close()`` stops following.

    ``table``: one row per trial (status, steps, the metric's last value, each searched setting,
    pass@1 once evaluated), a multiple selection; ``parallel``: the started trials' settings and
    results, a line each coloured by status; ``curves``: the selected trials' metric per step from
    their metrics.jsonl; ``open_trial()`` (the button) shows a trial's ``TokenView`` below."""

    _timer: Every | None = None
    token_view: TokenView | None = None

    def __init__(self, sweep_dir: str | Path, interval: float = FOLLOW_INTERVAL):
        if not isinstance(sweep_dir, (str, os.PathLike)):
            raise TypeError(f"sweep_dir={type(sweep_dir).__name__} is not allowed: a sweep directory (str or Path)")
        if not interval > 0:
            raise ValueError(f"interval={interval!r} is not allowed: seconds > 0 between polls")
        self.dir, self.interval = Path(sweep_dir), interval
        self.plan: SweepPlan | None = None
        self.trials = pd.DataFrame(columns=["name", "status", "step", "metric"])  # read_trials' table
        self.followers: dict[str, RunSource] = {}  # the trials selected so far, by name
        self.frames: dict[str, pd.DataFrame] = {}  # their metrics rows, numeric columns
        self._rows: dict[str, list[dict]] = {}
        self._seen: tuple | None = None  # trials.json's (inode, size, mtime) and the eval.json count, as read
        self._updating = False  # a poll is replacing the controls' options: not a user's change
        self._guard = PollGuard(self._show_status)
        self._build()
        self._guard.tick(self.poll)
        self._timer = Every(interval, self._tick, "SweepView")

    def _build(self) -> None:
        self.status = status_line()
        self.header = w.HTML(CSS)
        self.table = w.SelectMultiple(options=[], rows=TABLE_ROWS, layout=w.Layout(width="100%"))
        self.table.add_class("wb-sweep-table")
        self.curve_metric = w.Dropdown(description="curves of", layout=w.Layout(width="360px"))
        self.open_button = w.Button(
            description="token view",
            icon="eye",
            disabled=True,
            layout=w.Layout(width="auto"),
            tooltip="the token view of the first selected trial, below",
        )
        self.detail = w.HTML()
        layout = panel_layout("settings and results (a line per started trial)", height=340)
        layout["margin"] = {"l": 90, "r": 110, "t": 80, "b": 30}  # the axes' names above, their ticks beside
        self.parallel = LiveFigure(layout=layout)
        self.parallel.add_parcoords(dimensions=[], labelfont={"size": FONT_SIZE - 1}, tickfont={"size": FONT_SIZE - 3})
        self.key = w.HTML(STATUS_KEY)
        self.curves = LiveFigure(
            layout=panel_layout("the selected trials, step by step", height=320, xaxis={"title": {"text": "step"}})
        )
        self.token_box = w.VBox()
        self.table.observe(lambda _: self._act(self._show_selection), names="value")
        self.curve_metric.observe(lambda _: self._act(self._draw_curves), names="value")
        self.open_button.on_click(lambda _: self.open_trial())
        hint = w.HTML(
            f"<span style='font-size:{FONT_SIZE - 2}px;color:#555'>ctrl- or shift-click: several trials</span>"
        )
        super().__init__(
            [
                self.status,
                self.header,
                self.table,
                w.HBox([self.curve_metric, self.open_button, hint]),
                self.detail,
                self.parallel,
                self.key,
                self.curves,
                self.token_box,
            ]
        )
        self.add_class("wb-sweep-view")  # a stable hook for styling and browser tests

    # --- following ----------------------------------------------------------------------------------
    def poll(self) -> None:
        """Read what the sweep and the selected trials wrote since the last poll, and draw it."""
        self._guard.run(self._poll)

    def _poll(self) -> None:
        if self._read_trials():
            self._draw_table()
            self._draw_parallel()
        self._follow_selected()

    def _read_trials(self) -> bool:
        """Read trials.json and the evaluations beside it when either changed; whether they did.
        (A sweep copied or synced from elsewhere may bring an eval.json after its trials.json.)"""
        try:
            stat = (self.dir / TRIALS_FILE).stat()
        except FileNotFoundError:
            return False  # the sweep has not started
        evaluated = sum((self.dir / name / EVAL_FILE).exists() for name in self.trials.name)
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns, evaluated)
        if signature == self._seen:
            return False
        if self.plan is None:
            self.plan = load_plan(self.dir)  # written before trials.json
        try:
            trials = read_trials(self.dir)
        except (ValueError, KeyError, TypeError) as error:  # not recorded as read: the next poll reads it again
            raise ValueError(
                f"{TRIALS_FILE} could not be read ({type(error).__name__}: {error}); trying again"
            ) from None
        self.trials, self._seen = trials if len(trials) else self.trials.iloc[:0], signature
        return True

    def _known_plan(self) -> SweepPlan:
        """The sweep's plan, read with its first trials (what shows a trial needs it)."""
        if self.plan is None:
            raise RuntimeError(f"{self.dir} has no trials yet: its plan is read with the first {TRIALS_FILE}")
        return self.plan

    def _follow_selected(self) -> None:
        """Read the selected trials' new metrics rows; draw their curves when any came."""
        changed = [t.name for t in self.curves.data] != list(self.table.value)  # a selection not drawn yet
        for name in self.table.value:
            if name not in self.followers:
                self.followers[name], self._rows[name] = open_run(self.dir / name, self._known_plan().steps), []
            update = self.followers[name].poll()
            if update.restarted:  # resumed from an earlier checkpoint: its rows are the history now
                self._rows[name] = []
            if update.rows or update.restarted:
                self._rows[name] += update.rows
                self.frames[name] = numeric_columns(pd.DataFrame(self._rows[name]))
                changed = True
        if changed:
            self._draw_curves()

    def _act(self, work) -> None:
        """A control's change, drawn under the polls' lock (its error in the status line); none
        while a poll replaces the controls' options itself."""
        if not self._updating:
            self._guard.tick(lambda: self._guard.run(work))

    def _show_selection(self) -> None:
        self._follow_selected()
        self._draw_curves()
        self._show_selected()

    # --- drawing ------------------------------------------------------------------------------------
    def _draw_table(self) -> None:
        """The trials as padded text rows (the heading above them); the selection is kept by name,
        and the first trial is selected when the table first fills."""
        cells = self.table_cells()
        widths = {c: max([len(c), *map(len, cells[c])]) for c in cells}
        heading = "  ".join(c.ljust(widths[c]) for c in cells)
        self.header.value = CSS + f"<div class='wb-sweep-head'>{esc(heading)}</div>"
        rows = ["  ".join(row[c].ljust(widths[c]) for c in cells) for _, row in cells.iterrows()]
        keep = self.table.value if self.table.options else tuple(self.trials.name[:1])
        self._updating = True
        try:
            self.table.options = list(zip(rows, self.trials.name))
            self.table.rows = min(max(len(rows), 2), TABLE_ROWS)
            self.table.value = tuple(name for name in keep if name in set(self.trials.name))
        finally:
            self._updating = False
        self._show_selected()

    def table_cells(self) -> pd.DataFrame:
        """The table as text, a row per trial: status, steps taken, the metric, the settings, pass@1."""
        plan, trials = self._known_plan(), self.trials
        steps = [f"{'-' if pd.isna(step) else int(step) + 1}/{plan.steps}" for step in trials.step]
        cells = pd.DataFrame(
            {"trial": trials.name, "status": trials.status, "steps": steps, plan.metric: trials.metric.map(value_text)}
        )
        for key, label in setting_labels(list(plan.space)).items():
            cells[label] = trials[key].map(value_text) if key in trials else "-"
        cells[pass_at(1)] = trials[pass_at(1)].map(value_text) if pass_at(1) in trials else "-"
        return cells.astype(str)

    def _draw_parallel(self) -> None:
        """A line per started trial through its settings and its results; a result it does not
        have (a trial stopped early is not evaluated) sits at "none" below the axis."""
        started = self.trials[self.trials.status != "pending"]
        codes = [STATUSES.index(s) for s in started.status]
        with self.parallel.batch_update():
            self.parallel.data[0].dimensions = sweep_axes(self._known_plan(), started) if len(started) else []
            self.parallel.data[0].line = {
                "color": codes,
                "colorscale": STATUS_SCALE,
                "cmin": -0.5,
                "cmax": len(STATUSES) - 0.5,
            }

    def _draw_curves(self) -> None:
        """The selected trials' curves of the chosen metric (the sweep's metric at first)."""
        names = list(self.table.value)
        frames = [self.frames[n] for n in names if n in self.frames]
        options = sorted({c for f in frames for c in f.columns if c != STEP})
        want = self.curve_metric.value or (self.plan.metric if self.plan else None)
        self._updating = True
        try:
            self.curve_metric.options = options
            self.curve_metric.value = want if want in options else (options[0] if options else None)
        finally:
            self._updating = False
        metric = self.curve_metric.value
        if [t.name for t in self.curves.data] != names:
            self.curves.data = ()
            for name in names:
                self.curves.add_scatter(name=esc(name), mode="lines+markers", line={"color": trial_color(name)})
        drawn: list = []
        with self.curves.batch_update():
            for trace, name in zip(self.curves.data, names):
                frame = self.frames.get(name, pd.DataFrame())
                steps, values = (frame[STEP].tolist(), frame[metric].tolist()) if metric in frame else ([], [])
                trace.x, trace.y = steps, values
                drawn += steps
            self.curves.layout.yaxis.title.text = registry.title(metric) if metric else ""
            self.curves.layout.xaxis.update(step_ticks(drawn))

    def _show_selected(self) -> None:
        """The token button names the trial it opens; a failed trial's error is shown in full."""
        first = self.table.value[0] if self.table.value else None
        self.open_button.disabled = first is None
        self.open_button.description = f"token view of {first}" if first else "token view"
        errors = self.trials.set_index("name").get("error", pd.Series(dtype=object))
        error = errors.get(first) if first is not None else None
        self.detail.value = (
            ""
            if not isinstance(error, str)
            else (f"<span style='font-size:{FONT_SIZE}px'>{esc(first)} failed: <code>{esc(error)}</code></span>")
        )

    def _show_status(self) -> None:
        """How many trials are where, whether the sweep's process has ended, and what is wrong."""
        if self.trials.empty:
            parts = [f"waiting for the sweep to start (no trials in {self.dir / TRIALS_FILE} yet)"]
        else:
            counts = self.trials.status.value_counts()
            parts = [
                " · ".join(f"{counts.get(s, 0)} {s}" for s in ("running", "finished", "stopped", "failed"))
                + "".join(f" · {counts[s]} {s}" for s in ("pending", "interrupted") if counts.get(s))
                + f" (of {self._known_plan().trials} trials)"
            ]
            if lock_held(self.dir) is False:
                resume = ": run the same command again to resume the interrupted trials"
                parts.append("the sweep's process has ended" + (resume if counts.get("interrupted") else ""))
        if self.error is not None:
            parts.append(f"{type(self.error).__name__}: {self.error}")
        set_status(self.status, "; ".join(parts), error=self.error is not None)

    # --- a trial's tokens ---------------------------------------------------------------------------
    def open_trial(self, name: str | None = None) -> TokenView:
        """Show the token view of trial ``name`` (default: the first selected) below, following its
        run directory; the one shown before is closed."""
        name = name if name is not None else (self.table.value[0] if self.table.value else None)
        if name is None or name not in set(self.trials.name):
            raise ValueError(
                f"name={name!r} is not allowed: a trial of this sweep "
                f"({', '.join(self.trials.name) or 'none has started yet'})"
            )
        if self.token_view is not None:
            self.token_view.close()
        self.token_view = TokenView(self.dir / name, interval=self.interval)
        self.token_box.children = [
            w.HTML(f"<b style='font-size:{FONT_SIZE}px'>{esc(name)}: its tokens</b>"),
            self.token_view,
        ]
        return self.token_view

    def close(self) -> None:
        """Stop following the sweep (and the token view), and close the widget."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.token_view is not None:
            self.token_view.close()
        super().close()


def trial_color(name: str) -> str:
    """A trial's colour by its number (``trial-003``: the fourth run colour), the same in every figure."""
    return run_color(int(name.rsplit("-", 1)[-1]))
