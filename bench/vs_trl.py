"""TRL's GRPOTrainer and the workbench's GRPO on identical work, side by side.

    python bench/vs_trl.py [--steps 8] [--warmup 2] [--length 32]   (needs the `bench` extra: trl)

Same embedded model and tokenizer, same 8 prompts x 8 generations a step, every completion
exactly ``--length`` tokens (EOS suppressed on both sides, so both generate the same number
of tokens), LoRA r=8 / alpha=16 on all linear layers, one update per batch, beta=0, the
DAPO loss, learning rate 2e-3, temperature 1. TRL runs on its HF-generate path with
gradient checkpointing off (its default is on; the workbench's is off) and its own
telemetry (entropy logging); the workbench with all of its telemetry on (entropy, top-5
alternatives, pivots, KL to the reference).

Each system runs in a fresh child process (so its peak resident memory is its own); the
script reports the median step time over ``--steps`` steps after ``--warmup``, the ratio,
and the peak RSS of each child.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import time

PROMPTS_PER_STEP, GENERATIONS, LR = 8, 8, 2e-3


def prompts(count: int) -> list:
    from workbench import tasks

    return tasks.get("countdown").prompts("train", count, seed=0)


def step_timer(times: list[float]):
    """A transformers TrainerCallback that appends each training step's wall time to ``times``."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)

    return StepTimer()


def run_workbench(steps: int, length: int, queue) -> None:
    import torch

    from workbench import RunConfig, Trainer

    torch.set_num_threads(2)
    trainer = Trainer(RunConfig(num_prompts=PROMPTS_PER_STEP, num_generations=GENERATIONS, max_completion_length=length,
                                learning_rate=LR, beta=0.0, loss_type="dapo", lora_r=8, lora_alpha=16, threads=2))
    trainer.sampler.eos_token_id = -1  # no token id is -1: every completion runs to the limit, as TRL's min_new_tokens
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - started)
    tokens = float(trainer.history["response_length"].iloc[-1]) * PROMPTS_PER_STEP * GENERATIONS
    queue.put({"times": times, "tokens": tokens, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_trl(steps: int, length: int, queue) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from workbench import tasks
    from workbench.tiny import CHECKPOINT_DIR

    torch.set_num_threads(2)
    problems = prompts(PROMPTS_PER_STEP * steps)
    by_prompt = {p.prompt: p for p in problems}
    task = tasks.get("countdown")

    def reward(prompts, completions, **kwargs):
        return [s.reward for s in tasks.score_batch(task, [by_prompt[p] for p in prompts], completions)]

    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINT_DIR, dtype=torch.float32)
    times: list[float] = []

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, max_steps=steps, learning_rate=LR, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS,
            num_generations=GENERATIONS, max_completion_length=length, generation_kwargs={"min_new_tokens": length},
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, loss_type="dapo", epsilon=0.2,
            gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=0,
            shuffle_dataset=False, dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=config, processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"prompt": [p.prompt for p in problems]}),
            peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
            callbacks=[step_timer(times)],
        )
        trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    queue.put({"times": times, "tokens": lengths[-1] * PROMPTS_PER_STEP * GENERATIONS if lengths else float("nan"),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def in_child(target, steps: int, length: int) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(steps, length, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--length", type=int, default=32)
    args = parser.parse_args()
    import trl

    print(f"trl {trl.__version__}; {PROMPTS_PER_STEP} prompts x {GENERATIONS} generations, {args.length} tokens each; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    results = {}
    for name, target in (("trl", run_trl), ("workbench", run_workbench)):
        r = in_child(target, args.warmup + args.steps, args.length)
        measured = r["times"][args.warmup:]
        results[name] = statistics.median(measured)
        print(f"{name:>9}: median step {results[name]:.3f} s (min {min(measured):.3f}, max {max(measured):.3f}), "
              f"{r['tokens']:.0f} generated tokens/step, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"workbench / trl = {results['workbench'] / results['trl']:.2f}x (target <= 0.5x)")


if __name__ == "__main__":
    main()
