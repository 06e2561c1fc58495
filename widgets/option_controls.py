"""The control of one declared option (``workbench.options.Option``) in the hyperparameter panel:
the widget its kind and hints (``suggestions``, ``comma_list``, ``optional``) call for, labelled
with its name, its tooltip its help, and a note of what it allows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from workbench.config import ConfigError
from workbench.options import MethodOptions, Option

from ._live import ERROR_COLOR, esc
from .style import FONT_SIZE

HINT_LIVE = "applies to the running trainer from its next step (Apply)"
HINT_FORK = "fixed for a running trainer: fork to change"
HINT_REBUILD = "fixed by the model, adapter or task: start a new run to change"
DESCRIPTION = {"description_width": "220px"}
CONTROL_WIDTH = "370px"
INVALID_CLASS = "wb-invalid"
# an invalid control is outlined where it is (the panel puts this style on the page)
INVALID_CSS = f".{INVALID_CLASS} input, .{INVALID_CLASS} select {{ outline: 2px solid {ERROR_COLOR}; }}"


class Control:
    """One control: ``input`` (the ipywidget), ``row`` (it and its allowed values), ``get``/``set``
    converting between the control's value and the config's."""

    def __init__(
        self,
        name: str,
        input: w.ValueWidget,
        allowed: str,
        help: str,
        hint: str,
        get: Callable[[Any], Any] = lambda v: v,
        put: Callable[[Any], Any] = lambda v: v,
    ):
        self.name, self.input, self._get, self._put = name, input, get, put
        input.description = MethodOptions.key(name) or name  # the section title names the method
        input.style = DESCRIPTION
        # a checkbox's name sits right of the box, after the indent: let it take the room it needs
        input.layout = w.Layout(width="auto" if isinstance(input, w.Checkbox) else CONTROL_WIDTH)
        input.tooltip = "; ".join(x for x in (help, allowed, hint) if x)
        # the section titles say live / fork; only a field not even a fork can change says so here
        self._note = esc(allowed) + ("; <i>new run only</i>" if hint == HINT_REBUILD else "")
        self.note = w.HTML()
        self.row = w.HBox([input, self.note])
        self.mark(None)

    def get(self) -> Any:
        return self._get(self.input.value)

    def set(self, value: Any) -> None:
        self.input.value = self._put(value)

    def mark(self, error: str | None) -> None:
        """Mark the control invalid with ``error`` beside it (outlined, the message in vermillion), or
        unmark it (None: its note says what it allows again)."""
        if error is None:
            self.row.remove_class(INVALID_CLASS)
            self.note.value = f"<span style='font-size:{FONT_SIZE - 2}px;color:#555'>{self._note}</span>"
        else:
            self.row.add_class(INVALID_CLASS)
            self.note.value = f"<span style='font-size:{FONT_SIZE - 2}px;color:{ERROR_COLOR}'>{esc(error)}</span>"


def control_of(option: Option, name: str, hint: str) -> Control:
    """The control of one declared option, labelled ``name``; its note says what is allowed."""
    allowed = _allowed(option)
    if option.kind == "choice":
        return Control(name, w.Dropdown(options=option.choices), allowed, option.help, hint)
    if option.suggestions and option.kind == "any":  # a name, or a callable set in code
        return _NameOrCallableControl(name, option, hint)
    if option.suggestions:
        return Control(name, w.Combobox(options=option.suggestions, ensure_option=False), allowed, option.help, hint)
    if option.comma_list:
        return Control(
            name,
            w.Text(),
            f"{allowed}; names separated by commas",
            option.help,
            hint,
            get=_name_list if isinstance(option.default, list) else _names,
            put=lambda v: v if isinstance(v, str) else ", ".join(v),
        )
    if option.kind == "bool":
        return Control(name, w.Checkbox(indent=True), allowed, option.help, hint)
    if option.optional and option.kind in ("int", "float"):  # None (left empty) switches it off
        read = int if option.kind == "int" else float
        return Control(
            name,
            w.Text(placeholder="none"),
            f"empty: {option.none_means}; else {_allowed(option, False)}",
            option.help,
            hint,
            get=lambda text: _optional(name, text, read, allowed),
            put=lambda v: "" if v is None else repr(v),
        )
    if option.kind == "int":
        return Control(name, w.IntText(), allowed, option.help, hint)
    if option.kind == "float":
        return Control(name, w.FloatText(), allowed, option.help, hint)
    return Control(name, w.Text(), allowed, option.help, hint)


class _NameOrCallableControl(Control):
    """An option that is a name (the declaration's suggestions offered) or a callable set in code
    (Poly-EPO's clusterer): a callable is shown by name and kept as it is (a text box cannot
    hold a function)."""

    def __init__(self, name: str, option: Option, hint: str):
        super().__init__(
            name, w.Combobox(options=option.suggestions, ensure_option=False), _allowed(option), option.help, hint
        )
        self._callable = None

    def get(self) -> Any:
        return self._callable if self._callable is not None else self.input.value

    def set(self, value: Any) -> None:
        self._callable = value if callable(value) else None
        self.input.disabled = self._callable is not None
        self.input.value = getattr(value, "__name__", repr(value)) if callable(value) else value


def _allowed(option: Option, with_none: bool = True) -> str:
    """``option.allowed()`` in the words a control's note needs: an unbounded number is "any number"
    (not "a number in [-inf, inf)")."""
    text = option.allowed(with_none)
    if option.kind == "float" and option.low == -math.inf and option.high == math.inf:
        return text.replace(f"a number in {option.bounds}", "any number")
    return text


def _optional(name: str, text: str, read: type, allowed: str) -> float | int | None:
    text = text.strip()
    if text.lower() in ("", "none"):
        return None
    try:
        return read(text)
    except ValueError:
        raise ConfigError(name, text, allowed) from None


def _names(text: str) -> str | list[str]:
    """``all-linear`` stays a string; ``q_proj, v_proj`` becomes a list."""
    if "," not in text:
        return text.strip()
    return [part.strip() for part in text.split(",") if part.strip()]


def _name_list(text: str) -> list[str]:
    """A field that is always a list (``report_to``): ``""`` is none, ``wandb`` one."""
    return [part.strip() for part in text.split(",") if part.strip()]


def section_title(text: str) -> w.HTML:
    return w.HTML(f"<b style='font-size:{FONT_SIZE + 2}px'>{esc(text)}</b>")


def control_grid() -> w.Layout:
    return w.Layout(grid_template_columns="repeat(auto-fill, minmax(560px, 1fr))", grid_gap="2px 16px")
