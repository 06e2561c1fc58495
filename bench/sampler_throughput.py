"""Sampling throughput: the workbench's sampler against transformers' ``model.generate``.

    python bench/sampler_throughput.py [--batch 64] [--length 64] [--repeats 5]

The embedded model with its LoRA adapter (B moved off zero, as after training), 8 prompts
repeated to ``--batch`` rows, every row exactly ``--length`` new tokens (EOS suppressed on
all sides), temperature 1, pure sampling. Three samplers:

- ``generate``: ``model.generate(do_sample=True, min_new_tokens=L, max_new_tokens=L)`` of
  transformers on the peft model, no telemetry;
- ``workbench (transformers path)``: the workbench's loop on the peft model (``merged=False``),
  recording entropy, log-prob and top-5 alternatives of every token: the sampler before
  MergedDecoder;
- ``workbench``: the default, through MergedDecoder, with the same telemetry.

Prints generated tokens per second (median of ``--repeats``) and the ratios to ``generate``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench import Policy, tasks
from workbench.sampling import Sampler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    policy = Policy.from_pretrained("tiny")
    with torch.no_grad():
        for name, p in policy.trainable_parameters().items():
            if "lora_B" in name:
                p.normal_(std=0.02, generator=torch.Generator().manual_seed(0))
    policy.model.eval()
    prompts = policy.format_prompts([p.prompt for p in tasks.get("countdown").prompts("train", 8, seed=0)])
    per_prompt = args.batch // len(prompts)
    rows = [p for p in prompts for _ in range(per_prompt)]
    tok = policy.tokenizer
    ids = torch.full((len(rows), max(map(len, rows))), tok.pad_token_id)
    attention = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, ids.shape[1] - len(r):] = torch.tensor(r)
        attention[i, ids.shape[1] - len(r):] = 1

    def hf_generate():
        with torch.no_grad():
            out = policy.model.generate(input_ids=ids, attention_mask=attention, do_sample=True, temperature=1.0,
                                        top_k=0, top_p=1.0, min_new_tokens=args.length, max_new_tokens=args.length,
                                        pad_token_id=tok.pad_token_id)
        return out.shape[1] - ids.shape[1]

    def workbench(merged):
        sampler = Sampler(policy.model, eos_token_id=-1, pad_token_id=tok.pad_token_id, merged=merged)
        return lambda: sampler.generate(prompts, per_prompt, max_new_tokens=args.length,
                                        generator=torch.Generator().manual_seed(0)).ids.shape[1]

    samplers = {"generate": hf_generate, "workbench (transformers path)": workbench(False), "workbench": workbench(True)}
    rates = {}
    print(f"batch {len(rows)}, {args.length} new tokens per row, median of {args.repeats}")
    for name, run in samplers.items():
        run()  # warm-up
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            generated = run()
            times.append(time.perf_counter() - started)
        assert generated == args.length, (name, generated)
        rates[name] = len(rows) * args.length / statistics.median(times)
        ratio = f", {rates[name] / rates['generate']:.2f}x generate" if name != "generate" else ""
        print(f"{name:>30}: {rates[name]:8.0f} tokens/s ({statistics.median(times):.3f} s){ratio}")


if __name__ == "__main__":
    main()
