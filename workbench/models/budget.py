"""Sizes checked before anything is allocated: memory and the model's context.

``check_memory`` estimates, from the config and the model's shape alone, the largest things a
step holds (a lower bound: prompts are not counted) and refuses a run that cannot fit in the
memory this machine has free, with the estimate and the limit in the message, instead of
letting it allocate tens of gigabytes first. ``check_context`` refuses prompts that, with the
response budget, do not fit the model's context. ``RunConfig.check_memory=False`` skips the
memory check for those who know better.
"""

from __future__ import annotations

import os

import torch

from workbench.options import ConfigError

GB = 1024**3


def estimate(cfg, model) -> dict[str, int]:
    """Bytes of the largest buffers of one step (float32), by what they hold."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", 1)
    hidden = getattr(config, "hidden_size", 1)
    heads = getattr(config, "num_attention_heads", 1)
    kv_width = getattr(config, "num_key_value_heads", heads) * getattr(config, "head_dim", hidden // max(heads, 1))
    vocab = getattr(config, "vocab_size", 1)
    rows, length = cfg.num_prompts * cfg.num_generations, cfg.max_completion_length
    update_tokens = min(cfg.micro_batch_tokens, rows * length)
    linear_sizes = sum(m.in_features + m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {
        "sampling KV cache": rows * length * layers * 2 * kv_width * 4,
        "sampling logits": rows * vocab * 4 * 3,  # logits, log-softmax, probabilities of one position
        "update activations": update_tokens * hidden * layers * 16 * 4,
        "update logits": update_tokens * vocab * 4 * 2,
        "adapter and AdamW": cfg.lora_r * linear_sizes * 4 * 4,  # weights, gradient, two moments
    }


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this run on ``device`` (None when it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg, model, device: torch.device) -> None:
    if not cfg.check_memory:
        return
    free = available_bytes(device)
    parts = estimate(cfg, model)
    need = sum(parts.values())
    if free is None or need <= free:
        return
    largest = sorted(parts.items(), key=lambda item: -item[1])[:3]
    detail = ", ".join(f"{name} {size / GB:.1f} GB" for name, size in largest)
    raise ConfigError(
        "check_memory",
        True,
        f"a run that fits: one step needs at least {need / GB:.1f} GB ({detail}) "
        f"and {device.type} has {free / GB:.1f} GB free. Lower num_prompts, num_generations, "
        "max_completion_length, micro_batch_tokens or lora_r; or set check_memory=false to try anyway",
    )


def check_context(model, prompt_ids: list[list[int]], max_new_tokens: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max((len(p) for p in prompt_ids), default=0)
    if limit is not None and longest + max_new_tokens > limit:
        raise ConfigError(
            "max_completion_length",
            max_new_tokens,
            f"at most {max(limit - longest, 0)}: the longest prompt has {longest} tokens and the model "
            f"reads {limit} tokens at most (shorten the prompts or the responses)",
        )
