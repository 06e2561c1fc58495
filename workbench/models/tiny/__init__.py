"""The embedded default model: a character-level tokenizer and a tiny Qwen2 causal LM
pretrained on the built-in tasks (rebuild with ``workbench build-tiny``)."""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"

__all__ = ["CHECKPOINT_DIR"]
