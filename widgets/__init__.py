"""The UI layer: ipywidgets + plotly dashboards that draw what a ``workbench.Trainer`` recorded.

It imports ``workbench``; the engine never imports it, and no widget recomputes the model:
each draws the trainer's history, its last batch and the phases it announces, or what a run
directory holds.

    TrainingDashboard(run)         buttons, live reward / entropy / KL / diversity / method figures
    TokenView(batch or run)        token strips coloured by a per-token value, pivots outlined
    EEPOStepper(trainer)           EEPO one phase at a time: stage 1, unlearning, stage 2
    PolicySplitView(run)           the two modes of Policy Split side by side
    DiversityPanel(run)            pass@k curves, strategy histograms, similarity, distinct-n
    HyperparameterPanel(trainer)   change live settings, fork a run with new ones
    RunComparison(runs)            overlay the metrics of several trainers or run directories
    SweepView(sweep_dir)           a sweep's trials: table, parallel coordinates, curves, token view
    SameBatchView(credit)          one batch's credit under every method, side by side (workbench.credit)

A widget reads its run through one feed (``following.Feed`` over ``workbench.run.source``), so
``TrainingDashboard``, ``TokenView``, ``DiversityPanel``, ``PolicySplitView`` and ``RunComparison``
take a trainer or a run directory (a str or Path) that another process writes, alike;
``SweepView`` follows a ``workbench sweep`` directory's trials the same way.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "TrainingDashboard": "dashboard",
    "TokenView": "tokens",
    "EEPOStepper": "eepo",
    "PolicySplitView": "policy_split",
    "DiversityPanel": "diversity",
    "HyperparameterPanel": "hyperparameters",
    "RunComparison": "comparison",
    "SweepView": "sweep",
    "SameBatchView": "same_batch",
}
__all__ = list(_MODULES)


def __getattr__(name: str):
    # imported on first use, so `import widgets` stays cheap and one widget's imports never block another's
    if name not in _MODULES:
        raise AttributeError(f"module 'widgets' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
