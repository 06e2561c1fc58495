"""ThinnedHistory: a run's numeric history for drawing, at a bounded number of points."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


class ThinnedHistory:
    """Numeric history columns for drawing, at most ``cap`` points per column.

    When full, the oldest half keeps every other point: recent steps stay exact and older
    ones thin out geometrically, so memory and drawing cost stay flat however long the run."""

    def __init__(self, columns: Iterable[str], cap: int = 2000):
        if cap < 4:
            raise ValueError(f"cap={cap!r} is not allowed: an integer >= 4")
        self.cap = cap
        self.columns: dict[str, list[float]] = {c: [] for c in columns}
        self.present: set[str] = set()  # columns some record actually held

    def __len__(self) -> int:
        return len(self.columns["step"])

    def extend(self, records: Iterable[Mapping]) -> None:
        for record in records:
            for name, values in self.columns.items():
                value = record.get(name)
                if value is not None:
                    self.present.add(name)
                values.append(float("nan") if value is None else float(value))
            if len(self) > self.cap:
                self._thin()

    def _thin(self) -> None:
        half = len(self) // 2
        for name, values in self.columns.items():
            self.columns[name] = values[:half:2] + values[half:]

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.columns[name], dtype=float)
