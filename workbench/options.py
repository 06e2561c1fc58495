"""Option: every setting declared once, with its type, range or choices, default and help.

``RunConfig``'s fields and each method's ``method_options`` are declared with these, in the
spirit of TRL's ``field(metadata={"help": ...})``. Validation, YAML loading, the command
line (``workbench options``, ``--set``), what a running trainer may change (``set_live``,
``fork``), the hyperparameter panel and the options table in ``docs/methods.md`` all read
the declarations, so an option is added in one place. ``MethodOptions`` is a run's
``method_options`` as one value: parsed, merged and filled with the method's defaults here only.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

KINDS = ("int", "float", "bool", "choice", "text", "any")
# how a run's value can change once it trains: live (Trainer.set_live, from the next step), in a
# fork (Trainer.fork: a branch from the current adapter), or only in a new run (it shapes the model
# or the adapter a fork copies)
CHANGES_IN = ("live", "fork", "new_run")


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the field, the value and what is."""

    def __init__(self, field_name: str, value: Any, allowed: str, show_type: bool = False):
        self.field, self.value, self.allowed, self.show_type = field_name, value, allowed, show_type
        shown = f"{value!r} ({type(value).__name__})" if show_type else repr(value)
        super().__init__(f"{field_name}={shown} is not allowed: {allowed}")

    def __reduce__(self):  # pickled with its own arguments: it crosses processes (Ray tasks, sweep trials)
        return type(self), (self.field, self.value, self.allowed, self.show_type)


@dataclass(frozen=True)
class Option:
    """One setting. ``kind``: int, float (any finite number), bool, choice (one of ``choices``),
    text (a non-empty string) or any (checked by its owner). ``optional``: None is allowed too,
    meaning ``none_means``. ``changes_in``: one of ``CHANGES_IN``. For the controls of the
    hyperparameter panel: ``suggestions``, values offered for a text or any option (others stay
    allowed); ``comma_list``, the value may be a list of names, typed separated by commas."""

    default: Any
    help: str
    kind: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    none_means: str = ""
    allowed_text: str = ""  # for text and any: what is allowed, in words
    name: str = ""
    changes_in: str = "fork"
    suggestions: tuple[str, ...] = ()
    comma_list: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Option kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.changes_in not in CHANGES_IN:
            raise ValueError(f"Option changes_in={self.changes_in!r} is not one of {', '.join(CHANGES_IN)}")

    # --- what is allowed -------------------------------------------------------------------
    @property
    def bounds(self) -> str:
        low = "(" if self.low_open or self.low == -math.inf else "["
        high = ")" if self.high_open or self.high == math.inf else "]"
        return f"{low}{float(self.low)}, {float(self.high)}{high}"

    def allowed(self, with_none: bool = True) -> str:
        """What a value may be, in words (the end of every error message about this option);
        ``with_none=False`` leaves out an optional option's None."""
        if self.kind == "int":
            text = (
                ("an integer" if self.low == -math.inf else f"an integer >= {int(self.low)}")
                if self.high == math.inf
                else f"an integer from {int(self.low)} to {int(self.high)}"
            )
        elif self.kind == "float":
            text = f"a number in {self.bounds}"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = f"one of {', '.join(self.choices)}"
        else:
            text = self.allowed_text or "any value"
        return f"{text}, or None ({self.none_means})" if self.optional and with_none else text

    def coerce(self, value: Any) -> Any:
        """A numpy (or other numbers-ABC) scalar as the Python int or float it stands for."""
        if self.kind in ("int", "float") and isinstance(value, numbers.Real) and type(value) not in (bool, int, float):
            if self.kind == "int" and isinstance(value, numbers.Integral):
                return int(value)
            if self.kind == "float":
                return float(value)
        return value

    def check(self, value: Any, label: str | None = None) -> None:
        """Raise a ConfigError naming ``label`` (default: the option's name) unless ``value`` is allowed."""
        if value is None and self.optional:
            return
        label = label or self.name
        if self.kind in ("int", "float"):
            kinds = numbers.Integral if self.kind == "int" else numbers.Real
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ConfigError(label, value, self.allowed(), show_type=True)
            if not math.isfinite(value):
                raise ConfigError(label, value, self.allowed())
            v = cast(float, value)  # compared as it is: an int beyond 2**53 must not be rounded
            if (
                v < self.low
                or v > self.high
                or (self.low_open and v == self.low)
                or (self.high_open and v == self.high)
            ):
                raise ConfigError(label, value, self.allowed())
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(label, value, self.allowed())
        elif self.kind == "choice":
            if value not in self.choices:
                raise ConfigError(label, value, self.allowed())
        elif self.kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(label, value, self.allowed())
        elif value is None:  # "any": its owner checks the rest
            raise ConfigError(label, value, self.allowed())


# --- declaring options ------------------------------------------------------------------------
def integer(default, help: str, low: float = 0, high: float = math.inf, **more) -> Option:
    return Option(default, help, "int", low=low, high=high, **more)


def number(default, help: str, low: float = -math.inf, high: float = math.inf, **more) -> Option:
    return Option(default, help, "float", low=low, high=high, **more)


def flag(default: bool, help: str, **more) -> Option:
    return Option(default, help, "bool", **more)


def choice(default: str, help: str, choices, **more) -> Option:
    return Option(default, help, "choice", choices=tuple(choices), **more)


def text(default: str, help: str, allowed: str, **more) -> Option:
    return Option(default, help, "text", allowed_text=allowed, **more)


def anything(default, help: str, allowed: str, **more) -> Option:
    return Option(default, help, "any", allowed_text=allowed, **more)


def config_field(option: Option, default_factory=None):
    """A dataclass field declared by ``option`` (its default, and the option in its metadata)."""
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={"option": option})
    return dataclasses.field(default=option.default, metadata={"option": option})


def of_dataclass(cls) -> dict[str, Option]:
    """The options of a dataclass declared with :func:`config_field`, named after their fields."""
    return {
        f.name: dataclasses.replace(f.metadata["option"], name=f.name)
        for f in dataclasses.fields(cls)
        if "option" in f.metadata
    }


def named(options: dict[str, Option]) -> dict[str, Option]:
    """``options`` with each Option's name set to its key."""
    return {key: dataclasses.replace(o, name=key) for key, o in options.items()}


CHANGES_IN_WORDS = {"live": "live", "fork": "fork", "new_run": "new run"}


def markdown_table(options: dict[str, Option], prefix: str = "", changes_in: bool = False) -> str:
    """A markdown table of ``options``: name, default, allowed values, (with ``changes_in``: how
    a running run can change it,) help."""
    rows = [
        "| option | default | allowed | " + ("changes in | " if changes_in else "") + "what it does |",
        "|---|---|---|" + ("---|" if changes_in else "") + "---|",
    ]
    for key, o in options.items():
        default = "None" if o.default is None else repr(o.default) if isinstance(o.default, str) else o.default
        changes = [CHANGES_IN_WORDS[o.changes_in]] if changes_in else []
        cells = [f"`{prefix}{key}`", f"`{default}`", o.allowed(), *changes, o.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


# --- a run's method_options -------------------------------------------------------------------
class MethodOptions(Mapping[str, Any]):
    """A run's ``method_options`` as one value, wherever they come from: YAML, ``--set
    method_options.X=V``, a sweep's ``method_options.X`` dimension, the panel, or the changes
    ``set_live``, ``resume`` and ``fork`` take (``RunConfig.replace``).

    ``explicit``: the options the run sets, what config.yaml records. Read as a mapping
    (``options["alpha"]``), each declared option has the value it trains with: the explicit
    one, else its default in ``declared`` (the method's ``OPTIONS``)."""

    PREFIX = "method_options."

    def __init__(self, explicit: Mapping[str, Any] | None = None, declared: Mapping[str, Option] | None = None):
        self.explicit: dict[str, Any] = dict(explicit or {})
        self.declared: dict[str, Option] = dict(declared or {})

    def __getitem__(self, key: str) -> Any:
        return self.explicit[key] if key in self.explicit else self.declared[key].default

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self.declared, *self.explicit]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self.declared, *self.explicit]))

    def __repr__(self) -> str:
        return f"MethodOptions({self.explicit!r}, declared={sorted(self.declared)!r})"

    def merged(self, changes: Mapping[str, Any]) -> MethodOptions:
        """These options with ``changes`` set explicitly over them: a change names only the
        options it changes, the others keep their values."""
        changes = changes.explicit if isinstance(changes, MethodOptions) else changes
        return MethodOptions({**self.explicit, **changes}, self.declared)

    def shown_as(self, values: Mapping[str, Any]) -> MethodOptions:
        """These options as controls that show every one of them say (``values``): those this
        run sets stay explicit, and those that now differ from the values that train become so."""
        return self.merged({key: value for key, value in values.items() if value != self[key]})

    @classmethod
    def key(cls, name: str) -> str | None:
        """The option a dotted name sets (``"method_options.alpha"`` -> ``"alpha"``); None for a
        name that is not one (a RunConfig field, or ``method_options`` itself)."""
        return name.removeprefix(cls.PREFIX) if name.startswith(cls.PREFIX) else None

    @classmethod
    def gathered(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (RunConfig fields by name) with their ``method_options.X`` entries gathered
        into one ``method_options``, set over any mapping given whole under that name: how the
        command line and a sweep's dimensions name one option."""
        out = {name: value for name, value in values.items() if cls.key(name) is None}
        dotted = {key: value for name, value in values.items() if (key := cls.key(name)) is not None}
        whole = out.get("method_options", {})
        if dotted and isinstance(whole, Mapping):  # a whole value that is no mapping is named by validation
            out["method_options"] = cls(whole).merged(dotted).explicit
        return out
