"""GPU benchmark: a Qwen2.5-0.5B-architecture model (random weights, built from its config: no
download), LoRA r=16, 16 prompts x 8 generations x 256 tokens, bf16 autocast.

    python bench/gpu.py [--steps 5] [--warmup 2] [--systems workbench,trl]
    python bench/gpu.py --smoke          # a 2-layer, 64-wide model on the CPU: checks the script runs

Reports, per system, the median step time, sampling tokens per second (generated tokens /
sampling time: the workbench's sample phase; TRL's generation time from its logs when
present, else not reported) and peak GPU memory (torch.cuda.max_memory_allocated). Each
system runs in its own child process so its peak memory is its own. Every completion is
exactly 256 tokens (EOS suppressed), so both generate the same tokens.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  tie_word_embeddings=True, rms_norm_eps=1e-6)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, max_position_embeddings=2048, tie_word_embeddings=True)
PROMPTS, GENERATIONS, LENGTH, LORA_R = 16, 8, 256, 16


def build_model(directory: Path, dims: dict) -> None:
    """Random weights in the given architecture, saved with the embedded (character) tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from workbench.tiny import CHECKPOINT_DIR

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    config = Qwen2Config(**dims, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def run_workbench(model_dir: str, device: str, steps: int, length: int, queue) -> None:
    import torch

    from workbench import RunConfig, Trainer

    trainer = Trainer(RunConfig(model=model_dir, device=device, dtype="bfloat16" if device == "cuda" else "float32",
                                num_prompts=PROMPTS, num_generations=GENERATIONS, max_completion_length=length,
                                lora_r=LORA_R, lora_alpha=2 * LORA_R))
    trainer.sampler.eos_token_id = -1  # no token id is -1: every completion runs to the limit
    times, sampling = [], []
    for _ in range(steps):
        started = last = time.perf_counter()
        for phase in trainer.phases():
            now = time.perf_counter()
            if phase.name == "sample":
                sampling.append(now - last)
            last = now
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    queue.put({"times": times, "sampling": sampling, "peak_gib": peak})


def run_trl(model_dir: str, device: str, steps: int, length: int, queue) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from vs_trl import step_timer  # bench/ is on sys.path when a bench script runs

    from workbench import tasks

    problems = tasks.get("countdown").prompts("train", PROMPTS * steps, seed=0)
    times: list[float] = []
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=device == "cpu", bf16=device == "cuda", max_steps=steps, learning_rate=2e-3,
            lr_scheduler_type="constant", per_device_train_batch_size=PROMPTS * GENERATIONS, num_generations=GENERATIONS,
            max_completion_length=length, generation_kwargs={"min_new_tokens": length}, beta=0.0, num_iterations=1,
            loss_type="dapo", gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no",
            shuffle_dataset=False,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=config,
            processing_class=tokenizer, train_dataset=Dataset.from_dict({"prompt": [p.prompt for p in problems]}),
            peft_config=LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules="all-linear", task_type="CAUSAL_LM"),
            callbacks=[step_timer(times)],
        )
        sampling: list[float] = []
        generate = trainer._generate

        def timed_generate(*a, **kw):  # TRL logs no generation time of its own
            started = time.perf_counter()
            out = generate(*a, **kw)
            sampling.append(time.perf_counter() - started)
            return out

        trainer._generate = timed_generate
        trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    queue.put({"times": times, "sampling": sampling, "peak_gib": peak})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--systems", default="workbench,trl")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, to check the script")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --smoke to check the script on the CPU")
    length = 16 if args.smoke else LENGTH
    name = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name()
    print(f"{name}; Qwen2.5-0.5B architecture{' (smoke dims)' if args.smoke else ''}, LoRA r={LORA_R}, "
          f"{PROMPTS} prompts x {GENERATIONS} generations x {length} tokens; median of {args.steps} after {args.warmup}")
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as model_dir:
        build_model(Path(model_dir), SMOKE if args.smoke else QWEN25_05B)
        results = {}
        for system in args.systems.split(","):
            queue = context.Queue()
            target = {"workbench": run_workbench, "trl": run_trl}[system]
            process = context.Process(target=target, args=(model_dir, device, args.warmup + args.steps, length, queue))
            process.start()
            r = queue.get()
            process.join()
            step = statistics.median(r["times"][args.warmup:])
            tokens = PROMPTS * GENERATIONS * length
            rate = f"{tokens / statistics.median(r['sampling'][args.warmup:]):.0f}" if len(r["sampling"]) > args.warmup else "n/a"
            results[system] = step
            print(f"{system:>9}: median step {step:.2f} s, sampling {rate} tokens/s, peak GPU memory {r['peak_gib']:.1f} GiB")
        if len(results) == 2:
            print(f"workbench / trl = {results['workbench'] / results['trl']:.2f}x")


if __name__ == "__main__":
    main()
