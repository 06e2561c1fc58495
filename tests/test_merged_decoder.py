"""MergedDecoder and per-prompt sharing give the numbers of the plain transformers + peft path."""

import pytest
import torch
from conftest import random_qwen2
from peft import LoraConfig, get_peft_model

from workbench.methods.policy_split import HIGH_ENTROPY_PROMPT
from workbench.models.merged_decoder import MergedDecoder
from workbench.models.sampling import Sampler


def perturb_adapter(policy, scale=0.05, seed=0):
    """A trained-looking adapter: B off zero, so the merged delta is not zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters().values():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def rows_and_completions(policy, system=None, per_prompt=3, width=9):
    prompts = policy.format_prompts(["Make 22 from 3 5 7.\n", "Pay 12 with 2 5.\n", "Make 9 from 1 2 3 4.\n"], system)
    rows = [p for p in prompts for _ in range(per_prompt)]
    completions = torch.randint(2, policy.tokenizer.vocab_size, (len(rows), width), generator=torch.Generator().manual_seed(1))
    return rows, completions


def one_row_at_a_time(policy, rows, completions, temperature):
    """The reference: every row alone, through transformers + peft, nothing shared."""
    with torch.no_grad():
        return torch.cat([policy.token_logprobs([r], completions[i : i + 1], temperature, with_entropy=False, merged=False)[0]
                          for i, r in enumerate(rows)])


@pytest.mark.parametrize("system", [None, HIGH_ENTROPY_PROMPT])
def test_merged_scoring_matches_transformers_row_by_row(tiny_policy, system):
    perturb_adapter(tiny_policy)
    rows, completions = rows_and_completions(tiny_policy, system)
    expected = one_row_at_a_time(tiny_policy, rows, completions, 0.7)
    with torch.no_grad():
        merged, entropy = tiny_policy.token_logprobs(rows, completions, 0.7)
        shared, shared_entropy = tiny_policy.token_logprobs(rows, completions, 0.7, merged=False)
    assert (merged - expected).abs().max() < 1e-4
    assert (shared - expected).abs().max() < 1e-4
    assert (entropy - shared_entropy).abs().max() < 1e-4


def test_reference_mode_merges_nothing(tiny_policy):
    perturb_adapter(tiny_policy)
    rows, completions = rows_and_completions(tiny_policy)
    with torch.no_grad(), tiny_policy.reference():
        merged, _ = tiny_policy.token_logprobs(rows, completions, with_entropy=False)
        plain, _ = tiny_policy.token_logprobs(rows, completions, with_entropy=False, merged=False)
    with torch.no_grad():
        adapted, _ = tiny_policy.token_logprobs(rows, completions, with_entropy=False)
    assert (merged - plain).abs().max() < 1e-4
    assert (merged - adapted).abs().max() > 0.1  # the adapter really was left out


def test_gradients_with_shared_prompts_equal_row_by_row(tiny_policy):
    perturb_adapter(tiny_policy)
    rows, completions = rows_and_completions(tiny_policy, per_prompt=4, width=6)
    params = tiny_policy.trainable_parameters()
    logp, _ = tiny_policy.token_logprobs(rows, completions, with_entropy=False)
    shared = torch.autograd.grad(logp.sum(), list(params.values()))
    alone = sum(tiny_policy.token_logprobs([r], completions[i : i + 1], with_entropy=False)[0].sum()
                for i, r in enumerate(rows))
    separate = torch.autograd.grad(alone, list(params.values()))
    for name, a, b in zip(params, shared, separate):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item()), name


def test_merged_sampler_draws_the_same_tokens_as_transformers(tiny_policy):
    perturb_adapter(tiny_policy, scale=0.02)
    prompts = tiny_policy.format_prompts(["Make 22 from 3 5 7.\n", "Pay 12 with 2 5.\n"])
    out = {}
    for merged in (True, False):
        sampler = Sampler(tiny_policy.model, tiny_policy.tokenizer.eos_token_id, tiny_policy.tokenizer.pad_token_id,
                          merged=merged)
        out[merged] = sampler.generate(prompts, 8, max_new_tokens=24, temperature=1.0,
                                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[True].ids, out[False].ids)
    valid = out[True].mask.bool()
    assert (out[True].logprobs - out[False].logprobs)[valid].abs().max() < 1e-4
    assert (out[True].entropy - out[False].entropy)[valid].abs().max() < 1e-4


def test_biases_grouped_heads_and_a_plain_model_are_handled():
    model = random_qwen2(vocab_size=16, hidden=32, layers=2)
    peft_model = get_peft_model(random_qwen2(vocab_size=16, hidden=32, layers=2),
                                LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    prompts = [[3, 4, 5, 6], [7, 8], [3, 4, 5, 6]]
    completions = torch.tensor([[2, 3, 4], [5, 6, 7], [8, 9, 10]])
    for m in (model, peft_model):
        assert MergedDecoder.supports(m)
        logits = MergedDecoder(m).completion_logits(prompts, completions, pad_id=0)
        with torch.no_grad():
            for i, (p, c) in enumerate(zip(prompts, completions.tolist())):
                expected = m(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1]
                assert (logits[i] - expected).abs().max() < 1e-4


def test_unsupported_adapters_take_the_transformers_path():
    dora = get_peft_model(random_qwen2(), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert not MergedDecoder.supports(dora)
