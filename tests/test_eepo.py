"""EEPO: the complementary loss, the unlearning step, exact restore, the gate, the phases."""

import pytest
import torch

from workbench import ConfigError, RunConfig, Trainer, core
from workbench.methods.eepo import unclipped_unlearning_loss, unlearning_loss

QUICK = dict(num_prompts=4, num_generations=4, max_completion_length=24, seed=2, method="eepo")


def test_unlearning_loss_by_hand():
    # p = 0.5 and 0.25 in sequence 0 (mask both), p = 0.999 clipped to 0.99 in sequence 1
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.999, 0.7]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    seq0 = (-torch.log(torch.tensor(0.5)) - torch.log(torch.tensor(0.75))) / 2
    seq1 = -torch.log(torch.tensor(0.01))
    assert torch.isclose(unlearning_loss(logp, mask, eps=0.01), (seq0 + seq1) / 2, atol=1e-5)


def test_unlearning_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    logp = torch.log(torch.rand(3, 5, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: unlearning_loss(x, mask, 0.01), (logp,))
    # d/d logp of -log(1 - p) is p / (1 - p): descent pushes likely tokens down hardest
    (grad,) = torch.autograd.grad(unlearning_loss(logp, mask, 0.01), logp)
    p = logp.detach().exp()
    expected = p / (1 - p) * mask / mask.sum(-1, keepdim=True) / 3
    assert torch.allclose(grad, expected)


def _sgd_step_on_target(p_target: float, unclip: bool, lr: float = 1.0) -> tuple[float, torch.Tensor]:
    """One SGD step of the unlearning loss on the logits of one token whose probability is
    ``p_target``: (its probability after, the gradient on the logits)."""
    others = torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64)
    q = torch.softmax(others, 0) * (1 - p_target)  # the other tokens share 1 - p
    logits = torch.log(torch.cat([torch.tensor([p_target], dtype=torch.float64), q]))[None, None].requires_grad_()
    ids, mask = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.float64)
    loss = (unclipped_unlearning_loss(core.complement_logprobs(logits, ids), mask) if unclip
            else unlearning_loss(core.selective_log_softmax(logits, ids), mask, eps=0.01))
    (grad,) = torch.autograd.grad(loss, logits)
    after = torch.softmax((logits - lr * grad).detach()[0, 0], 0)[0]
    return float(after), grad[0, 0]


def test_a_token_at_p_0995_moves_down_unclipped_and_not_under_the_papers_clip():
    after, grad = _sgd_step_on_target(0.995, unclip=False)
    assert after == pytest.approx(0.995, abs=1e-12) and (grad == 0).all()  # p > 1 - eps: no gradient at all
    after, grad = _sgd_step_on_target(0.995, unclip=True)
    assert after < 0.99
    assert grad[0].item() == pytest.approx(0.995, rel=1e-12)  # exactly +p on the target logit
    # below the clip both forms are the same loss
    assert _sgd_step_on_target(0.6, unclip=False)[0] == pytest.approx(_sgd_step_on_target(0.6, unclip=True)[0])


def test_the_complement_is_exact_where_one_minus_exp_logp_is_not():
    # a token at p = 1 - 1e-9 in float32: exp(logp) rounds to 1 and log(1 - p) to -inf; the
    # log-sum-exp of the other tokens keeps it
    logits = torch.tensor([[[0.0, -20.7232658, -30.0]]])
    ids = torch.zeros(1, 1, dtype=torch.long)
    exact = torch.log(torch.exp(torch.tensor([-20.7232658, -30.0], dtype=torch.float64)).sum()) - torch.logsumexp(
        logits.double(), -1)
    assert torch.isinf(torch.log1p(-core.selective_log_softmax(logits, ids).exp())).all()
    assert torch.allclose(core.complement_logprobs(logits, ids).double(), exact, rtol=1e-5)
    assert torch.allclose(core.complement_logprobs(logits * 2, ids, temperature=2.0), core.complement_logprobs(logits, ids))


def test_the_unclipped_unlearning_step_trains_and_moves_more_than_the_clipped_one():
    drops = {}
    for clip in ("paper", "none"):
        trainer = Trainer(RunConfig(**QUICK, method_options={"gate": "always", "unlearn_clip": clip,
                                                             "unlearn_max_grad_norm": None, "unlearn_lr": 0.3}))
        numbers = {phase.name: phase.numbers for phase in trainer.phases()}
        drops[clip] = numbers["unlearn"]["logp_drop"]
        assert numbers["metrics"]["loss"] == numbers["metrics"]["loss"]  # a finite update followed
    # the clip spares the near-deterministic tokens, so the unclipped step moves stage 1 further
    assert drops["none"] > drops["paper"] > 0


def test_one_step_lowers_stage1_logprobs_and_restores_the_adapter():
    trainer = Trainer(RunConfig(**QUICK, method_options={"gate": "always"}))
    before = trainer.policy.adapter_state()
    numbers = {}
    for phase in trainer.phases():
        numbers[phase.name] = phase.numbers
        if phase.name == "unlearn":
            moved = trainer.policy.adapter_state()
            assert any(not torch.equal(before[k], moved[k]) for k in before)
        if phase.name == "sample_stage2":
            restored = trainer.policy.adapter_state()
            assert all(torch.equal(before[k], restored[k]) for k in before)
    u = numbers["unlearn"]
    assert u["gate"] is True and u["logp_drop"] > 0 and u["kl_policy_rollout"] > 0
    m = numbers["metrics"]
    for key in ("stage1_accuracy", "stage2_accuracy", "stage1_distinct_strategies", "stage2_distinct_strategies",
                "stage_overlap_strategies", "eepo_kl_policy_rollout"):
        assert key in m


def test_exception_between_unlearn_and_stage2_restores_bit_for_bit(monkeypatch):
    trainer = Trainer(RunConfig(**QUICK, method_options={"gate": "always"}))
    before = trainer.policy.adapter_state()
    original = trainer.sample_group

    def fail_on_stage2(problems, n, **kwargs):
        if kwargs.get("stage") == 2:
            raise RuntimeError("interrupted")
        return original(problems, n, **kwargs)

    monkeypatch.setattr(trainer, "sample_group", fail_on_stage2)
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.step()
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.adapter_state().items())


def test_phase_sequence_and_five_steps_train():
    trainer = Trainer(RunConfig(**QUICK))
    names = [p.name for p in trainer.phases()]
    assert names == ["sample_stage1", "unlearn", "sample_stage2", "score", "advantage", "update", "metrics"]
    trainer.run(4, progress=False)
    h = trainer.history
    assert len(h) == 5 and h["loss"].notna().all() and (h["eepo_gate"].isin([0.0, 1.0])).all()
    assert (trainer.last_batch.stage.count(1), trainer.last_batch.stage.count(2)) == (8, 8)


def test_gate_switches():
    never = Trainer(RunConfig(**QUICK, method_options={"gate": "never"}))
    result = never.step()
    assert result.metrics["eepo_gate"] == 0.0 and result.metrics["eepo_kl_policy_rollout"] == 0.0
    # alpha above any entropy: the entropy gate opens
    opened = Trainer(RunConfig(**QUICK, method_options={"alpha": 100.0}))
    assert opened.step().metrics["eepo_gate"] == 1.0


def test_config_errors():
    with pytest.raises(ConfigError, match="method_options.unlearn_clip='min'.*paper, none"):
        RunConfig(method="eepo", method_options={"unlearn_clip": "min"})
    with pytest.raises(ConfigError, match="num_generations=5.*even"):
        RunConfig(method="eepo", num_generations=5)
    with pytest.raises(ConfigError, match="method_options.gate"):
        RunConfig(method="eepo", method_options={"gate": "sometimes"})


def test_stopping_after_unlearn_restores_the_adapter_at_once():
    trainer = Trainer(RunConfig(**QUICK, method_options={"gate": "always"}))
    before = trainer.policy.adapter_state()
    phases = trainer.phases()
    for phase in phases:
        if phase.name == "unlearn":
            break
    phases.close()
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.adapter_state().items())
    assert trainer.step().metrics["step"] == 0


def test_update_reusing_the_unlearning_pass_equals_a_fresh_forward(monkeypatch):
    from workbench.methods.eepo import EEPO

    sample = EEPO.sample

    def sample_without_the_kept_graph(self, ctx, problems):
        batch = yield from sample(self, ctx, problems)
        assert batch.graph_logprobs is not None  # what the reused run hands to the update
        batch.graph_logprobs = None
        return batch

    results = []
    for reuse in (True, False):
        if not reuse:
            monkeypatch.setattr(EEPO, "sample", sample_without_the_kept_graph)
        trainer = Trainer(RunConfig(**QUICK, learning_rate=1e-2, method_options={"gate": "always"}))
        metrics = trainer.step().metrics
        results.append((trainer.policy.adapter_state(), metrics["loss"]))
    (reused, loss_reused), (fresh, loss_fresh) = results
    assert abs(loss_reused - loss_fresh) < 1e-6
    assert max((reused[k] - fresh[k]).abs().max() for k in reused) < 1e-4
    assert any((reused[k] != 0).any() for k in reused)


def unlearning_step(options):
    """The adapter's move in the unlearn phase (L2 norm over all tensors) and the step's metrics."""
    trainer = Trainer(RunConfig(**QUICK, method_options={"gate": "always", **options}))
    before = trainer.policy.adapter_state()
    for phase in trainer.phases():
        if phase.name == "unlearn":
            moved = trainer.policy.adapter_state()
        if phase.name == "metrics":
            metrics = phase.numbers
    step = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(moved[k] - before[k]) for k in before]))
    return float(step), metrics


def test_unlearn_max_grad_norm_bounds_the_unlearning_step():
    free_step, free = unlearning_step({"unlearn_lr": 1.0, "unlearn_max_grad_norm": None})
    gradient_norm = free["eepo_unlearn_grad_norm"]
    assert free_step == pytest.approx(gradient_norm, rel=1e-3)  # plain SGD, lr 1: the step is the gradient
    clipped_step, clipped = unlearning_step({"unlearn_lr": 1.0, "unlearn_max_grad_norm": gradient_norm / 4})
    assert clipped["eepo_unlearn_grad_norm"] == pytest.approx(gradient_norm)  # reported before clipping
    assert clipped_step == pytest.approx(gradient_norm / 4, rel=1e-3)
    assert 0 < clipped["eepo_logp_drop"] < free["eepo_logp_drop"]
    roomy_step, roomy = unlearning_step({"unlearn_lr": 1.0, "unlearn_max_grad_norm": gradient_norm * 4})
    assert roomy["eepo_unlearn_grad_norm"] == pytest.approx(gradient_norm)
    assert roomy_step == pytest.approx(free_step, rel=1e-6)  # a bound above the norm changes nothing


def test_unlearning_gradient_is_clipped_by_default():
    step, metrics = unlearning_step({"unlearn_lr": 1.0})
    assert step == pytest.approx(min(metrics["eepo_unlearn_grad_norm"], 0.3), rel=1e-3)


@pytest.mark.parametrize("value", [0, -1.0, True, "1", float("nan")])
def test_unlearn_max_grad_norm_must_be_a_positive_number(value):
    with pytest.raises(ConfigError, match="unlearn_max_grad_norm"):
        RunConfig(**QUICK, method_options={"unlearn_max_grad_norm": value})
