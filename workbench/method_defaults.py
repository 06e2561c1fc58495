"""The RunConfig fields a method fills in (``Method.CONFIG_DEFAULTS``): what None means for such a
field (``filled_by_methods``, its help) and a config's values moved from one method to another
(``with_method_settings``, as ``RunConfig.replace`` and the hyperparameter panel do it)."""

from __future__ import annotations

from typing import Any

from workbench import methods


def filled_by_methods(field: str, unfilled: str = "") -> str:
    """What None means for ``field``, read from the methods' ``CONFIG_DEFAULTS``: the setting a
    method fills in unless it says otherwise (``unfilled`` where that is none), then the methods
    that fill in another."""
    plain = methods.Method.CONFIG_DEFAULTS.get(field)
    differing: dict[Any, list[str]] = {}
    for name in methods.names():
        value = methods.get(name).CONFIG_DEFAULTS.get(field)
        if value != plain:
            differing.setdefault(value, []).append(name)
    words = [unfilled if plain is None else f"the method's: {plain}"]
    words += [f"{', '.join(names)}: {value}" for value, names in differing.items()]
    return "; ".join(words)


def with_method_settings(values: dict[str, Any], old: str, new: str, kept=()) -> dict[str, Any]:
    """RunConfig ``values`` moved from method ``old`` to method ``new``: each field still at
    ``old``'s own setting (``Method.CONFIG_DEFAULTS``; None where it fills none) gets ``new``'s,
    unless named in ``kept`` (the user's)."""
    before, after = methods.get(old).CONFIG_DEFAULTS, methods.get(new).CONFIG_DEFAULTS
    return {
        **values,
        **{
            name: after.get(name)
            for name in {**before, **after}
            if name not in kept and values.get(name) == before.get(name)
        },
    }
