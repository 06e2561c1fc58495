"""The workbench's methods and telemetry on engines people already run: TRL's GRPOTrainer under
accelerate (``workbench.integrations.trl``, the ``[scale]`` extra)."""
