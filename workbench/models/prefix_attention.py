"""Attention to a prefix that every row shares, with ONE copy of its keys and values.

Policy Split puts the same system prompt before every row of its high-entropy context (463
tokens on the embedded model's character tokenizer, about 90 with a BPE one). Repeated for
each of N rows, its keys and values cost N copies per layer, an N-way sum of their gradients,
and N reads of the same keys per decoding step. Here every query attends to the one copy and,
separately, to its row's own keys; the two softmaxes merge through their log-sum-exps:

    lse = logaddexp(lse_prefix, lse_own)                                     # [rows, heads, L]
    out = exp(lse_prefix - lse) out_prefix + exp(lse_own - lse) out_own

which is softmax attention over [prefix | own keys], exactly. The backward of each part is
the attention backward given the MERGED output and lse (as ring attention computes it), so
gradients are exact and the prefix's gradient arrives already summed over rows.

On CPU both parts run in PyTorch's flash kernels (``_scaled_dot_product_flash_attention_for_cpu``
and its backward, which return and take the log-sum-exp); elsewhere in plain matmuls (``kernel=False``),
which are also the reference the tests compare the kernels with.

``install`` plugs this into a transformers model through its attention interface.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _accumulation(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _attend(q, k, v, bias, scale, kernel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, L, D], lse [B, H, L] in float32 or wider) of softmax(q k^T scale + bias) v."""
    if kernel:
        out, lse = _flash(q, k, v, 0.0, False, attn_mask=bias, scale=scale)
        return out, lse.to(_accumulation(q))
    acc = _accumulation(q)
    scores = q.to(acc) @ k.to(acc).transpose(-1, -2) * scale  # [B, H, L, S]
    if bias is not None:
        scores = scores + bias
    lse = torch.logsumexp(scores, -1)
    return (torch.exp(scores - lse[..., None]) @ v.to(acc)).to(q.dtype), lse


def _attend_backward(dout, q, k, v, out, lse, bias, scale, kernel: bool):
    """(dq, dk, dv) of this part's keys given the MERGED ``out`` and ``lse``."""
    if kernel:
        return _flash_backward(dout, q, k, v, out, lse, 0.0, False, attn_mask=bias, scale=scale)
    acc = _accumulation(q)
    scores = q.to(acc) @ k.to(acc).transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias
    p = torch.exp(scores - lse[..., None])  # [B, H, L, S]: this part's share of the merged softmax
    dout_acc = dout.to(acc)
    dv = p.transpose(-1, -2) @ dout_acc
    dp = dout_acc @ v.to(acc).transpose(-1, -2)
    ds = p * (dp - (dout_acc * out.to(acc)).sum(-1, keepdim=True)) * scale
    return (ds @ k.to(acc)).to(q.dtype), (ds.transpose(-1, -2) @ q.to(acc)).to(k.dtype), dv.to(v.dtype)


def _to_prefix_layout(t: torch.Tensor) -> torch.Tensor:
    """[N, Hkv, M, ...] -> [1, Hkv, N*M, ...]: every row's queries against the one prefix."""
    return t.transpose(0, 1).reshape(1, t.shape[1], t.shape[0] * t.shape[2], *t.shape[3:])


def _from_prefix_layout(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t.reshape(t.shape[1], rows, t.shape[2] // rows, *t.shape[3:]).transpose(0, 1)


class _SharedPrefixAttention(torch.autograd.Function):
    """Queries grouped per key head: q [N, Hkv, M, D] (M = heads per key head x L)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, prefix_k, prefix_v, scale, kernel):
        rows = q.shape[0]
        q_prefix = _to_prefix_layout(q)  # [1, Hkv, N*M, D]
        out_p, lse_p = _attend(q_prefix, prefix_k, prefix_v, None, scale, kernel)
        out_p, lse_p = _from_prefix_layout(out_p, rows), _from_prefix_layout(lse_p, rows)
        out_o, lse_o = _attend(q, k, v, bias, scale, kernel)
        lse = torch.logaddexp(lse_p, lse_o)  # [N, Hkv, M]
        out = (
            torch.exp(lse_p - lse)[..., None] * out_p.to(lse.dtype)
            + torch.exp(lse_o - lse)[..., None] * out_o.to(lse.dtype)
        ).to(q.dtype)
        ctx.save_for_backward(q, k, v, bias, prefix_k, prefix_v, out, lse)
        ctx.scale, ctx.kernel = scale, kernel
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, prefix_k, prefix_v, out, lse = ctx.saved_tensors
        rows, dout = q.shape[0], dout.contiguous()
        dq_p, dk_p, dv_p = _attend_backward(
            _to_prefix_layout(dout),
            _to_prefix_layout(q),
            prefix_k,
            prefix_v,
            _to_prefix_layout(out),
            _to_prefix_layout(lse),
            None,
            ctx.scale,
            ctx.kernel,
        )
        dq_o, dk, dv = _attend_backward(dout, q, k, v, out, lse, bias, ctx.scale, ctx.kernel)
        return dq_o + _from_prefix_layout(dq_p, rows), dk, dv, None, dk_p, dv_p, None, None


def shared_prefix_attention(
    query, key, value, allowed, prefix_key, prefix_value, scale: float, kernel: bool | None = None
) -> torch.Tensor:
    """Softmax attention of ``query`` [N, H, L, D] over [prefix | own keys]:

    * ``prefix_key``/``prefix_value`` [1, Hkv, P, D]: one copy, seen by every query;
    * ``key``/``value`` [N, Hkv, S, D]: each row's own, seen where ``allowed`` [N, 1, L, S] (bool).
      Every query must see at least one own key (itself), so that its own part is defined.

    Returns [N, H, L, D]. Grouped key heads (Hkv < H) are used as they are, never repeated.
    ``kernel``: PyTorch's flash kernels (default on CPU) or plain matmuls.
    """
    n, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    kernel = query.device.type == "cpu" if kernel is None else kernel
    # query heads j*group .. (j+1)*group-1 share key head j: [N, Hkv, group*L, D], index r*L + l
    q = query.reshape(n, kv_heads, group * length, dim)
    bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill_(~allowed, float("-inf"))
    bias = bias.repeat(1, 1, group, 1)  # [N, 1, group*L, S]
    dtype = query.dtype
    out = _SharedPrefixAttention.apply(
        q, key.to(dtype), value.to(dtype), bias, prefix_key.to(dtype), prefix_value.to(dtype), scale, kernel
    )
    return out.reshape(n, heads, length, dim)


# ---- transformers: the attention interface --------------------------------------------------

HOOK_PREFIX = "workbench_shared_prefix:"


def _hooked_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    shared_prefix=None,
    row_context=None,
    collect_kv=None,
    **kwargs,
):
    """The attention function of a model after ``install``.

    Without the arguments below it is the model's own implementation (its name follows
    ``HOOK_PREFIX``), so generation, other libraries' passes and a recomputation under gradient
    checkpointing run as before.
    ``collect_kv`` (a list): this pass's keys and values are appended, one (k, v) per layer.
    ``row_context``: per layer (k, v) [N, Hkv, C, D] of keys each row saw in an earlier pass,
    put before this pass's; ``attention_mask`` [N, 1, L, C + L] (bool) covers both.
    ``shared_prefix``: per layer (k, v) [1, Hkv, P, D], seen by every query.
    """
    if shared_prefix is None and row_context is None and collect_kv is None:
        return _original_attention(module)(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if dropout:
        raise ValueError(f"attention dropout={dropout} is not supported by the shared-prefix attention")
    layer = module.layer_idx
    if collect_kv is not None:
        collect_kv.append((key, value))
    if row_context is not None:
        key = torch.cat([row_context[layer][0], key], dim=2)
        value = torch.cat([row_context[layer][1], value], dim=2)
    if attention_mask is None:  # the prefix's own pass: plain causal attention
        out = F.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
        )
    elif shared_prefix is None:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
        )
    else:
        out = shared_prefix_attention(query, key, value, attention_mask, *shared_prefix[layer], scaling)
    return out.transpose(1, 2), None


def _original_attention(module):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = module.config._attn_implementation.removeprefix(HOOK_PREFIX)
    if original == "eager":  # each model file defines its own
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[original]


def check_checkpointing(model) -> None:
    """Reentrant gradient checkpointing runs a layer's forward without grad and again in the
    backward: keys and values one pass hands to the next (``collect_kv``) would carry no
    gradient, silently. Refuse it, naming the fix."""
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and func is not None:
            if getattr(func, "keywords", {}).get("use_reentrant", True):
                raise ValueError(
                    "reentrant gradient checkpointing drops the gradient through the prompt's keys and "
                    "values; enable it with gradient_checkpointing_enable(gradient_checkpointing_kwargs="
                    "{'use_reentrant': False}) (the workbench's gradient_checkpointing=True does)"
                )
            return


def install(model) -> None:
    """Route ``model``'s attention (transformers, or peft around it) through ``_hooked_attention``,
    once; its masks stay those of its own implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    original = config._attn_implementation
    if original.startswith(HOOK_PREFIX):
        return
    name = HOOK_PREFIX + original
    AttentionInterface.register(name, _hooked_attention)
    if original in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        # (ignore: transformers leaves _global_mapping unannotated, so mypy infers the join of its
        # functions, builtins.function, which it does not accept as the Callable register declares)
        AttentionMaskInterface.register(
            name,
            ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[original],  # type: ignore[arg-type]
        )
    config._attn_implementation = name


def allowed_keys(key_valid: torch.Tensor, queries: int) -> torch.Tensor:
    """[N, 1, L, S] bool: the last ``queries`` of S positions each see the earlier valid keys and
    themselves (so a padding query sees one key and stays finite; its output is never used)."""
    n, s = key_valid.shape
    key_pos = torch.arange(s, device=key_valid.device)
    query_pos = torch.arange(s - queries, s, device=key_valid.device)
    causal = key_pos[None, :] <= query_pos[:, None]  # [L, S]
    allowed = causal[None] & key_valid.bool()[:, None, :]
    allowed |= (key_pos[None, :] == query_pos[:, None])[None]
    return allowed[:, None]
