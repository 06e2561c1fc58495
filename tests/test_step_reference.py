"""The step checked from outside the workbench.

Two engines that call one step share its bugs, so an equality test between them cannot see one.
Here each side is checked against code that is not the workbench's:

- EEPO, Policy Split, ERPO and Poly-EPO: the workbench Trainer's token advantages, loss and adapter
  gradient equal float64 references written from docs/METHODS.md (tests/step_reference.py), which
  run the model directly, unlearning step, both contexts, the reference policy and the set
  enumeration included.
- GRPO with loss types dapo, dr_grpo and grpo, clip-higher, the entropy bonus, the top-entropy
  tokens and the KL term: the TRL backend's advantages, loss and gradient equal stock
  ``trl.GRPOTrainer``'s on the same prompts, completions and rewards (TRL computes one side).
- A mutation check: three bugs that an engine-vs-engine test once let through (Policy Split's bonus
  x -3; ERPO's progress sign flipped with eta x 5; the PPO clip at 0.9/0.01), each planted in a copy
  of the package, make these tests fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import step_reference as ref
import torch

from workbench import RunConfig, Trainer
from workbench.engine import update

SMALL = {"num_prompts": 2, "num_generations": 6, "max_completion_length": 24, "threads": 1, "seed": 3}


def perturbed(trainer: Trainer, seed: int = 0) -> Trainer:
    """The trainer with its LoRA B matrices moved off zero (seeded), so that the policy differs from
    the reference and every term of the loss has a gradient; small enough that it still solves."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.lora_parameters(trainer.policy.model).items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return trainer


@contextlib.contextmanager
def step_at_advantages(trainer: Trainer):
    """Step 0 of ``trainer`` stopped after its advantages (the update has not run), discarded on exit."""
    phases = trainer.phases()
    for phase in phases:
        if phase.name == "advantage":
            break
    try:
        yield phase.batch
    finally:
        phases.close()


def workbench_loss_and_grads(trainer: Trainer, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """The Trainer's update on ``batch`` without its optimizer step: the loss and the adapter gradient."""
    settings, train = trainer.method.loss_settings(), batch.rows_to_train()
    plan = update.plan_update(trainer, train, settings)
    trainer.policy.model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for c in range(len(plan.chunks)):
        part, _, _ = update.micro_batch_loss(trainer, train, plan, c, 0, settings, record=True)
        part.backward()
        loss += float(part.detach())
    grads = {n: p.grad.detach().clone() for n, p in ref.lora_parameters(trainer.policy.model).items()}
    trainer.optimizer.zero_grad(set_to_none=True)
    return loss, grads


def rows(batch, prompts=None) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, completion ids) of each row, the prompts as sampled unless given."""
    lengths = batch.mask.sum(-1).long().tolist()
    return (list(prompts or batch.prompt_ids), [batch.ids[i, :n].tolist() for i, n in enumerate(lengths)])


def reference_loss_and_grads(model, prompts, completions, advantages, mask, cfg, old=None, loss_type=None,
                             epsilon_high=None) -> tuple[float, dict[str, torch.Tensor]]:
    """The PPO-clip loss (METHODS.md section 0) of the given rows and its adapter gradient; ``old``
    [R, T] replaces the detached current log-probs where it is not NaN."""
    width = mask.shape[1]
    logp = ref.batch_logprobs(model, prompts, completions, width, cfg.temperature)
    logp_old = logp.detach() if old is None else torch.where(torch.isnan(old), logp.detach(), old)
    token_loss = ref.ppo_clip_loss(logp, logp_old, advantages, cfg.epsilon, epsilon_high or cfg.epsilon)
    loss = ref.aggregate(token_loss, mask.double(), loss_type or cfg.loss_type, cfg.max_completion_length)
    params = ref.lora_parameters(model)
    grads = torch.autograd.grad(loss, list(params.values()))
    return float(loss.detach()), dict(zip(params, grads))


def assert_same(wb_loss, wb_grads, ref_loss, ref_grads):
    assert abs(wb_loss - ref_loss) <= 1e-6 + 1e-4 * abs(ref_loss), (wb_loss, ref_loss)
    flat_wb = torch.cat([wb_grads[n].flatten().double() for n in ref_grads])
    flat_ref = torch.cat([ref_grads[n].flatten() for n in ref_grads])
    assert flat_ref.norm() > 0
    # float32 model, float64 head on the reference side: measured 2.9e-6 to 5.4e-6 relative (embedded model)
    assert (flat_wb - flat_ref).norm() <= 1e-3 * flat_ref.norm(), float((flat_wb - flat_ref).norm() / flat_ref.norm())


def sequence_advantages(batch, scale="group") -> torch.Tensor:
    """[N] float64 GRPO advantages of every row over its whole group (reference side)."""
    out = torch.zeros(len(batch), dtype=torch.float64)
    for g in range(batch.num_groups):
        members = [i for i in range(len(batch)) if int(batch.group[i]) == g]
        for i, a in zip(members, ref.group_advantages([float(batch.rewards[i]) for i in members], scale)):
            out[i] = a
    return out


# --- the four exploration methods against their references ------------------------------------------
def test_eepo_matches_its_reference():
    trainer = perturbed(Trainer(RunConfig(method="eepo", method_options={"gate": "always"}, **SMALL)))
    with step_at_advantages(trainer) as batch:
        check_eepo(trainer, batch)


def check_eepo(trainer: Trainer, batch) -> None:
    # first: the update reuses the unlearning pass's graph, which the reference's adapter swaps would invalidate
    workbench = workbench_loss_and_grads(trainer, batch)
    model, o = trainer.policy.model, trainer.method.options
    stage1 = torch.tensor(batch.stage) == 1
    prompts, completions = rows(batch)
    first = [i for i in range(len(batch)) if stage1[i]]
    moved = ref.eepo_moved_adapter(model, [prompts[i] for i in first], [completions[i] for i in first],
                                   batch.mask.shape[1], o["eps"], o["unlearn_lr"], o["unlearn_max_grad_norm"])
    with torch.no_grad():
        current = ref.batch_logprobs(model, prompts, completions, batch.mask.shape[1])
        with ref.moved_adapter(model, moved):  # the rollout model that sampled stage 2
            behaviour = ref.batch_logprobs(model, prompts, completions, batch.mask.shape[1])
    second, valid = ~stage1, batch.mask.bool()
    torch.testing.assert_close(batch.logprobs[second][valid[second]].double(), behaviour[second][valid[second]],
                               atol=2e-4, rtol=0)
    assert (behaviour - current)[second][valid[second]].abs().mean() > 1e-2  # the step moved the rollout model

    advantages = sequence_advantages(batch)[:, None] * batch.mask.double()
    torch.testing.assert_close(batch.token_advantages.double(), advantages, atol=1e-5, rtol=1e-5)
    # option A: each stage's sampling model is its old policy (stage 1: the policy itself)
    old = torch.where(second[:, None], behaviour, torch.full_like(behaviour, float("nan")))
    ref_loss, ref_grads = reference_loss_and_grads(model, prompts, completions, advantages, batch.mask, trainer.cfg, old)
    assert_same(*workbench, ref_loss, ref_grads)


def test_policy_split_matches_its_reference():
    trainer = perturbed(Trainer(RunConfig(method="policy_split", **SMALL)))
    with step_at_advantages(trainer) as batch:
        check_policy_split(trainer, batch)


def check_policy_split(trainer: Trainer, batch) -> None:
    model, o, n = trainer.policy.model, trainer.method.options, len(batch)
    _, completions = rows(batch)
    context = {}  # each group's prompt in each mode, as its rows of that mode were sampled after
    for i in range(n):
        context[(int(batch.group[i]), batch.mode[i])] = batch.prompt_ids[i]
    in_mode = {mode: [context[(int(g), mode)] for g in batch.group] for mode in ("normal", "high_entropy")}
    width = batch.mask.shape[1]
    with torch.no_grad():
        logp = {mode: ref.batch_logprobs(model, in_mode[mode], completions, width) for mode in in_mode}
    A = sequence_advantages(batch)
    bonus = torch.zeros(n, width, dtype=torch.float64)
    for g in range(batch.num_groups):
        members = [i for i in range(n) if int(batch.group[i]) == g]
        bonus[members] = ref.policy_split_bonus(A[members].tolist(), logp["high_entropy"][members],
                                                logp["normal"][members], batch.mask[members].double(),
                                                o["alpha"], o["eta"], o["kappa"])
    mask = batch.mask.double()
    normal_rows, he_rows = A[:, None] * mask, A[:, None] * mask + bonus
    assert bonus.abs().sum() > 0
    train = batch.rows_to_train()  # every response in the normal context, then in the HE context
    torch.testing.assert_close(train.token_advantages.double(), torch.cat([normal_rows, he_rows]), atol=1e-5, rtol=1e-5)
    ref_loss, ref_grads = reference_loss_and_grads(
        model, in_mode["normal"] + in_mode["high_entropy"], completions + completions,
        torch.cat([normal_rows, he_rows]), torch.cat([batch.mask, batch.mask]), trainer.cfg)
    assert_same(*workbench_loss_and_grads(trainer, batch), ref_loss, ref_grads)


def test_erpo_matches_its_reference():
    # a floor above float32 rounding of the float32 progress: its bucket z-scores are compared with float64's
    trainer = perturbed(Trainer(RunConfig(method="erpo", **SMALL, method_options={"noise_floor": 1e-3})))
    with step_at_advantages(trainer) as batch:
        check_erpo(trainer, batch)


def check_erpo(trainer: Trainer, batch) -> None:
    model, o, n = trainer.policy.model, trainer.method.options, len(batch)
    prompts, completions = rows(batch)
    width = batch.mask.shape[1]
    with torch.no_grad():
        policy = ref.batch_logprobs(model, prompts, completions, width)
        entropy = ref.batch_logprobs(model, prompts, completions, width, entropy=True)
        with model.disable_adapter():  # the reference policy: the base model
            base = ref.batch_logprobs(model, prompts, completions, width)
    mask = batch.mask.double()
    # the entropies the sampler recorded (and the gate reads) are the policy's
    torch.testing.assert_close(batch.entropy.double() * mask, entropy * mask, atol=1e-4, rtol=1e-4)
    progress = (policy - base) * mask
    assert progress.abs().max() > 1e-2  # the adapter moved the policy: s is not rounding noise
    A = sequence_advantages(batch)
    expected = torch.zeros(n, width, dtype=torch.float64)
    for g in range(batch.num_groups):
        members = [i for i in range(n) if int(batch.group[i]) == g]
        expected[members] = ref.erpo_token_advantages(
            A[members].tolist(), entropy[members], progress[members], mask[members], o["gamma"], o["eta"],
            o["num_buckets"], o["noise_floor"])
    assert (expected - A[:, None] * mask).abs().max() > 1e-3  # the modulation acts
    torch.testing.assert_close(batch.token_advantages.double(), expected, atol=2e-5, rtol=1e-4)
    ref_loss, ref_grads = reference_loss_and_grads(model, prompts, completions, expected, batch.mask, trainer.cfg)
    assert_same(*workbench_loss_and_grads(trainer, batch), ref_loss, ref_grads)


def test_poly_epo_matches_its_reference():
    trainer = perturbed(Trainer(RunConfig(method="poly_epo", **SMALL)))
    with step_at_advantages(trainer) as batch:
        check_poly_epo(trainer, batch)


def check_poly_epo(trainer: Trainer, batch) -> None:
    model, o, n = trainer.policy.model, trainer.method.options, len(batch)
    A = torch.zeros(n, dtype=torch.float64)
    for g in range(batch.num_groups):
        members = [i for i in range(n) if int(batch.group[i]) == g]
        clusters = ref.clusters_of([batch.strategies[i] for i in members])
        A[members] = torch.tensor(ref.polychromic_advantages([float(batch.rewards[i]) for i in members], clusters,
                                                             o["set_size"]), dtype=torch.float64)
    assert A.abs().sum() > 0
    advantages = A[:, None] * batch.mask.double()
    torch.testing.assert_close(batch.token_advantages.double(), advantages, atol=1e-6, rtol=1e-6)
    prompts, completions = rows(batch)
    # the paper's loss settings: constant length normalisation, clip 0.20 / 0.28
    ref_loss, ref_grads = reference_loss_and_grads(model, prompts, completions, advantages, batch.mask, trainer.cfg,
                                                   loss_type="dr_grpo", epsilon_high=0.28)
    assert_same(*workbench_loss_and_grads(trainer, batch), ref_loss, ref_grads)


# --- the mutation check -----------------------------------------------------------------------------
# Each: the test it must fail, and the edits (file, text, planted text) that plant the bug.
MUTATIONS = {
    "policy split's bonus x -3": ("policy_split", [
        ("workbench/methods/policy_split.py", "    return bonus * mask\n", "    return -3 * bonus * mask\n")]),
    "erpo's progress sign flipped, eta x 5": ("erpo", [
        ("workbench/methods/erpo.py", "progress = (old - ref) * mask", "progress = (ref - old) * mask"),
        ("workbench/methods/erpo.py", 'o["eta"], o["variant"]', '5 * o["eta"], o["variant"]')]),
    "the PPO clip at 0.9 / 0.01": ("eepo", [
        ("workbench/core.py", "    eps_high = epsilon if epsilon_high is None else epsilon_high\n",
         "    epsilon, eps_high = 0.9, 0.01\n")]),
}
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_planted_bug_makes_the_reference_tests_fail(mutation, tmp_path):
    test, edits = MUTATIONS[mutation]
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "workbench", copy / "workbench", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("conftest.py", "lab_browser.py", "step_reference.py", Path(__file__).name):
        (copy / "tests").mkdir(exist_ok=True)
        shutil.copy(ROOT / "tests" / name, copy / "tests" / name)
    for path, text, planted in edits:
        source = (copy / path).read_text()
        assert source.count(text) == 1, f"the code the mutation edits has changed: {text!r} in {path}"
        (copy / path).write_text(source.replace(text, planted))
    env = {**os.environ, "PYTHONPATH": str(copy)}
    where = subprocess.run([sys.executable, "-c", "import workbench; print(workbench.__file__)"], cwd=copy, env=env,
                           capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(copy))  # the mutated copy is what runs, not the installed package
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           f"tests/{Path(__file__).name}::test_{test}_matches_its_reference"],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "AssertionError" in done.stdout, done.stdout[-3000:]
