"""Calibrate EEPO's unlearning step size on the embedded model.

    python bench/eepo_lr.py [--lrs 0.003,0.03,0.1,0.3,1,3] [--steps 3] [--grpo-steps 20]
                            [--unlearn-clip paper|none] [--max-grad-norm 0.3|none]

Starts from the adapter of a GRPO run of ``--grpo-steps`` steps (the gate opens once entropy
has fallen, so that is where the step matters; a fresh LoRA adapter has B = 0 and moves far
less). For each ``unlearn_lr``, runs a few EEPO steps with the gate forced on and reports the
token KL(policy || rollout model), the drop in mean log-prob of stage-1 tokens, and how
stage 2 compares with stage 1 (accuracy, parsed fraction, distinct strategies). A good
default moves stage 2 visibly (KL of roughly 0.05-0.5 nats/token) without making it
degenerate (stage-2 responses still parse).
"""

from __future__ import annotations

import argparse

import torch

from workbench import RunConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lrs", default="0.003,0.03,0.1,0.3,1,3")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=20)
    parser.add_argument("--unlearn-clip", default="paper", help="EEPO's unlearn_clip: paper or none")
    parser.add_argument("--max-grad-norm", default="0.3", help="unlearn_max_grad_norm (none: the plain step)")
    args = parser.parse_args()
    norm = None if args.max_grad_norm == "none" else float(args.max_grad_norm)
    grpo = Trainer(RunConfig())
    grpo.run(args.grpo_steps, progress=False)
    start = grpo.policy.adapter_state()
    print(f"after {args.grpo_steps} GRPO steps: entropy {grpo.history.entropy_mean.iloc[-1]:.3f} nats; "
          f"unlearn_clip={args.unlearn_clip}, unlearn_max_grad_norm={norm}")
    print(f"{'unlearn_lr':>10} {'KL':>8} {'logp drop':>9} {'acc s1':>7} {'acc s2':>7} {'parsed s2':>9} "
          f"{'strat s1':>8} {'strat s2':>8} {'new in s2':>9}")
    for lr in (float(x) for x in args.lrs.split(",")):
        trainer = Trainer(RunConfig(method="eepo", learning_rate=0.0, method_options={
            "gate": "always", "unlearn_lr": lr, "unlearn_clip": args.unlearn_clip, "unlearn_max_grad_norm": norm}),
                          policy=grpo.policy)
        trainer.policy.load_adapter_state(start)
        rows = []
        for _ in range(args.steps):
            m = trainer.step().metrics
            batch = trainer.last_batch
            stage2 = torch.tensor([s == 2 for s in batch.stage])
            rows.append((m["eepo_kl_policy_rollout"], m["eepo_logp_drop"], m["stage1_accuracy"], m["stage2_accuracy"],
                         float(batch.parsed[stage2].float().mean()), m["stage1_distinct_strategies"],
                         m["stage2_distinct_strategies"], m["stage2_new_strategies"]))
        mean = [sum(col) / len(col) for col in zip(*rows)]
        print(f"{lr:>10g} {mean[0]:>8.4f} {mean[1]:>9.4f} {mean[2]:>7.3f} {mean[3]:>7.3f} {mean[4]:>9.3f} "
              f"{mean[5]:>8.2f} {mean[6]:>8.2f} {mean[7]:>9.2f}")


if __name__ == "__main__":
    main()
