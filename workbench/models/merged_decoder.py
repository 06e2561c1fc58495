"""MergedDecoder: a lean no-grad forward pass for Llama-family decoders, LoRA merged in.

Sampling and every no-grad scoring pass (reference log-probs, Policy Split's two contexts,
EEPO's moved adapter) run here instead of through transformers + peft. On a small model
those layers cost more in Python than in arithmetic: peft runs three matmuls and a
dropout module per LoRA linear, transformers builds masks and output records on every
call. Here each linear is ONE matmul with W + scaling * B @ A, merged once per call from
the adapter's current values (or left out when the adapter is disabled, for the
reference), and the KV cache is preallocated, so a decoding step is a few dozen kernels.

Supported: the architectures whose layers are RMSNorm -> attention with rotary embeddings
(grouped KV heads, optional q/k/v bias) -> RMSNorm -> gated MLP: Llama, Qwen2, Mistral
(without a sliding window). ``MergedDecoder.supports(model)`` says whether a model
qualifies; everything else takes the transformers path, which gives the same numbers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.models.prefix_attention import allowed_keys, shared_prefix_attention
from workbench.models.prompt_layout import shared_layout

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


@dataclass
class KVCache:
    """Preallocated keys and values per layer [N, kv_heads, capacity, head_dim]; ``valid``
    marks the filled positions that hold real tokens (not padding). ``prefix``: per layer the
    (keys, values) [1, kv_heads, P, head_dim] of a prefix every row shares, held once and
    attended through ``prefix_attention``; the rows' positions start after it."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor  # [N, capacity] bool
    length: int = 0
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def next_positions(self) -> torch.Tensor:
        """[N, 1]: the position of each row's next token."""
        shared = 0 if self.prefix is None else self.prefix[0][0].shape[2]
        return shared + self.valid[:, : self.length].sum(-1, keepdim=True)

    def select(self, rows: torch.Tensor, capacity: int) -> KVCache:
        """The cache of ``rows`` (repeats allowed), with room for ``capacity`` positions."""

        def take(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros((len(rows), t.shape[1], capacity, t.shape[3]))
            out[:, :, : self.length] = t[rows, :, : self.length]
            return out

        valid = self.valid.new_zeros((len(rows), capacity))
        valid[:, : self.length] = self.valid[rows, : self.length]
        return KVCache([take(k) for k in self.keys], [take(v) for v in self.values], valid, self.length, self.prefix)


def _base_model(model):
    """The transformers *ForCausalLM under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _merged_linear(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of a plain or peft-LoRA linear, with the active adapters merged in."""
    base = getattr(module, "base_layer", module)
    weight = base.weight
    if hasattr(module, "lora_A") and not module.disable_adapters and not module.merged:
        for name in module.active_adapters:
            if name in module.lora_A:
                weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight, base.bias


class MergedDecoder:
    """Forward passes over a :class:`KVCache` with the adapter merged as it is NOW."""

    @staticmethod
    def supports(model) -> bool:
        config = _base_model(model).config
        if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
            return False
        if getattr(config, "use_sliding_window", False):
            return False
        # DoRA and adapters on the embeddings have no merged form here
        return not any(m.lora_magnitude_vector or m.lora_embedding_A for m in model.modules() if hasattr(m, "lora_A"))

    @torch.no_grad()
    def __init__(self, model):
        causal_lm = _base_model(model)
        decoder = causal_lm.model
        config = causal_lm.config
        self.embed = decoder.embed_tokens.weight
        self.rotary = decoder.rotary_emb
        self.norm = decoder.norm
        self.lm_head = _merged_linear(causal_lm.lm_head)
        self.eps = config.rms_norm_eps
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        first = decoder.layers[0].self_attn
        self.apply_rotary = sys.modules[type(first).__module__].apply_rotary_pos_emb
        self.act = decoder.layers[0].mlp.act_fn
        self.layers = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            q, k, v = (_merged_linear(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
            # q, k and v in one matmul; gate and up in another
            qkv_bias = (
                None
                if q[1] is None
                else torch.cat(
                    [
                        b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
                        for w, b in (q, k, v)
                    ]
                )
            )
            gate, up = _merged_linear(mlp.gate_proj)[0], _merged_linear(mlp.up_proj)[0]
            self.layers.append(
                {
                    "input_norm": layer.input_layernorm.weight,
                    "qkv": torch.cat([q[0], k[0], v[0]]),
                    "qkv_bias": qkv_bias,
                    "o": _merged_linear(attn.o_proj),
                    "post_norm": layer.post_attention_layernorm.weight,
                    "gate_up": torch.cat([gate, up]),
                    "down": _merged_linear(mlp.down_proj)[0],
                }
            )
        self.dtype = self.embed.dtype
        self.device = self.embed.device

    def new_cache(self, rows: int, capacity: int) -> KVCache:
        shape = (rows, self.num_kv_heads, capacity, self.head_dim)
        # under autocast, keys and values come out in the autocast dtype: store them so (half the memory)
        kind = self.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else self.dtype
        make = lambda: torch.zeros(shape, dtype=dtype, device=self.device)  # noqa: E731
        return KVCache(
            [make() for _ in self.layers],
            [make() for _ in self.layers],
            torch.zeros((rows, capacity), dtype=torch.bool, device=self.device),
        )

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append ``ids`` [N, L] (``valid`` [N, L] bool, ``positions`` [N, L]) to ``cache``;
        returns the final hidden states [N, L, hidden] (apply :meth:`logits` where needed)."""
        n, length = ids.shape
        start, end = cache.length, cache.length + length
        cache.valid[:, start:end] = valid
        allowed = allowed_keys(cache.valid[:, :end], length)  # [N, 1, L, end]
        h = F.embedding(ids, self.embed)
        cos, sin = self.rotary(h, positions)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        for i, w in enumerate(self.layers):
            x = self._rms(h, w["input_norm"])
            q, k, v = F.linear(x, w["qkv"], w["qkv_bias"]).split([q_size, kv_size, kv_size], dim=-1)
            q = q.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)
            k = k.view(n, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(n, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q, k = self.apply_rotary(q, k, cos, sin)
            cache.keys[i][:, :, start:end] = k
            cache.values[i][:, :, start:end] = v
            keys, values = cache.keys[i][:, :, :end], cache.values[i][:, :, :end]
            if cache.prefix is None:
                attn = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=allowed, enable_gqa=self.num_kv_heads != self.num_heads
                )
            else:
                attn = shared_prefix_attention(q, keys, values, allowed, *cache.prefix[i], self.scale)
            h = h + F.linear(attn.transpose(1, 2).reshape(n, length, q_size), *w["o"])
            x = self._rms(h, w["post_norm"])
            gate, up = F.linear(x, w["gate_up"]).chunk(2, dim=-1)
            h = h + F.linear(self.act(gate) * up, w["down"])
        cache.length = end
        return self._rms(h, self.norm.weight)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, *self.lm_head)

    @torch.no_grad()
    def prefill(self, rows: list[list[int]], pad_id: int, extra_capacity: int) -> tuple[KVCache, torch.Tensor]:
        """Run the prompts ``rows``: the prefix they all share once, each distinct prompt once,
        and return (cache with room for ``extra_capacity`` more tokens per row, last hidden
        state of each row [N, hidden])."""
        layout = shared_layout(rows, pad_id, self.device)
        capacity = layout.rest_ids.shape[1]
        cache = self.new_cache(len(layout.rest_ids), capacity)
        if layout.prefix:  # a system prompt: runs once and stays one copy
            shared = len(layout.prefix)
            prefix_cache = self.new_cache(1, shared)
            self.forward(
                torch.tensor([layout.prefix], device=self.device),
                torch.ones((1, shared), dtype=torch.bool, device=self.device),
                torch.arange(shared, device=self.device)[None],
                prefix_cache,
            )
            cache.prefix = list(zip(prefix_cache.keys, prefix_cache.values))
        hidden = self.forward(layout.rest_ids, layout.rest_valid, layout.rest_positions, cache)[:, -1]
        return cache.select(layout.row_of, capacity + extra_capacity), hidden[layout.row_of]

    @torch.no_grad()
    def completion_logits(
        self, prompt_rows: list[list[int]], completion_ids: torch.Tensor, pad_id: int
    ) -> torch.Tensor:
        """Logits [N, T, V] that predict each token of ``completion_ids`` [N, T] after its prompt."""
        width = completion_ids.shape[1]
        cache, last = self.prefill(prompt_rows, pad_id, width)
        positions = cache.next_positions() + torch.arange(width, device=self.device)[None]
        hidden = self.forward(
            completion_ids.to(self.device),
            torch.ones_like(completion_ids, dtype=torch.bool, device=self.device),
            positions,
            cache,
        )
        # position t's logits come from the hidden state before token t
        return self.logits(torch.cat([last[:, None], hidden[:, :-1]], dim=1))
