"""Sampling throughput: the workbench's sampler against transformers' ``model.generate``.

    python bench/sampler_throughput.py [--batch 64] [--length 64] [--repeats 5]
    python bench/sampler_throughput.py --model smollm2-135m --prompts 4 --batch 16 --length 48

``--model`` (tiny, smollm2-135m or a directory) with its LoRA adapter (B moved off zero, as after
training), ``--prompts`` prompts of ``--task`` (through the chat template for a chat model: the
same ids for every sampler) repeated to ``--batch`` rows, every row exactly ``--length`` new
tokens (EOS suppressed on all sides), temperature 1, pure sampling. Three samplers:

- ``generate``: ``model.generate(do_sample=True, min_new_tokens=L, max_new_tokens=L)`` of
  transformers on the peft model, no telemetry;
- ``workbench (transformers path)``: the workbench's loop on the peft model (``merged=False``),
  recording entropy, log-prob and top-5 alternatives of every token: the sampler before
  MergedDecoder;
- ``workbench``: the default, through MergedDecoder, with the same telemetry.

Besides, ``matmul floor``: only the weight matmuls of the same decoding (every merged weight
and the output layer, ``--batch`` rows, once per token), no attention, norms or sampling. It is
the fastest any sampler computing full logits in this precision could be here, so
``generate``'s time over it bounds the ratio a sampler can reach on this machine.

Prints generated tokens per second (median of ``--repeats``) and the ratios to ``generate``;
``--samplers`` picks some (``generate`` is always timed); ``--json OUT`` also writes them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import harness
import torch

from workbench import Policy, tasks
from workbench.models.merged_decoder import MergedDecoder
from workbench.models.prompt_layout import left_pad
from workbench.models.sampling import Sampler


def main() -> None:
    parser = harness.add_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]),
                              prompts=8, generations=8, length=64, threads=2)
    parser.add_argument("--batch", type=int, default=None, help="rows (default: prompts x generations)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samplers", default="transformers,workbench,floor",
                        help="besides generate: transformers (the workbench loop, no MergedDecoder), workbench, floor")
    args = harness.resolve(parser.parse_args())
    args.batch = args.batch or args.prompts * args.generations
    torch.set_num_threads(args.threads or torch.get_num_threads())
    policy = Policy.from_pretrained(args.model_dir)
    with torch.no_grad():
        for name, p in policy.trainable_parameters().items():
            if "lora_B" in name:
                p.normal_(std=0.02, generator=torch.Generator().manual_seed(0))
    policy.model.eval()
    prompts = policy.format_prompts([p.prompt for p in tasks.get(args.task).prompts("train", args.prompts, seed=0)])
    per_prompt = args.batch // len(prompts)
    tok = policy.tokenizer
    ids, attention = left_pad([p for p in prompts for _ in range(per_prompt)], tok.pad_token_id)

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

    def matmul_floor():
        decoder = MergedDecoder(policy.model)
        weights = [w for lay in decoder.layers for w in (lay["qkv"], lay["o"][0], lay["gate_up"], lay["down"])]
        weights.append(decoder.lm_head[0])
        inputs = {w.shape[1]: torch.randn(len(ids), w.shape[1], dtype=w.dtype) for w in weights}
        with torch.no_grad():
            for _ in range(args.length):
                for w in weights:
                    torch.nn.functional.linear(inputs[w.shape[1]], w)
        return args.length

    chosen = args.samplers.split(",")
    candidates = {"transformers": ("workbench (transformers path)", lambda: workbench(False)),
                  "workbench": ("workbench", lambda: workbench(True)), "floor": ("matmul floor", lambda: matmul_floor)}
    unknown = set(chosen) - set(candidates)
    if unknown:
        parser.error(f"--samplers: {sorted(unknown)} unknown; choose from {sorted(candidates)}")
    samplers = {"generate": hf_generate, **{candidates[c][0]: candidates[c][1]() for c in chosen}}
    results = {}
    print(f"{harness.describe(args).split(';')[0]}; batch {len(ids)}, {args.length} new tokens per row, "
          f"median of {args.repeats}, {torch.get_num_threads()} threads")
    for name, run in samplers.items():
        run()  # warm-up
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            generated = run()
            times.append(time.perf_counter() - started)
        assert generated == args.length, (name, generated)
        rate = len(ids) * args.length / statistics.median(times)
        results[name] = {"tokens_per_s": rate, "median_s": statistics.median(times), "times": times,
                         "vs_generate": rate / results["generate"]["tokens_per_s"] if results else 1.0}
        ratio = f", {results[name]['vs_generate']:.2f}x generate" if name != "generate" else ""
        print(f"{name:>30}: {rate:8.0f} tokens/s ({statistics.median(times):.3f} s){ratio}")
    harness.write_json(args.json, args, results)


if __name__ == "__main__":
    main()
