"""Policy: loading, the reference (adapter disabled), exact snapshot/restore, adapter files."""

import shutil
import time

import pytest
import torch

from workbench import Policy, PolicyLoadError
from workbench.models.tiny import CHECKPOINT_DIR


def nudge(policy, scale=0.01):
    with torch.no_grad():
        for p in policy.trainable_parameters().values():
            p.add_(scale * torch.randn_like(p))


def test_lora_starts_as_identity_and_reference_is_the_base(tiny_policy):
    ids = torch.tensor([tiny_policy.encode(["Make 9 from 1 2 3.\n"])[0]])
    with torch.no_grad():
        start = tiny_policy.model(ids).logits
        nudge(tiny_policy)
        moved = tiny_policy.model(ids).logits
        with tiny_policy.reference():
            reference = tiny_policy.model(ids).logits
    assert not torch.allclose(start, moved)
    assert torch.allclose(start, reference, atol=1e-6)


def test_snapshot_restores_bit_for_bit_even_after_an_exception(tiny_policy):
    nudge(tiny_policy)
    before = tiny_policy.adapter_state()
    with pytest.raises(RuntimeError):
        with tiny_policy.snapshot():
            nudge(tiny_policy, 1.0)
            raise RuntimeError("interrupted")
    after = tiny_policy.adapter_state()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_adapter_roundtrip_through_safetensors(tiny_policy, tmp_path):
    nudge(tiny_policy)
    saved = tiny_policy.adapter_state()
    tiny_policy.save_adapter(tmp_path / "adapter.safetensors")
    nudge(tiny_policy)
    tiny_policy.load_adapter(tmp_path / "adapter.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in tiny_policy.adapter_state().items())
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(PolicyLoadError, match="bad.safetensors"):
        tiny_policy.load_adapter(tmp_path / "bad.safetensors")


def test_loads_a_local_directory_like_a_hub_model(tiny_policy, tmp_path):
    shutil.copytree(CHECKPOINT_DIR, tmp_path / "model")
    other = Policy.from_pretrained(str(tmp_path / "model"), lora={"r": 4, "lora_alpha": 8})
    assert other.lora.r == 4
    ids = torch.tensor([other.encode(["Pay 7 with 2 5.\n"])[0]])
    with torch.no_grad(), other.reference(), tiny_policy.reference():
        assert torch.allclose(other.model(ids).logits, tiny_policy.model(ids).logits, atol=1e-6)


def test_unreachable_hub_name_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    with pytest.raises(PolicyLoadError, match="not-a-real-org/not-a-model.*local"):
        Policy.from_pretrained("not-a-real-org/not-a-model")
    assert time.time() - started < 30


def test_missing_local_path_is_named():
    with pytest.raises(PolicyLoadError, match="/no/such/model"):
        Policy.from_pretrained("/no/such/model")
