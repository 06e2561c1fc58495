"""The TRL backend's GRPO step against stock ``trl.GRPOTrainer``: TRL computes one side.

Both trainers get the same model and adapter, the same prompt ids, the same completions (injected
into TRL's generation) and the same reward function; stock TRL computes its own advantages and its
own loss, the backend the workbench's (``step.policy_loss`` over ``Method.advantages``). Their
advantages, loss and adapter gradient must agree, for the loss types dapo, dr_grpo and grpo, with
clip-higher, the entropy bonus, the top-entropy tokens and the KL term.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("CI") != "true":  # CI installs the [scale] extra: there a missing TRL fails
    pytest.importorskip("trl", reason="the TRL backend needs the [scale] extra")

import trl  # noqa: E402
from datasets import Dataset  # noqa: E402

from workbench import Policy, RunConfig, Trainer, methods, tasks  # noqa: E402
from workbench.integrations.trl import WorkbenchGRPOTrainer  # noqa: E402
from workbench.integrations.trl_config import grpo_config  # noqa: E402

SMALL = {"num_prompts": 2, "num_generations": 6, "max_completion_length": 24, "threads": 1, "seed": 3}
CASES = {
    "dapo": {},
    "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none"},
    "grpo": {"loss_type": "grpo"},
    "dapo-clip_higher": {"epsilon_high": 0.28},
    "dapo-entropy_bonus": {"entropy_coef": 0.05},
    "grpo-top_entropy": {"loss_type": "grpo", "top_entropy_quantile": 0.2},
    "dapo-top_entropy-entropy_bonus": {"top_entropy_quantile": 0.3, "entropy_coef": 0.05},
    "dr_grpo-kl": {"loss_type": "dr_grpo", "beta": 0.04},
}
# the RunConfig fields TRL reads from its own GRPOConfig when it computes the loss itself
STOCK_FIELDS = ("entropy_coef", "top_entropy_quantile")
# TRL 1.16 multiplies the KL term by the importance ratio by default (use_bias_correction_kl): 1 in
# value at one update per batch, but it adds KL x grad log p to the gradient. The workbench's KL term
# is METHODS.md's beta x k3, i.e. TRL's with the correction off.
STOCK_SETTINGS = {"use_bias_correction_kl": False}


def digits(prompts, completions, **_):
    """A reward that differs within a group: the number of digits in the completion, modulo 3."""
    return [float(sum(ch.isdigit() for ch in c) % 3) for c in completions]


class InjectedCompletions:
    """TRL's generation replaced by given completions (token ids, one list per row)."""

    prompt_ids: list[list[int]] = []
    completions: list[list[int]] = []

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        assert [list(p) for p in prompt_ids] == self.prompt_ids  # the prompts as the workbench formats them
        return [list(c) for c in self.completions], None


class StockTRL(InjectedCompletions, trl.GRPOTrainer):
    def _tokenize_prompts(self, prompts):  # the prompts' ids, as the completions were sampled after
        return [list(p) for p in self.prompt_ids], None, {}


class Backend(InjectedCompletions, WorkbenchGRPOTrainer):
    pass


def moved_adapter(policy: Policy, seed: int = 0) -> dict[str, torch.Tensor]:
    """The adapter with its B matrices off zero (seeded): a policy away from the reference."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=g) * 0.02 if "lora_B" in name else t
            for name, t in policy.adapter_state().items()}


def sampled(cfg: RunConfig, adapter):
    """Step 0's prompts and completions, sampled by the workbench with ``adapter`` (only data here)."""
    sampler = Trainer(cfg)
    sampler.policy.load_adapter_state(adapter)
    problems = sampler.train_problems()
    batch = sampler.sample_group(problems, cfg.num_generations)
    lengths = batch.mask.sum(-1).long().tolist()
    assert len(set(lengths)) > 1  # responses end at different lengths: the loss types differ
    return problems, batch.prompt_ids, [batch.ids[i, :n].tolist() for i, n in enumerate(lengths)]


def prepared(trainer, prompt_ids, completions):
    trainer.prompt_ids, trainer.completions = prompt_ids, completions
    trainer.state.global_step = 0
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def loss_and_grads(trainer, out) -> tuple[float, torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, out)
    loss.backward()
    params = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    return float(loss.detach()), torch.cat([params[n].grad.flatten() for n in sorted(params)])


@pytest.mark.parametrize("case", list(CASES))
def test_the_backend_step_equals_stock_trl(case, tmp_path):
    cfg = RunConfig(**SMALL, **CASES[case])
    probe = Policy.for_run(cfg)
    adapter = moved_adapter(probe)
    problems, prompt_ids, completions = sampled(cfg, adapter)
    inputs = [{"prompt": p.prompt, "problem": j} for j, p in enumerate(problems) for _ in range(cfg.num_generations)]

    backend = Backend(cfg, tmp_path / "run", steps=1, task=tasks.RewardFunctionTask(tasks.get(cfg.task), [digits]))
    backend.policy.load_adapter_state(adapter)
    ours = prepared(backend, prompt_ids, completions)._generate_and_score_completions(inputs)

    stock_policy = Policy.for_run(cfg)
    settings = methods.get(cfg.method)(cfg).loss_settings()
    args = grpo_config(cfg, settings, tmp_path / "stock", 1, **{k: getattr(cfg, k) for k in STOCK_FIELDS},
                       **STOCK_SETTINGS)
    stock = StockTRL(model=stock_policy.model, reward_funcs=[digits], args=args,
                     train_dataset=Dataset.from_dict({"prompt": [p.prompt for p in problems]}),
                     processing_class=stock_policy.tokenizer)
    # after the trainer is built: TRL's reference for a PEFT model is the adapter it was given (a fresh
    # one here: the base model), the workbench's the base with the adapter off
    stock_policy.load_adapter_state(adapter)
    theirs = prepared(stock, prompt_ids, completions)._generate_and_score_completions(inputs)

    mask = theirs["completion_mask"].bool()
    assert torch.equal(ours["completion_ids"][mask], theirs["completion_ids"][mask])
    assert theirs["advantages"].abs().sum() > 0  # the rewards differ within the groups
    torch.testing.assert_close(ours["advantages"][mask], theirs["advantages"][:, None].expand_as(mask)[mask],
                               atol=1e-5, rtol=1e-5)
    our_loss, our_grads = loss_and_grads(backend, ours)
    their_loss, their_grads = loss_and_grads(stock, theirs)
    assert abs(our_loss - their_loss) <= 1e-6 + 1e-5 * abs(their_loss), (our_loss, their_loss)
    assert their_grads.norm() > 0
    assert (our_grads - their_grads).norm() <= 1e-5 * their_grads.norm(), \
        float((our_grads - their_grads).norm() / their_grads.norm())
