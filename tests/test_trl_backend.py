"""The TRL backend (workbench.integrations.trl): the same step as the workbench's own Trainer on the
same batch, and a run under accelerate with two processes that writes one run directory.

The equality tests inject the workbench's sampled completions into TRL's generation, so both
engines see the same model, adapter, prompts and tokens; what may differ is only the arithmetic
path (TRL's fused log-prob head against the workbench's shared-prefix pass), hence tolerances."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("CI") != "true":  # CI installs the [scale] extra: there a missing TRL fails
    pytest.importorskip("trl", reason="the TRL backend needs the [scale] extra")

from workbench import RolloutBatch, RunConfig, Trainer, methods  # noqa: E402
from workbench.config import ConfigError  # noqa: E402
from workbench.engine import update  # noqa: E402
from workbench.integrations.trl import WorkbenchGRPOTrainer  # noqa: E402
from workbench.run.store import RunStore  # noqa: E402

# long enough that responses end at different lengths (the loss types then differ)
SMALL = {"num_prompts": 2, "num_generations": 6, "max_completion_length": 24, "threads": 1, "seed": 3}
CASES = {
    "grpo": {}, "erpo": {}, "poly_epo": {}, "grpo_div": {}, "entropy_advantage": {}, "entropy_bonus": {},
    "top_entropy": {}, "clip_higher": {}, "kl_cov": {},
    "grpo-kl": {"beta": 0.04}, "grpo-dr_grpo": {"loss_type": "dr_grpo"}, "erpo-grpo_loss": {"loss_type": "grpo"},
    "eepo-A": {"method_options": {"gate": "always"}},
    "eepo-B": {"method_options": {"gate": "always", "behaviour_logprobs": "B"}},
    "policy_split": {},
}


class InjectedCompletions(WorkbenchGRPOTrainer):
    """TRL's generation replaced by given completions (token ids, one list per row)."""

    completions: list[list[int]] = []

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        assert len(prompt_ids) == len(self.completions)
        return [list(c) for c in self.completions], None


def workbench_step(cfg: RunConfig):
    """A workbench Trainer one step in (so the adapter is off the reference), step 1's batch and
    training rows with their advantages, and the loss and adapter gradient of the update (without
    the optimizer step)."""
    wb = Trainer(cfg)
    wb.step()
    adapter = wb.policy.adapter_state()
    problems = wb.train_problems()
    phases = wb.method.sample(wb, problems)
    try:
        while True:
            next(phases)
    except StopIteration as done:
        batch = done.value
    wb.score(batch)
    wb.method.advantages(wb, batch)
    settings = wb.method.loss_settings()
    train = batch.rows_to_train()
    plan = update.plan_update(wb, train, settings)
    wb.policy.model.train()
    wb.optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for c in range(len(plan.chunks)):
        part, _, _ = update.micro_batch_loss(wb, train, plan, c, 0, settings, record=True)
        part.backward()
        loss += float(part.detach())
    grads = {n: p.grad.detach().clone() for n, p in wb.policy.trainable_parameters().items()}
    return adapter, problems, batch, train, loss, grads


def trl_rows(batch) -> list[int]:
    """The workbench batch's rows in TRL's order: group-major, the method's order within a group."""
    return sorted(range(len(batch)), key=lambda i: (int(batch.group[i]), i))


@pytest.mark.parametrize("case", list(CASES))
def test_the_trl_step_computes_the_workbench_advantages_and_loss(case, tmp_path):
    method = case.split("-")[0]
    cfg = RunConfig(method=method, **SMALL, **CASES[case])
    adapter, problems, batch, train, wb_loss, wb_grads = workbench_step(cfg)
    own = methods.get(method).samples_on_its_own()
    # a method that samples on its own samples again on TRL's side, with the same seeds and adapter;
    # TRL's generation gets the workbench's completions injected
    tr = (WorkbenchGRPOTrainer if own else InjectedCompletions)(cfg, tmp_path / "run", steps=2)
    tr.policy.load_adapter_state(adapter)
    lengths = batch.mask.sum(-1).long().tolist()
    assert len(set(lengths)) > 1
    tr.completions = [batch.ids[i, :n].tolist() for i, n in enumerate(lengths)]
    g, p = cfg.num_generations, cfg.num_prompts
    assert [x.id for x in tr.problems[p:2 * p]] == [x.id for x in problems]  # step 1 trains on the same prompts
    inputs = [{"prompt": x.prompt, "problem": p + j} for j, x in enumerate(problems) for _ in range(g)]
    tr.state.global_step = 1
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    out = tr._generate_and_score_completions(inputs)
    assert tr.model.training  # sampling on its own must not leave the model in eval mode

    order = trl_rows(batch) if own else list(range(len(batch)))
    batch = batch.select(order)
    if own:
        assert torch.equal(tr._sampled.ids, batch.ids)  # the same tokens sampled on both sides
    train = train.select(order + [len(order) + i for i in order] if len(train) > len(order) else order)
    mask = train.mask.bool()
    width = train.mask.shape[1]
    assert torch.equal(out["completion_mask"].bool()[:, :width].cpu(), mask[:, :out["completion_mask"].shape[1]])
    assert [s.reward for s in tr._scores] == batch.rewards.tolist()
    trl_advantages = out["advantages"].cpu()[:, :width]
    torch.testing.assert_close(trl_advantages[mask], train.token_advantages[mask], atol=2e-4, rtol=1e-4)

    # the telemetry the main process will write: the sampler's numbers (from TRL's side's scoring
    # pass, or its own sampler)
    recorded = RolloutBatch.from_frame(tr._pending["frames"][0])
    sampled = batch.mask.bool()
    for name in ("logprobs", "entropy", "topk_probs"):
        torch.testing.assert_close(getattr(recorded, name)[sampled], getattr(batch, name)[sampled], atol=1e-4, rtol=1e-4)
    assert (recorded.topk_ids[sampled][:, 0] == batch.topk_ids[sampled][:, 0]).float().mean() > 0.99  # ties may swap
    assert recorded.stage == batch.stage and recorded.mode == batch.mode

    loss = tr.compute_loss(tr.model, out)
    loss.backward()
    # the loss sums advantages that nearly cancel: its error is absolute, of the advantages' (ERPO: 2e-5)
    assert abs(float(loss) - wb_loss) <= 1e-5 + 1e-4 * abs(wb_loss), (float(loss), wb_loss)
    trl_grads = {n: p.grad for n, p in tr.policy.trainable_parameters().items()}
    assert trl_grads.keys() == wb_grads.keys()
    flat_trl = torch.cat([trl_grads[n].flatten() for n in wb_grads])
    flat_wb = torch.cat([wb_grads[n].flatten() for n in wb_grads])
    assert flat_wb.norm() > 0
    # measured: 1e-6 to 1e-5 relative (float32 along two paths)
    assert (flat_trl - flat_wb).norm() <= 1e-4 * flat_wb.norm(), float((flat_trl - flat_wb).norm() / flat_wb.norm())


def test_methods_that_sample_on_their_own_cannot_use_vllm(tmp_path):
    own = [name for name in methods.names() if methods.get(name).samples_on_its_own()]
    assert own == ["eepo", "policy_split"]
    with pytest.raises(ConfigError, match="trl.use_vllm=True.*eepo.*workbench's sampler"):
        WorkbenchGRPOTrainer(RunConfig(method="eepo", **SMALL), tmp_path / "run", steps=1, use_vllm=True)
    assert not (tmp_path / "run").exists()


def test_trl_fields_the_run_config_sets_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="trl.learning_rate.*--set"):
        WorkbenchGRPOTrainer(RunConfig(**SMALL), tmp_path / "run", steps=1, learning_rate=1e-3)
    with pytest.raises(ConfigError, match="trl.no_such_field.*GRPOConfig"):
        WorkbenchGRPOTrainer(RunConfig(**SMALL), tmp_path / "run", steps=1, no_such_field=1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ACCELERATE_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                  "HF_HUB_DISABLE_TELEMETRY": "1"}


def accelerate_command(run: Path, method: str, steps: int, *extra: str) -> list[str]:
    """``workbench train --backend trl`` under ``accelerate launch`` with 2 CPU processes (DDP on gloo).

    accelerate 1.15's ``--cpu`` launcher starts one process unless MPI is installed; its torchrun
    launcher (``--multi_gpu``) starts two, which join over gloo on a machine with no GPU (hidden here)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "workbench.cli", "train", "--backend", "trl", "--method", method, "--steps", str(steps),
            "--out", str(run), *extra]


def accelerate_train(run: Path, method: str, steps: int, *extra: str) -> subprocess.CompletedProcess:
    command = accelerate_command(run, method, steps, *extra)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ACCELERATE_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("method", ["erpo", "poly_epo", "eepo", "policy_split"])
def test_two_processes_under_accelerate_write_one_run_directory(method, tmp_path):
    from workbench.run.lock import lock_held

    run = tmp_path / "run"
    small = ["--set", "num_prompts=2", "--set", "num_generations=6", "--set", "max_completion_length=16"]
    if method == "eepo":  # the unlearning step between the stages, every step
        small += ["--set", "method_options.gate=always"]
    done = accelerate_train(run, method, 2, *small)
    assert done.stdout.count(f"run {run}: 2 steps on TRL (2 processes)") == 1  # the main process reports
    store = RunStore(run)
    assert store.config().method == method
    assert [row["step"] for row in store.read_metrics()] == [0, 1]
    for step in (0, 1):
        frame = store.read_rollouts(step)
        # every row of the step, half from each process, whole groups on each
        assert len(frame) == 12 and sorted(frame["process"].unique()) == [0, 1]
        assert frame.groupby("process")["group"].nunique().tolist() == [1, 1]
        assert all(len(e) == n == len(ids) for e, n, ids in zip(frame["entropy"], frame["length"], frame["token_ids"]))
        assert all(len(k) == 5 * n for k, n in zip(frame["topk_ids"], frame["length"]))
    assert lock_held(run) is False  # let go at the end: one writer, and it is done
    rows = store.read_metrics()
    if method == "eepo":  # both stages on both processes, the unlearning step taken
        assert sorted(store.read_rollouts(0).groupby(["process", "stage"]).size().tolist()) == [3, 3, 3, 3]
        assert all(row["eepo_gate"] == 1.0 and row["eepo_logp_drop"] > 0 for row in rows)
    if method == "policy_split":
        assert sorted(store.read_rollouts(0).groupby(["process", "mode"]).size().tolist()) == [3, 3, 3, 3]
        assert all(math.isfinite(row["kl_high_entropy_to_other"]) for row in rows)
    if method != "erpo":
        return
    # resumable: from TRL's checkpoint at step 2, one more step, nothing written twice
    accelerate_train(run, method, 3, "--resume")
    assert [row["step"] for row in store.read_metrics()] == [0, 1, 2]
    assert store.rollout_steps() == [0, 1, 2]
    report = subprocess.run([sys.executable, "-m", "workbench.cli", "report", str(run), "--out", str(tmp_path / "r.html")],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "entropy" in (tmp_path / "r.html").read_text()


def test_the_reference_is_the_base_model_whatever_adapter_the_run_starts_from(tmp_path):
    from workbench import Policy

    cfg = RunConfig(**SMALL, beta=0.04)
    policy = Policy.for_run(cfg)
    g = torch.Generator().manual_seed(0)
    policy.load_adapter_state({name: torch.randn(t.shape, generator=g) * 0.05 if "lora_B" in name else t
                               for name, t in policy.adapter_state().items()})  # a trained adapter, say
    tr = WorkbenchGRPOTrainer(cfg, tmp_path / "run", steps=1, policy=policy)
    problems = tr.problems[:cfg.num_prompts]
    out = tr._generate_and_score_completions(
        [{"prompt": p.prompt, "problem": j} for j, p in enumerate(problems) for _ in range(cfg.num_generations)])
    mask = out["completion_mask"].bool()
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(out["prompt_ids"], out["prompt_mask"])]
    base, _ = tr.token_logprobs(prompt_ids, out["completion_ids"], adapter="reference")
    policy_logp, _ = tr.token_logprobs(prompt_ids, out["completion_ids"])
    assert (policy_logp - base)[mask].abs().max() > 1e-2  # the adapter moved the policy
    torch.testing.assert_close(out["ref_per_token_logps"][mask], base[mask], atol=1e-4, rtol=1e-4)
