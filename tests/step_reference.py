"""Float64 reference implementations of the exploration methods' advantages and losses, written
from docs/METHODS.md formula by formula, that run the model directly and call no workbench code.

tests/test_step_reference.py compares the workbench's step with these; kept apart so that a
mutated copy of the package can be checked against them unchanged.
"""

from __future__ import annotations

import itertools
import math

import torch

DEGENERATE_CLUSTER = 100  # METHODS.md section 5: the cluster of unparsed responses


# --- the model, run directly --------------------------------------------------------------------
def lora_parameters(model) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def row_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0,
                 entropy: bool = False) -> torch.Tensor:
    """log pi(o_t | prompt, o_<t) [len(completion)] in float64, with the graph to the adapter; with
    ``entropy``, the entropy of pi(. | prompt, o_<t) instead (logsumexp z - sum softmax(z) z)."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double() / temperature
    logp = logits.log_softmax(-1)
    if entropy:
        return -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def batch_logprobs(model, prompts: list[list[int]], completions: list[list[int]], width: int,
                   temperature: float = 1.0, entropy: bool = False) -> torch.Tensor:
    """[rows, width] float64 log-probs (or entropies), zero after each row's completion."""
    out = []
    for prompt, completion in zip(prompts, completions):
        values = row_logprobs(model, prompt, completion, temperature, entropy)
        out.append(torch.nn.functional.pad(values, (0, width - len(completion))))
    return torch.stack(out)


# --- shared core (section 0) ------------------------------------------------------------------------
def group_advantages(rewards: list[float], scale: str = "group") -> list[float]:
    """A_i = (r_i - mean r) / (std r + 1e-4), std unbiased; "none": r_i - mean r; equal rewards: 0."""
    mean = sum(rewards) / len(rewards)
    if all(r == rewards[0] for r in rewards):
        return [0.0] * len(rewards)
    if scale == "none":
        return [r - mean for r in rewards]
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    return [(r - mean) / (std + 1e-4) for r in rewards]


def ppo_clip_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, epsilon: float,
                  epsilon_high: float) -> torch.Tensor:
    """l_t = -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A), rho = exp(logp - logp_old)."""
    rho = torch.exp(logp - logp_old)
    return -torch.minimum(rho * advantages, rho.clamp(1 - epsilon, 1 + epsilon_high) * advantages)


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int) -> torch.Tensor:
    """dapo: sum / valid tokens; grpo: per-sequence mean, then mean; dr_grpo: sum / (rows x L)."""
    summed = (token_loss * mask).sum()
    if loss_type == "dapo":
        return summed / mask.sum()
    if loss_type == "grpo":
        return ((token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    return summed / (mask.shape[0] * max_completion_length)


# --- EEPO (section 2) ----------------------------------------------------------------------------------
def eepo_moved_adapter(model, prompts, completions, width: int, eps: float, lr: float,
                       max_grad_norm: float | None) -> dict[str, torch.Tensor]:
    """One plain SGD step on L = mean_seq mean_tok -log(1 - min(p, 1 - eps)) over the stage-1 rows,
    its gradient clipped to ``max_grad_norm``: the moved LoRA tensors by name."""
    params = lora_parameters(model)
    per_sequence = []
    for prompt, completion in zip(prompts, completions):
        p = row_logprobs(model, prompt, completion).exp().clamp(max=1 - eps)
        per_sequence.append((-torch.log1p(-p)).mean())
    loss = torch.stack(per_sequence).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    scale = 1.0 if max_grad_norm is None else min(1.0, max_grad_norm / (norm + 1e-6))
    return {name: (p.detach() - lr * scale * g) for (name, p), g in zip(params.items(), grads)}


class moved_adapter:
    """The model with its LoRA tensors replaced by ``moved`` inside the block, restored after."""

    def __init__(self, model, moved: dict[str, torch.Tensor]):
        self.params, self.moved = lora_parameters(model), moved

    def __enter__(self):
        self.saved = {name: p.detach().clone() for name, p in self.params.items()}
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.moved[name])

    def __exit__(self, *exc):
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.saved[name])


# --- Policy Split (section 3) ------------------------------------------------------------------------------
def policy_split_bonus(advantages: list[float], logp_he: torch.Tensor, logp_normal: torch.Tensor,
                       mask: torch.Tensor, alpha: float, eta: float, kappa: float) -> torch.Tensor:
    """One group in the HE context: b = -alpha logp_HE - (1 - alpha) logp_N; B = z(b) over the group's
    valid tokens (unbiased std, + 1e-6); bonus = clamp(eta B, -|A| / kappa, |A| / kappa) [rows, T]."""
    b = -alpha * logp_he - (1 - alpha) * logp_normal
    values = b[mask.bool()]
    z = (b - values.mean()) / (values.std(correction=1) + 1e-6)
    bound = torch.tensor(advantages, dtype=torch.float64).abs()[:, None] / kappa
    return torch.maximum(torch.minimum(eta * z, bound), -bound) * mask


# --- ERPO (section 4) ---------------------------------------------------------------------------------------
def erpo_token_advantages(advantages: list[float], entropy: torch.Tensor, progress: torch.Tensor,
                          mask: torch.Tensor, gamma: float, eta: float, buckets: int,
                          noise_floor: float) -> torch.Tensor:
    """One group: W = sigmoid(gamma z(H)) (population std over the group's valid tokens); s~ = s
    z-scored within each relative-position bucket min(floor(t / |o| K), K - 1) over the group (0 where
    the bucket's std is below ``noise_floor``); A_t = A + eta W sgn(A) s~ [rows, T]."""
    valid = mask.bool()
    h = entropy.double()
    values = h[valid]
    gate = torch.sigmoid(gamma * (h - values.mean()) / (values.std(correction=0) + 1e-6))
    lengths = mask.sum(-1).long()
    bucket = torch.full(mask.shape, -1, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        for t in range(n):
            bucket[i, t] = min(t * buckets // n, buckets - 1)
    normalised = torch.zeros_like(progress, dtype=torch.float64)
    for k in range(buckets):
        here = bucket == k
        if not here.any():
            continue
        s = progress[here].double()
        std = s.std(correction=0)
        normalised[here] = torch.zeros_like(s) if std < noise_floor else (s - s.mean()) / (std + 1e-6)
    A = torch.tensor(advantages, dtype=torch.float64)[:, None]
    return (A + eta * gate * torch.sign(A) * normalised) * mask


# --- Poly-EPO (section 5) ------------------------------------------------------------------------------------
def clusters_of(labels: list) -> list[int]:
    """Distinct labels as distinct ints (a group has fewer than 100); an unparsed response (None) in
    the degenerate cluster."""
    ids: dict = {}
    return [DEGENERATE_CLUSTER if x is None else ids.setdefault(x, len(ids)) for x in labels]


def polychromic_advantages(rewards: list[float], clusters: list[int], set_size: int) -> list[float]:
    """f(S) = mean reward x d, d = |U| / n if |U| > 1 else 0 (U: distinct non-degenerate clusters);
    A(y) = sum over the C(N, n) sets containing y of (f(S) - mean f)."""
    sets = list(itertools.combinations(range(len(rewards)), set_size))

    def objective(members):
        distinct = {clusters[i] for i in members} - {DEGENERATE_CLUSTER}
        d = len(distinct) / set_size if len(distinct) > 1 else 0.0
        return sum(rewards[i] for i in members) / set_size * d

    f = [objective(s) for s in sets]
    baseline = sum(f) / len(f)
    return [sum(fs - baseline for s, fs in zip(sets, f) if y in s) for y in range(len(rewards))]
