"""Issue 35 item 1: the precision chosen by the hardware. ``dtype="auto"`` measures this CPU once
(cached), a run records what it chose, half precision stores the frozen base in it (the adapter and
the optimiser stay float32), a resumed run keeps its own, and ERPO's noise floor follows it."""

from __future__ import annotations

import json

import pytest
import torch

from workbench import RunConfig, Trainer
from workbench.config import ConfigError
from workbench.engine import devices
from workbench.methods import get
from workbench.methods.erpo import NOISE_FLOOR
from workbench.run.store import RunStore

TINY = dict(num_prompts=2, num_generations=4, max_completion_length=8, threads=1)


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """dtype="auto" measured (not told by $WORKBENCH_CPU_DTYPE), the probe cached under ``tmp_path``."""
    monkeypatch.delenv(devices.CPU_DTYPE_VARIABLE, raising=False)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / devices.PROBE_FILE


def test_the_probe_runs_once_a_machine_and_decides_by_the_ratio(measured, monkeypatch):
    result = devices.cpu_bf16_probe()
    assert result["bf16_faster"] == (result["bfloat16_s"] < devices.BF16_FASTER_BELOW * result["float32_s"])
    assert devices.precision("auto", torch.device("cpu")) == ("bfloat16" if result["bf16_faster"] else "float32")
    monkeypatch.setattr(devices, "_measure", lambda: pytest.fail("measured twice"))
    assert devices.cpu_bf16_probe() == result  # cached: read, not measured again
    (key,) = json.loads(measured.read_text())
    assert f"{torch.get_num_threads()} threads" in key and torch.__version__ in key


def fast_bf16(monkeypatch, measured, faster: bool):
    measured.parent.mkdir(parents=True)
    monkeypatch.setattr(devices, "_measure", lambda: {"float32_s": 1.0, "bfloat16_s": 0.2, "bf16_faster": faster})


def test_a_cpu_with_fast_bf16_trains_a_bf16_base_and_records_it(measured, monkeypatch, tmp_path):
    fast_bf16(monkeypatch, measured, faster=True)
    run = tmp_path / "run"
    trainer = Trainer(RunConfig(**TINY), out_dir=run)
    assert trainer.cfg.dtype == "bfloat16" and RunStore(run).config().dtype == "bfloat16"
    params = dict(trainer.policy.model.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}
    trainer.step()
    state = trainer.optimizer.state_dict()["state"]
    assert {t.dtype for s in state.values() for t in s.values() if t.dim()} == {torch.float32}
    row = trainer.records[0]
    # the bf16 sampler and the training pass round differently: the metric shows it
    assert row["sampling_logp_difference_max"] > 1e-4
    assert get("erpo")(trainer.cfg.replace(method="erpo")).noise_floor == NOISE_FLOOR["bfloat16"]
    trainer.close()
    # resumed on a machine whose probe says otherwise, the run keeps its own precision
    monkeypatch.setattr(devices, "cpu_bf16_probe", lambda: {"bf16_faster": False})
    assert Trainer.resume(run).cfg.dtype == "bfloat16"


def test_a_cpu_without_fast_bf16_stays_float32_and_old_auto_runs_resume_as_they_trained(
    measured, monkeypatch, tmp_path
):
    fast_bf16(monkeypatch, measured, faster=False)
    trainer = Trainer(RunConfig(**TINY, method="erpo"))
    assert trainer.cfg.dtype == "float32" and trainer.autocast_dtype is None
    assert trainer.method.noise_floor == 1e-6  # float32's rounding noise, not the old 1e-3
    assert Trainer(RunConfig(**TINY, dtype="bfloat16")).cfg.dtype == "bfloat16"  # dtype= overrides
    # a run directory written before the probe records "auto": it resumes in what it trained in then
    run = tmp_path / "old"
    first = Trainer(RunConfig(**TINY, checkpoint_every=1), out_dir=run)
    first.run(1, progress=False)
    first.close()
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("dtype: float32", "dtype: auto"))
    assert RunStore(run).config().dtype == "auto"
    monkeypatch.setattr(devices, "cpu_bf16_probe", lambda: {"bf16_faster": True})
    assert Trainer.resume(run).cfg.dtype == "float32"


def test_the_cpu_choice_can_be_told(monkeypatch):
    monkeypatch.setenv(devices.CPU_DTYPE_VARIABLE, "bfloat16")
    assert devices.precision("auto", torch.device("cpu")) == "bfloat16"
    monkeypatch.setenv(devices.CPU_DTYPE_VARIABLE, "fp8")
    with pytest.raises(ConfigError, match=r"\$WORKBENCH_CPU_DTYPE='fp8' is not allowed: one of float32, bfloat16"):
        devices.precision("auto", torch.device("cpu"))
    assert devices.precision("auto", torch.device("cuda")) == "bfloat16"
