"""HyperparameterPanel: every ``RunConfig`` field as a control with its allowed range.

Given a ``RunConfig``, the panel edits it and ``panel.config`` returns the validated result.
Given a ``Trainer``, the fields in ``workbench.engine.trainer.LIVE_FIELDS`` apply to the running
trainer (Apply -> ``trainer.set_live``); the other fields are fixed for it and "Fork" branches
a new run from its current adapter and optimizer with the new values (``trainer.fork``).
Validation is ``RunConfig``'s own: an invalid value shows its ``ConfigError`` and nothing is
applied or forked. The panel follows the trainer whoever changes it (``trainer.set_live`` in
code, another panel): every ``FOLLOW_INTERVAL`` seconds it shows the fields that changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as w

from workbench import methods
from workbench.config import OPTIONS, ConfigError, RunConfig, with_method_settings
from workbench.engine.trainer import FORK_REFUSES, LIVE_FIELDS
from workbench.metrics import registry
from workbench.options import MethodOptions

from . import option_controls as controls
from ._live import Every, esc, set_status, status_line
from .branches import Branches, next_fork_dir, summary
from .option_controls import HINT_FORK, HINT_LIVE, HINT_REBUILD, Control
from .style import FONT_SIZE

FOLLOW_INTERVAL = 0.5  # seconds between looks at the trainer's config
TABS = ("live", "fixed · fork", "method options", "branches")


class HyperparameterPanel(w.VBox):
    """Controls for every ``RunConfig`` field and the current method's options.

    ``config_or_trainer``: a ``RunConfig`` to edit (``panel.config`` is the validated result),
    or a ``Trainer`` to steer: Apply changes its live fields, Fork branches a new run that is
    appended to ``panel.forks``, shown in the branches tab (a Train button each, and their curves
    beside the parent's) and passed to ``on_fork``. A fork's run directory is ``fork_dir/fork-N``
    when ``fork_dir`` is given, else ``RUN-fork-N`` beside the trainer's run directory ``RUN``;
    a trainer that writes none has branches that write none.
    """

    def __init__(
        self, config_or_trainer, on_fork: Callable[[Any], None] | None = None, fork_dir: str | Path | None = None
    ):
        if isinstance(config_or_trainer, RunConfig):
            self.trainer, self._base = None, config_or_trainer
        elif isinstance(getattr(config_or_trainer, "cfg", None), RunConfig):
            self.trainer, self._base = config_or_trainer, config_or_trainer.cfg
        else:
            raise TypeError(
                f"HyperparameterPanel(config_or_trainer={type(config_or_trainer).__name__}) is not "
                "allowed: pass a workbench RunConfig or Trainer"
            )
        self.on_fork = on_fork
        self.fork_dir = None if fork_dir is None else Path(fork_dir)
        self.forks: list = []
        self._loading = False
        self._shown: dict = {}  # the trainer's config as the controls last showed it
        self._sync_lock = threading.Lock()  # the follower thread vs the buttons
        self._build_fields()
        self.status = status_line()
        self.revert_button = w.Button(
            description="Revert",
            icon="undo",
            tooltip="set every control to the " + ("trainer's current config" if self.trainer else "starting config"),
        )
        self.revert_button.on_click(lambda _: self.revert())
        sections, buttons = self._config_sections() if self.trainer is None else self._trainer_sections()
        # the actions and their status first: they stay in view above fields that run long
        style = w.HTML(f"<style>{controls.INVALID_CSS}</style>")
        super().__init__([style, w.HBox(buttons), self.status, *sections])
        self.add_class("wb-hyperparameter-panel")  # a stable hook for styling and browser tests
        self.revert()
        self._follower = Every(FOLLOW_INTERVAL, self._follow, "HyperparameterPanel") if self.trainer else None

    def _build_fields(self) -> None:
        """A control for every ``RunConfig`` field, and the (empty) box the method's options fill."""
        self.fields: dict[str, Control] = {
            name: controls.control_of(option, name, self._hint(name))
            for name, option in OPTIONS.items()
            if name != "method_options"
        }
        self.option_fields: dict[str, Control] = {}
        self.options_box = w.GridBox(layout=controls.control_grid())
        self.options_title = w.HTML()
        for name, field in self.fields.items():  # a new method first rebuilds its options, then checks
            field.input.observe(self._method_changed if name == "method" else self._changed, names="value")

    def _config_sections(self) -> tuple[list[w.Widget], list[w.Button]]:
        """Editing a ``RunConfig``: every field in one grid, and Revert."""
        sections = [
            controls.section_title("run configuration"),
            w.GridBox([f.row for f in self.fields.values()], layout=controls.control_grid()),
            self.options_title,
            self.options_box,
        ]
        return sections, [self.revert_button]

    def _trainer_sections(self) -> tuple[list[w.Widget], list[w.Button]]:
        """Steering a trainer: tabs of the live fields, the fixed ones behind an unlock box, the method's
        options and the branches forked; Apply, Fork and Revert."""
        self.unlock = w.Checkbox(
            value=False,
            indent=False,
            description="edit fixed fields for a fork",
            tooltip="fixed fields cannot change in a running trainer; a fork can take them",
        )
        self.unlock.observe(self._unlock_changed, names="value")
        apply_tip, fork_tip = "set the live fields on the running trainer", "branch a new run with these values"
        self.apply_button = w.Button(description="Apply", button_style="primary", icon="check", tooltip=apply_tip)
        self.apply_button.on_click(lambda _: self.apply())
        self.fork_button = w.Button(description="Fork", icon="code-fork", tooltip=fork_tip)
        self.fork_button.on_click(lambda _: self.fork())
        rows = {
            kind: [f.row for name, f in self.fields.items() if (name in LIVE_FIELDS) == live]
            for kind, live in (("live", True), ("fixed", False))
        }
        grid = controls.control_grid
        self.branches = Branches(self.trainer)
        self.tabs = w.Tab(
            children=[
                _section("live: applies from the next step", w.GridBox(rows["live"], layout=grid())),
                _section("fixed for this run: fork to change", self.unlock, w.GridBox(rows["fixed"], layout=grid())),
                w.VBox([self.options_title, self.options_box]),
                self.branches,
            ],
            titles=TABS,
        )
        return [self.tabs], [self.apply_button, self.fork_button, self.revert_button]

    # --- reading and writing the controls --------------------------------------------------
    def _hint(self, name: str) -> str:
        if self.trainer is None:
            return ""
        if name in LIVE_FIELDS:
            return HINT_LIVE
        return HINT_REBUILD if name in FORK_REFUSES else HINT_FORK

    def revert(self) -> None:
        """Set every control to the trainer's current config (or the starting config)."""
        self._load(self.trainer.cfg if self.trainer is not None else self._base)
        self._say("")

    def _say(self, message: str, error: ConfigError | None = None, suffix: str = "") -> None:
        """The status line, and the control ``error`` names marked where it is (the others unmarked);
        its tab is shown."""
        set_status(self.status, message or (f"{error}{suffix}" if error else ""), error=error is not None)
        every = {**self.fields, **{f"{MethodOptions.PREFIX}{k}": c for k, c in self.option_fields.items()}}
        for name, control in every.items():
            control.mark(str(error) if error is not None and name == error.field else None)
        if error is not None and self.trainer is not None and error.field in every:
            self.tabs.selected_index = _tab_of(error.field)

    def _load(self, cfg: RunConfig) -> None:
        with self._sync_lock:
            self._loading = True
            try:
                for name, field in self.fields.items():
                    field.set(getattr(cfg, name))
                self._build_options(cfg.method, cfg.method_options)
            finally:
                self._loading = False
            if self.trainer is not None:
                self._shown = cfg.to_dict()
        self._enable()

    def sync(self) -> list[str]:
        """Show the fields of the trainer's config that changed since the controls last showed it
        (a ``set_live`` in code, another panel); edits pending in other controls are kept.
        Returns the names shown."""
        assert self.trainer is not None, "only a panel on a trainer follows one"
        with self._sync_lock:
            cfg = self.trainer.cfg
            current = cfg.to_dict()
            changed = [name for name in current if current[name] != self._shown.get(name)]
            if not changed:
                return []
            self._loading = True
            try:
                for name in changed:
                    if name in self.fields:
                        self.fields[name].set(getattr(cfg, name))
                if "method" in changed or "method_options" in changed:
                    self._build_options(cfg.method, cfg.method_options)
            finally:
                self._loading = False
            self._shown = current
        set_status(self.status, f"the trainer changed: {summary({n: current[n] for n in changed})} (shown)")
        return changed

    def _follow(self) -> None:
        try:
            self.sync()
        except Exception as error:  # a follower thread must not die silently: say so, keep following
            set_status(self.status, f"could not follow the trainer: {error}", error=True)

    def close(self) -> None:
        """Stop following the trainer and close the widgets."""
        follower = getattr(self, "_follower", None)
        if follower is not None:
            follower.cancel()
        super().close()

    def _build_options(self, method: str, options: dict) -> None:
        declared = methods.get(method).OPTIONS
        shown = MethodOptions(options, declared)
        self.option_fields = {
            key: controls.control_of(option, f"{MethodOptions.PREFIX}{key}", self._hint("method_options"))
            for key, option in declared.items()
        }
        for key, field in self.option_fields.items():
            field.set(shown[key])
            field.input.observe(self._changed, names="value")
        self.options_title.value = (
            f"<b style='font-size:{FONT_SIZE + 2}px'>options of method {esc(method)}</b>"
            if declared
            else f"<span style='font-size:{FONT_SIZE}px'>method {esc(method)} has no options</span>"
        )
        self.options_box.children = [f.row for f in self.option_fields.values()]

    def _enable(self) -> None:
        if self.trainer is None:
            return
        unlocked = self.unlock.value
        for name, field in self.fields.items():
            field.input.disabled = name in FORK_REFUSES or (name not in LIVE_FIELDS and not unlocked)

    def _unlock_changed(self, change) -> None:
        if (
            not change["new"] and self.trainer is not None
        ):  # locking again: the fixed fields go back to the run's values
            cfg = self.trainer.cfg
            shown_method = self.fields["method"].get()
            self._loading = True
            try:
                for name, field in self.fields.items():
                    if name not in LIVE_FIELDS:
                        field.set(getattr(cfg, name))
                if shown_method != cfg.method:  # the options and settings shown were the other method's
                    self._build_options(cfg.method, cfg.method_options)
                    self._move_method_settings(shown_method, cfg.method)
            finally:
                self._loading = False
            self._changed()
        self._enable()

    def _method_changed(self, change) -> None:
        if self._loading:
            return
        base = self.trainer.cfg if self.trainer is not None else self._base
        # the current run's options when its method is chosen again, else the new method's defaults
        self._loading = True
        try:
            self._build_options(change["new"], base.method_options if change["new"] == base.method else {})
            self._move_method_settings(change["old"], change["new"])
        finally:
            self._loading = False
        self._enable()
        self._changed()

    def _move_method_settings(self, old: str, new: str) -> None:
        """The controls of the fields method ``old`` fills in (``Method.CONFIG_DEFAULTS``) that
        still show its setting now show ``new``'s, as ``RunConfig.replace`` would make them."""
        names = {**methods.get(old).CONFIG_DEFAULTS, **methods.get(new).CONFIG_DEFAULTS}
        try:
            shown = {name: self.fields[name].get() for name in names}
        except ConfigError:  # a control that cannot be read keeps its text, and the status names it
            return
        for name, value in with_method_settings(shown, old, new).items():
            self.fields[name].set(value)

    def values(self) -> dict[str, Any]:
        """Every field as the controls say (method options as a dict); ConfigError when a
        control's text cannot be read as its field's type."""
        values = {name: field.get() for name, field in self.fields.items()}
        base = self.trainer.cfg if self.trainer is not None else self._base
        # the run's own options when the method is its own: they stay explicit, as do those changed
        kept = MethodOptions(
            base.method_options if values["method"] == base.method else {}, methods.get(values["method"]).OPTIONS
        )
        shown = {key: field.get() for key, field in self.option_fields.items()}
        values["method_options"] = kept.shown_as(shown).explicit
        return values

    @property
    def config(self) -> RunConfig:
        """The validated config the controls describe (ConfigError names the field, value and
        what is allowed)."""
        return RunConfig.from_dict(self.values())

    def changes(self) -> dict[str, Any]:
        """The fields whose control differs from the current config (the trainer's, or the
        starting one); method options as the whole dict a ``fork`` or ``set_live`` takes."""
        return self._diff(self.values())

    def _diff(self, values: dict[str, Any]) -> dict[str, Any]:
        base = self.trainer.cfg if self.trainer is not None else self._base
        out = {name: v for name, v in values.items() if name != "method_options" and v != getattr(base, name)}
        declared = methods.get(values["method"]).OPTIONS
        shown, current = (MethodOptions(o, declared) for o in (values["method_options"], base.method_options))
        if "method" in out or shown != current:  # compared as they train: an explicit default is no change
            out["method_options"] = values["method_options"]
        return out

    def _changed(self, _=None) -> None:
        if self._loading:
            return
        try:
            values = self.values()
            RunConfig.from_dict(values)  # validate now, so a bad value shows while it is typed
            changes = self._diff(values)
        except ConfigError as error:
            self._say("", error)
            return
        if not changes:
            self._say("no changes")
        elif self.trainer is None:
            self._say(f"valid; changed: {summary(changes)}")
        else:
            self._say(f"pending: {summary(changes)} (Apply for live fields, Fork for any)")

    # --- acting on the trainer -----------------------------------------------------------------
    def apply(self) -> bool:
        """Set the changed live fields on the trainer (``trainer.set_live``); True if applied.
        Nothing is applied when a value is invalid or a fixed field was changed."""
        if self.trainer is None:
            set_status(self.status, "no trainer to apply to: this panel edits a starting config", error=True)
            return False
        try:
            changes = self.changes()
        except ConfigError as error:
            self._say("", error, "; nothing applied")
            return False
        fixed = [name for name in changes if name not in LIVE_FIELDS]
        if fixed:
            set_status(
                self.status,
                f"{', '.join(fixed)} cannot change in a running trainer (live fields: "
                f"{', '.join(LIVE_FIELDS)}): Fork to change; nothing applied",
                error=True,
            )
            return False
        if not changes:
            set_status(self.status, "nothing to apply: the controls match the trainer's config")
            return False
        try:
            cfg = self.trainer.set_live(**changes)
        except ConfigError as error:
            self._say("", error, "; nothing applied")
            return False
        self._load(cfg)
        # mid-step (a dashboard training) the change waits for the next step: the trainer says which
        acts_from = self.trainer.live_change_acts_from
        recorded = [name for name in changes if name in registry.METRICS]  # a column of the history
        shown = f" (its metrics row records {', '.join(recorded)})" if recorded else ""
        set_status(self.status, f"applied {summary(changes)}: acts from step {acts_from}{shown}")
        return True

    def fork(self):
        """Branch a new run from the trainer's adapter, optimizer and step with the changed
        values (``trainer.fork``); returns it (also appended to ``forks``), or None when a value
        is invalid. The controls then go back to the parent's config."""
        try:
            changes = self.changes()
            out_dir = next_fork_dir(self.trainer, self.fork_dir)
            branch = self.trainer.fork(out_dir=out_dir, **changes)
        except ConfigError as error:
            self._say("", error, "; nothing forked")
            return None
        self.forks.append(branch)
        self.branches.add(branch, changes, out_dir)
        self._load(self.trainer.cfg)
        self._say(
            f"fork {len(self.forks) - 1} from step {branch.step_index}: {summary(changes) or 'same values'}; "
            "train it in the branches tab (or panel.forks[-1].run(steps))"
        )
        self.tabs.selected_index = TABS.index("branches")
        if self.on_fork is not None:
            self.on_fork(branch)
        return branch


def _tab_of(field: str) -> int:
    """The tab of the panel that shows ``field``'s control."""
    if field.startswith(MethodOptions.PREFIX):
        return TABS.index("method options")
    return TABS.index("live" if field in LIVE_FIELDS else "fixed · fork")


def _section(title: str, *children: w.Widget) -> w.VBox:
    return w.VBox([controls.section_title(title), *children])
