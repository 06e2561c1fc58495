"""``WorkbenchGRPOTrainer``: the workbench on TRL's GRPOTrainer, two ways in, one class.

- ``WorkbenchGRPOTrainer(cfg, out_dir, steps)`` (what ``workbench train --backend trl`` runs): a
  workbench ``RunConfig``, any of the workbench's methods, on TRL's loop (``trl_engine``).
- ``WorkbenchGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...,
  peft_config=..., run_dir=...)``: the drop-in for a TRL script of one's own; TRL trains exactly as
  it would, the workbench records every step into ``run_dir`` (``trl_recording``).
"""

from workbench.integrations.trl_engine import TRL_OUTPUT, WorkbenchGRPOTrainer
from workbench.integrations.trl_recording import RecordingGRPOTrainer

WorkbenchGRPOTrainer.drop_in = RecordingGRPOTrainer

__all__ = ["TRL_OUTPUT", "RecordingGRPOTrainer", "WorkbenchGRPOTrainer"]
