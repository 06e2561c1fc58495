"""Pretrain the embedded default model: ``workbench build-tiny``.

The data are demonstrations from the built-in tasks' train splits. A fraction
``solve_prob`` of them are correct solutions, chosen uniformly among the problem's
strategies; the rest are legal but random attempts (near-misses). The model therefore
starts multi-modal: several strategies per problem, right part of the time, which is
what makes entropy collapse and exploration visible within minutes of RL.

Two additions give the exploration methods something to work with:

- a fraction ``four_number_prob`` of countdown demonstrations use four numbers up to 9, so
  the model has seen three-step chains and the ``ood`` split (four numbers up to 12,
  targets up to 199, never trained on) is hard but not impossible;
- every ``high_entropy_every`` steps, one extra batch puts Policy Split's high-entropy
  prompt before the problem, with fewer correct solutions (``high_entropy_solve_prob``):
  the model then has a distinct, more random mode behind that prompt, as the paper's
  models do. These rows are about 500 tokens long, so they are batched apart.

Deterministic: the data come from seeded ``random.Random`` streams, torch runs with
deterministic algorithms on a fixed number of threads, so two builds on one machine
write the same bytes.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from workbench import methods, tasks
from workbench.models.tiny import CHECKPOINT_DIR
from workbench.models.tiny.tokenizer import build_char_tokenizer, save_char_tokenizer
from workbench.tasks import Coins, Countdown


@dataclass
class BuildConfig:
    hidden_size: int = 192
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 1024
    steps: int = 2400
    batch_size: int = 96
    learning_rate: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    solve_prob: float = 0.65
    task_mix: tuple[tuple[str, float], ...] = (("countdown", 0.75), ("coins", 0.25))
    four_number_prob: float = 0.1
    high_entropy_every: int = 8
    high_entropy_batch_size: int = 24
    high_entropy_solve_prob: float = 0.4
    seed: int = 0
    threads: int = 2


def model_config(cfg: BuildConfig, vocab_size: int, tokenizer) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        dtype="float32",
    )


class DemonstrationStream:
    """Endless reproducible (prompt, completion) pairs from the tasks' train splits."""

    def __init__(self, cfg: BuildConfig):
        self.rng = random.Random(cfg.seed)
        self.cfg = cfg
        self.tasks = [_demonstrating_task(name) for name, _ in cfg.task_mix]
        self.weights = [w for _, w in cfg.task_mix]
        # A large fixed pool per task: every train problem appears many times.
        self.pools = [t.prompts("train", 4000, seed=cfg.seed) for t in self.tasks]
        self.four_number: dict[int, tuple[Countdown, list[tasks.Problem]]] = {}
        for i, task in enumerate(self.tasks):
            if isinstance(task, Countdown):
                wider = dataclasses.replace(task, size=task.ood_size)
                self.four_number[i] = (wider, wider.prompts("train", 2000, seed=cfg.seed))

    def sample(self, high_entropy: bool = False) -> tuple[str, str]:
        i = self.rng.choices(range(len(self.tasks)), weights=self.weights)[0]
        task, pool = self.tasks[i], self.pools[i]
        if i in self.four_number and self.rng.random() < self.cfg.four_number_prob:
            task, pool = self.four_number[i]
        problem = self.rng.choice(pool)
        if high_entropy:  # the plain-text form Policy.format_prompts gives a tokenizer without a chat template
            prompt = f"{methods.modes()['high_entropy']}\n{problem.prompt}"
            return prompt, task.demonstration(problem, self.rng, self.cfg.high_entropy_solve_prob)
        return problem.prompt, task.demonstration(problem, self.rng, self.cfg.solve_prob)


def _demonstrating_task(name: str) -> Countdown | Coins:
    """The built-in task ``name``: one of those that write demonstrations to pretrain on."""
    task = tasks.get(name)
    if not isinstance(task, (Countdown, Coins)):
        raise ValueError(f"task_mix names {name!r}, which writes no demonstrations; allowed: countdown, coins")
    return task


def encode_batch(pairs, tokenizer):
    """Right-padded ids with labels only on completion tokens and the final EOS."""
    rows = []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p + c, [-100] * len(p) + c))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        attention[i, : len(x)] = 1
    return ids, labels, attention


def build(out_dir: str | Path = CHECKPOINT_DIR, cfg: BuildConfig | None = None, progress: bool = True) -> Path:
    """Pretrain the tiny model and write it (safetensors + tokenizer) to ``out_dir``."""
    cfg = cfg or BuildConfig()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(Path(out_dir), cfg, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(out_dir: Path, cfg: BuildConfig, progress: bool) -> Path:
    torch.manual_seed(cfg.seed)
    tokenizer = build_char_tokenizer()
    model = Qwen2ForCausalLM(model_config(cfg, len(tokenizer), tokenizer))
    stream = DemonstrationStream(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    bar = _progress(cfg.steps, progress)
    started = time.time()
    model.train()
    for step in range(cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        batches = [[stream.sample() for _ in range(cfg.batch_size)]]
        if cfg.high_entropy_every and step % cfg.high_entropy_every == cfg.high_entropy_every - 1:
            batches.append([stream.sample(high_entropy=True) for _ in range(cfg.high_entropy_batch_size)])
        for pairs in batches:  # apart: one ~500-token row would pad the whole normal batch
            ids, labels, attention = encode_batch(pairs, tokenizer)
            loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
            (loss * len(pairs) / sum(map(len, batches))).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_char_tokenizer(tokenizer, out_dir)
    if progress:
        params = sum(p.numel() for p in model.parameters())
        print(f"wrote {out_dir} ({params / 1e6:.2f}M parameters, {time.time() - started:.0f} s)")
    return out_dir


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="build-tiny", disable=not enabled)
