"""Issue 33 item 1: a TRL script of one's own, changed by one import and ``run_dir=``, trains exactly
as with trl.GRPOTrainer (recording changes nothing) and its run opens in the widgets and the report."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # CI installs the [scale] extra: there a missing TRL fails
    pytest.importorskip("trl", reason="the TRL backend needs the [scale] extra")

from workbench.run.store import RunStore  # noqa: E402

# a user's script: its own dataset, reward function, GRPOConfig and LoRA; TRAINER and RUN_DIR vary
SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer
    from workbench.integrations.trl import WorkbenchGRPOTrainer
    from workbench.models.loading import resolve

    torch.set_num_threads(1)
    MODEL, OUT, RUN_DIR = str(resolve("tiny")), sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    METHOD = {"method": sys.argv[3]} if len(sys.argv) > 3 else {}

    def digits(prompts, completions, **kwargs):  # differs within a group
        return [float(sum(ch.isdigit() for ch in c) % 3) for c in completions]

    dataset = Dataset.from_dict({"prompt": [f"Make {n} from 3 5 7.\\n" for n in range(10, 40)]})
    args = GRPOConfig(output_dir=OUT, per_device_train_batch_size=4, num_generations=4, max_completion_length=12,
                      max_steps=3, learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to="none",
                      seed=7, use_cpu=True, bf16=False, beta=0.0, temperature=1.0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1, task_type="CAUSAL_LM")
    if RUN_DIR is None:
        trainer = GRPOTrainer(model=MODEL, reward_funcs=[digits], args=args, train_dataset=dataset, peft_config=lora)
    else:
        trainer = WorkbenchGRPOTrainer(model=MODEL, reward_funcs=[digits], args=args, train_dataset=dataset,
                                       peft_config=lora, run_dir=RUN_DIR, **METHOD)
    trainer.train()
    logs = [{k: v for k, v in e.items() if k in ("loss", "grad_norm", "reward")} for e in trainer.state.log_history if "loss" in e]
    adapter = {n: p.detach().double().sum().item() for n, p in trainer.model.named_parameters() if "lora_" in n}
    json.dump({"logs": logs, "adapter": adapter, "type": type(trainer).__name__}, open(OUT + "/result.json", "w"))
    """
)


def _run(tmp_path: Path, name: str, *run_dir: str) -> dict:
    import json

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = tmp_path / name
    out.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script), str(out), *run_dir], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_a_trl_script_with_the_drop_in_trains_exactly_as_trl_and_is_recorded(tmp_path):
    stock = _run(tmp_path, "stock")
    run = tmp_path / "run"
    recorded = _run(tmp_path, "recorded", str(run))
    assert recorded["type"] == "RecordingGRPOTrainer" and stock["type"] == "GRPOTrainer"
    # recording changes nothing: TRL's loss, gradient norm, rewards and the adapter after 3 steps
    assert recorded["logs"] == stock["logs"] and len(stock["logs"]) == 3
    assert recorded["adapter"] == stock["adapter"]
    assert any(log["grad_norm"] > 0 for log in stock["logs"])  # the adapter moved: the equality says something

    store = RunStore(run)
    rows = store.read_metrics()
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["reward_mean"] for r in rows] == pytest.approx([log["reward"] for log in stock["logs"]])
    assert [r["loss"] for r in rows] == [log["loss"] for log in stock["logs"]]  # TRL's numbers, TRL's names kept
    assert all("frac_reward_zero_std" in r and "completions/mean_length" in r for r in rows)
    assert store.config().task == "external:trl-script" and store.config().num_generations == 4
    assert store.backend()["backend"] == "trl-script" and store.backend()["grpo_config"]["learning_rate"] == 5e-3
    frame = store.read_rollouts(2)
    assert len(frame) == 4 and all(len(e) == n for e, n in zip(frame["entropy"], frame["length"]))
    assert all(len(k) == 5 * n for k, n in zip(frame["topk_ids"], frame["length"]))
    assert frame["prompt"].str.startswith("Make").all()

    from workbench import Trainer
    from workbench.config import ConfigError

    with pytest.raises(ConfigError, match=r"recorded from elsewhere \(trl-script\) and holds no checkpoints"):
        Trainer.resume(run)  # TRL trained it, into its own output_dir
    # the widgets and the report open it
    from widgets import TokenView, TrainingDashboard

    dashboard = TrainingDashboard(str(run))
    assert list(dashboard.trace("entropy_mean").x) == [0, 1, 2]
    TokenView(str(run))
    report = subprocess.run([sys.executable, "-m", "workbench.cli", "report", str(run), "--out", str(tmp_path / "r.html")],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr


@pytest.mark.slow
def test_the_drop_in_under_accelerate_with_two_processes_records_one_run(tmp_path):
    from test_trl_backend import ACCELERATE_ENV, free_port

    from workbench.run.lock import lock_held

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out, run = tmp_path / "out", tmp_path / "run"
    out.mkdir()
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(script), str(out), str(run)]
    done = subprocess.run(command, env=ACCELERATE_ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    store = RunStore(run)
    assert [r["step"] for r in store.read_metrics()] == [0, 1, 2]
    assert store.backend()["processes"] == 2
    for step in (0, 1, 2):
        frame = store.read_rollouts(step)
        # every process's rows, in TRL's order: two groups of 4, one sampled on each process
        assert len(frame) == 8 and sorted(frame["process"].unique()) == [0, 1]
        assert sorted(frame["group"].unique()) == [0, 1]
        assert all(len(e) == n for e, n in zip(frame["entropy"], frame["length"]))
    assert lock_held(run) is False


@pytest.mark.slow
def test_a_workbench_method_in_the_drop_in_trains_on_trls_samples_and_the_users_rewards(tmp_path):
    run = tmp_path / "run"
    result = _run(tmp_path, "erpo", str(run), "erpo")
    store = RunStore(run)
    assert store.config().method == "erpo"
    rows = store.read_metrics()
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all("erpo_gate_elsewhere" in r for r in rows)  # ERPO's own numbers, from its gate on TRL's samples
    assert [r["reward_mean"] for r in rows] == pytest.approx([log["reward"] for log in result["logs"]])
    assert any(r["grad_norm"] > 0 for r in rows)  # the method's loss moved the adapter


def test_the_drop_in_refuses_what_it_cannot_train_in_one_line(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig

    from workbench.config import ConfigError
    from workbench.integrations.trl import WorkbenchGRPOTrainer
    from workbench.models.loading import resolve

    dataset = Dataset.from_dict({"prompt": ["Make 10 from 3 5 7.\n"] * 4})
    args = GRPOConfig(output_dir=str(tmp_path / "o"), per_device_train_batch_size=6, num_generations=3,
                      max_completion_length=8, max_steps=1, report_to="none", use_cpu=True, bf16=False)
    kwargs = dict(model=str(resolve("tiny")), reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                  args=args, train_dataset=dataset, run_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="method='eepo' is not allowed: a method that trains on TRL's samples"):
        WorkbenchGRPOTrainer(**kwargs, method="eepo")
    # on several processes TRL checks only the whole generation batch; a method needs whole groups on each
    from types import SimpleNamespace

    from workbench.integrations.trl_recording import whole_groups

    with pytest.raises(ConfigError, match=r"per_device_train_batch_size=3 .*multiple of num_generations=2"):
        whole_groups(SimpleNamespace(per_device_train_batch_size=3, steps_per_generation=1), 2, "erpo")
    whole_groups(SimpleNamespace(per_device_train_batch_size=3, steps_per_generation=2), 2, "erpo")
    assert not (tmp_path / "run").exists()
