import os

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
