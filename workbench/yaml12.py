"""YAML read as YAML 1.2 reads it: ``1e-3`` is a number, ``010`` is ten, ``1:30`` is text.

PyYAML implements YAML 1.1, whose resolvers leave ``1e-3`` a string (no dot), read ``010`` as
octal 8, ``1:30`` as base 60 (90) and ``yes``/``off`` as booleans. Config files and ``--set``
values are read with the YAML 1.2 core schema instead, so what a user writes is what they get.
"""

from __future__ import annotations

import re

import yaml

_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"  # a decimal, with an exponent or not
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's int, float and bool resolvers."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)


def _construct_float(loader, node):
    text = loader.construct_scalar(node).lower()
    return float(text.replace(".inf", "inf").replace(".nan", "nan"))


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def safe_load(text: str):
    """Parse YAML text with the YAML 1.2 core schema (safe: plain data only)."""
    loader = _Loader(text)  # what yaml.load does, with this (safe) loader
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
