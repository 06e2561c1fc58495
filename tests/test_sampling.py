"""The sampler records exactly what a teacher-forced pass computes, and samples from the softmax."""

import pytest
import torch
from conftest import random_qwen2
from scipy.stats import chisquare

from workbench.models.prompt_layout import left_pad, shared_prefix_length
from workbench.models.sampling import Sampler, draw_tokens, filter_logits


def test_recorded_logprobs_and_entropy_match_teacher_forcing(tiny_policy):
    prompts = tiny_policy.encode(["Make 22 from 3 5 7.\n", "Pay 12 with 2 5.\n"])
    sampler = Sampler(tiny_policy.model, tiny_policy.tokenizer.eos_token_id, tiny_policy.tokenizer.pad_token_id)
    out = sampler.generate(prompts, 4, max_new_tokens=24, temperature=0.7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp, entropy = tiny_policy.token_logprobs([p for p in prompts for _ in range(4)], out.ids, temperature=0.7)
    valid = out.mask.bool()
    assert valid.sum() > 20
    assert (out.logprobs[valid] - logp[valid]).abs().max() < 1e-4
    assert (out.entropy[valid] - entropy[valid]).abs().max() < 1e-4
    assert (out.logprobs[~valid] == 0).all() and (out.entropy[~valid] == 0).all()


def test_entropy_is_that_of_the_full_distribution():
    model = random_qwen2(vocab_size=16)
    sampler = Sampler(model, eos_token_id=1, pad_token_id=0)
    out = sampler.generate([[3, 4, 5]], 1, max_new_tokens=1, temperature=1.3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(torch.tensor([[3, 4, 5]])).logits[0, -1] / 1.3
    p = logits.softmax(-1)
    expected = -(p * p.log()).sum()
    assert torch.isclose(out.entropy[0, 0], expected, atol=1e-5)
    top = torch.topk(p, 5)
    assert torch.allclose(out.topk_probs[0, 0], top.values, atol=1e-6)
    assert out.topk_ids[0, 0].tolist() == top.indices.tolist()


def test_sampled_frequencies_match_the_softmax():
    model = random_qwen2(vocab_size=8, seed=3)
    sampler = Sampler(model, eos_token_id=1, pad_token_id=0)
    n = 4000
    out = sampler.generate([[2, 3]], n, max_new_tokens=1, temperature=1.0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p = model(torch.tensor([[2, 3]])).logits[0, -1].softmax(-1)
    counts = torch.bincount(out.ids[:, 0], minlength=8).double()
    expected = p.double() / p.double().sum() * n
    result = chisquare(counts.numpy(), expected.numpy())
    assert result.pvalue > 1e-3, (counts, p * n)


@pytest.mark.parametrize("vocab", [22, 24])  # padded to blocks of 4, and a whole number of blocks
def test_drawing_a_block_then_a_token_keeps_the_softmax_law(vocab):
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(1, vocab, generator=g) ** 4  # uneven, with mass spread over every block
    probs[0, [0, 5, vocab - 1]] = 0.0  # never drawn, including one in the padded last block
    n = 40_000
    tokens = draw_tokens(probs.expand(n, vocab).contiguous(), torch.Generator().manual_seed(1), block=4)
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert counts.numel() == vocab and counts[[0, 5, vocab - 1]].sum() == 0
    allowed = probs[0] > 0
    expected = probs[0].double() / probs.double().sum() * n
    assert chisquare(counts[allowed].numpy(), expected[allowed].numpy()).pvalue > 1e-3


def test_top_k_and_top_p_truncate_only_the_sampling_distribution():
    z = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    assert torch.isinf(filter_logits(z, top_k=2, top_p=None)[0, 2:]).all()
    p = z.softmax(-1)[0]  # about 0.61, 0.22, 0.14, 0.03
    kept = filter_logits(z, top_k=None, top_p=0.7)
    assert torch.isfinite(kept[0, :2]).all() and torch.isinf(kept[0, 2:]).all(), p
    model = random_qwen2(vocab_size=8, seed=3)
    out = Sampler(model, 1, 0).generate([[2, 3]], 500, max_new_tokens=1, top_k=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        allowed = set(torch.topk(model(torch.tensor([[2, 3]])).logits[0, -1], 2).indices.tolist())
    assert set(out.ids[:, 0].tolist()) <= allowed


def test_same_seed_same_samples_and_eos_stops(tiny_policy):
    sampler = Sampler(tiny_policy.model, tiny_policy.tokenizer.eos_token_id, tiny_policy.tokenizer.pad_token_id)
    prompts = tiny_policy.encode(["Make 10 from 2 3 4.\n"])
    a = sampler.generate(prompts, 8, max_new_tokens=32, generator=torch.Generator().manual_seed(5))
    b = sampler.generate(prompts, 8, max_new_tokens=32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.ids, b.ids)
    eos = tiny_policy.tokenizer.eos_token_id
    for row, n, done in zip(a.ids, a.mask.sum(-1).long(), a.finished):
        if done:
            assert row[n - 1] == eos and (row[:n - 1] != eos).all()


@pytest.mark.parametrize("length", [1, 5])
def test_max_new_tokens_bounds_the_completion(length):
    out = Sampler(random_qwen2(), 1, 0).generate([[2, 3], [4]], 3, max_new_tokens=length)
    assert out.ids.shape[1] <= length and out.mask.shape == out.ids.shape


def test_a_shared_prefix_is_computed_once_with_the_same_results(tiny_policy, monkeypatch):
    import workbench.models.prompt_layout as prompt_layout

    system = "You are in a mode with a long shared system prompt. " * 3
    prompts = tiny_policy.format_prompts(["Make 22 from 3 5 7.\n", "Pay 12 with 2 5.\n"], system)
    rows = [p for p in prompts for _ in range(3)]
    assert prompt_layout.common_prefix_length(rows) >= len(system)
    sampler = Sampler(tiny_policy.model, tiny_policy.tokenizer.eos_token_id, tiny_policy.tokenizer.pad_token_id)
    shared = sampler.generate(prompts, 3, max_new_tokens=16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp_shared, h_shared = tiny_policy.token_logprobs(rows, shared.ids)
    monkeypatch.setattr(prompt_layout, "MIN_SHARED_PREFIX", 10**9)  # the plain path: every row in full
    plain = sampler.generate(prompts, 3, max_new_tokens=16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp_plain, h_plain = tiny_policy.token_logprobs(rows, shared.ids)
    valid = shared.mask.bool()
    assert torch.equal(shared.ids, plain.ids)
    assert (lp_shared - lp_plain)[valid].abs().max() < 1e-4 and (h_shared - h_plain)[valid].abs().max() < 1e-4
    assert (shared.logprobs - lp_plain)[valid].abs().max() < 1e-4


@pytest.fixture(scope="module")
def float64_policy():
    """The embedded policy in float64 with B moved off zero (every LoRA matrix gets a
    gradient), so that two orders of summation agree to rounding, not to float32's 1e-5."""
    from workbench import Policy

    policy = Policy.from_pretrained("tiny")
    policy.model.double()
    with torch.no_grad():
        for name, p in policy.trainable_parameters().items():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    return policy


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to float64 rounding as transformers computes: its RMSNorm rounds to float32, so two
    orders of summation agree to about 1e-8 of the largest value; a lost term is O(1)."""
    return bool((a - b).abs().max() <= 1e-6 * b.abs().max())


def logits_and_gradients(policy, forward, rows, completion):
    """(logits, every LoRA gradient) of the completion's summed log-probs, in training mode."""
    policy.model.train()
    policy.model.zero_grad()
    logits = forward(policy, rows, completion)
    logits.log_softmax(-1).gather(-1, completion[..., None]).sum().backward()
    policy.model.eval()
    return logits.detach(), {n: p.grad.clone() for n, p in policy.trainable_parameters().items()}


def assert_same_gradients(grads, plain_grads):
    assert len(grads) == len(plain_grads) > 0
    for name in grads:
        assert plain_grads[name].abs().max() > 1e-6, name
        assert close(grads[name], plain_grads[name]), name


def plain_completion_logits(policy, rows, completion):
    """The reference: each row's whole sequence (prompt + completion), left-padded, one forward
    pass, nothing shared; logits [N, T, V] that predict the completion's tokens."""
    ids, mask = left_pad([r + c.tolist() for r, c in zip(rows, completion)], policy.tokenizer.pad_token_id)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    width = completion.shape[1]
    return policy.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -width - 1 : -1]


@pytest.mark.parametrize("kernel", [True, False], ids=["flash-kernels", "matmuls"])
def test_shared_prefix_attention_gives_the_plain_pass_logits_and_gradients(float64_policy, kernel, monkeypatch):
    """Policy Split's high-entropy context: the 454-token system prompt runs once and every row
    attends to that one copy; logits and every LoRA gradient equal the plain pass's."""
    from workbench.methods.policy_split import HIGH_ENTROPY_PROMPT
    from workbench.models import prefix_attention

    if not kernel:
        real = prefix_attention.shared_prefix_attention
        monkeypatch.setattr(prefix_attention, "shared_prefix_attention", lambda *a: real(*a, kernel=False))
    policy = float64_policy
    prompts = policy.format_prompts(["Make 9 from 1 2 3.", "Make 8 from 2 2 4 1.", "Pay 7 with 2 5."],
                                    HIGH_ENTROPY_PROMPT)
    rows = [prompts[0]] * 2 + [prompts[1]] * 2 + [prompts[2]]  # groups share a prompt, all share the prefix
    completion = torch.randint(3, 90, (5, 6), generator=torch.Generator().manual_seed(1))
    shared = shared_prefix_length([list(r) for r in dict.fromkeys(tuple(r) for r in rows)])
    assert shared > 400
    plain_logits, plain_grads = logits_and_gradients(policy, plain_completion_logits, rows, completion)
    logits, grads = logits_and_gradients(policy, type(policy).completion_logits, rows, completion)
    assert close(logits, plain_logits)
    assert_same_gradients(grads, plain_grads)


def test_gradient_checkpointing_keeps_the_gradient_through_the_prompts_keys(float64_policy):
    """The prefix's and the prompts' keys and values are handed from one pass to the next:
    under (non-reentrant) gradient checkpointing their gradient still arrives; reentrant
    checkpointing, which would drop it silently, is refused."""
    from workbench.methods.policy_split import HIGH_ENTROPY_PROMPT

    policy = float64_policy
    rows = policy.format_prompts(["Make 9 from 1 2 3.", "Pay 7 with 2 5."], HIGH_ENTROPY_PROMPT) * 2
    completion = torch.randint(3, 90, (4, 5), generator=torch.Generator().manual_seed(3))
    _, plain_grads = logits_and_gradients(policy, plain_completion_logits, rows, completion)
    try:
        policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        _, grads = logits_and_gradients(policy, type(policy).completion_logits, rows, completion)
        assert_same_gradients(grads, plain_grads)
        policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        with pytest.raises(ValueError, match="reentrant gradient checkpointing"):
            logits_and_gradients(policy, type(policy).completion_logits, rows, completion)
    finally:
        policy.model.gradient_checkpointing_disable()
        policy.model.eval()


def test_no_grad_passes_share_the_prefix_and_match_the_plain_pass(float64_policy):
    """The lean decoder (scoring and sampling) keeps one copy of the shared prefix too."""
    from workbench.methods.policy_split import HIGH_ENTROPY_PROMPT
    from workbench.models.merged_decoder import MergedDecoder

    policy = float64_policy
    rows = policy.format_prompts(["Make 9 from 1 2 3.", "Make 8 from 2 2 4 1."], HIGH_ENTROPY_PROMPT) * 2
    completion = torch.randint(3, 90, (4, 5), generator=torch.Generator().manual_seed(2))
    decoder = MergedDecoder(policy.model)
    cache, _ = decoder.prefill(rows, policy.tokenizer.pad_token_id, 5)
    assert cache.prefix is not None and cache.keys[0].shape[2] < 40  # the prefix is not in the rows' cache
    with torch.no_grad():
        plain = plain_completion_logits(policy, rows, completion)
        merged = decoder.completion_logits(rows, completion, policy.tokenizer.pad_token_id)
    assert close(merged, plain)
