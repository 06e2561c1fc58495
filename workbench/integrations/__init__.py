"""The workbench's methods and telemetry on engines people already run: TRL's GRPOTrainer under
accelerate (``workbench.integrations.trl``, the ``[scale]`` extra), studies as Ray tasks
(``workbench.integrations.ray``) and sweeps on Ray Tune (``workbench.integrations.ray_tune``,
both the ``[ray]`` extra)."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """A feature whose install extra is not installed; its message is the one line to act on."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise a MissingExtraError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{feature} needs the [{extra}] extra ({error.name or module} is not installed): "
            f"pip install -e '.[{extra}]'"
        ) from None
