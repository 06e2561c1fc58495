import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# the browser tests' fixtures (lab, lab_page, page), for the modules that define ``cells``
pytest_plugins = ["lab_browser"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# dtype="auto" picks float32 on a CPU in the tests (subprocesses inherit it): their hand-computed
# references are float32's, and CI machines differ (an AMX one would measure bfloat16 faster)
os.environ.setdefault("WORKBENCH_CPU_DTYPE", "float32")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def random_qwen2(vocab_size: int = 16, hidden: int = 32, layers: int = 2, seed: int = 0) -> Qwen2ForCausalLM:
    """A random tiny Qwen2 for tests that need a model but not a trained one."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
    )
    return Qwen2ForCausalLM(cfg).eval()


@pytest.fixture
def tiny_policy():
    from workbench import Policy

    return Policy.from_pretrained("tiny")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """The reliability tests' run directory after 2 steps with checkpoints at steps 1 and 2 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("base") / "run"
    from reliability_common import tiny_config

    from workbench import Trainer

    trainer = Trainer(tiny_config(), out_dir=run)
    for _ in range(2):
        trainer.step()
        trainer.save_checkpoint()
    return run


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))

