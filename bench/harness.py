"""What the training benchmarks share: model and task options, one timed run of the workbench's
GRPO or of TRL's ``GRPOTrainer`` on the same prompts (each in its own child process), and JSON output.

Not a benchmark itself: ``vs_trl.py``, ``gpu.py``, ``step_time.py`` and ``sampler_throughput.py``
import it (a script's own folder is on ``sys.path``).

Models: ``tiny`` (the embedded model), ``smollm2-135m`` (SmolLM2-135M-Instruct, via
``workbench.models.loading.resolve``) or a local directory. The default task follows the tokenizer: a
chat model gets ``workbench.tasks.reasoning_gym.DEFAULT_REAL_TASK``, a plain one ``countdown``.
With a chat model TRL gets conversational prompts, so both systems train on the same
chat-templated prompt ids, in the same order (``run_trl`` checks both: ``same_prompts``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue as queues
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


# --- options ------------------------------------------------------------------------------------
def add_args(parser: argparse.ArgumentParser, *, prompts: int, generations: int, length: int, steps: int | None = None,
             warmup: int | None = None, threads: int = 2, model: str = "tiny") -> argparse.ArgumentParser:
    """The options every training benchmark takes, with that script's defaults."""
    parser.add_argument("--model", default=model, help="tiny, smollm2-135m or a model directory")
    parser.add_argument("--task", default=None, help="default: countdown for a plain model, the real-model default "
                        "task (workbench.tasks.reasoning_gym.DEFAULT_REAL_TASK) for a chat model")
    parser.add_argument("--prompts", type=int, default=prompts, help="distinct prompts a step")
    parser.add_argument("--generations", type=int, default=generations, help="completions per prompt")
    parser.add_argument("--length", type=int, default=length, help="completion tokens")
    if steps is not None:
        parser.add_argument("--steps", type=int, default=steps, help="measured steps")
        parser.add_argument("--warmup", type=int, default=warmup, help="steps run first and not measured")
    parser.add_argument("--threads", type=int, default=threads, help="CPU threads (0: all cores)")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="both systems' (auto: the workbench's measured choice for the device, "
                        "devices.precision; TRL then gets bf16=True where it is bfloat16)")
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the results to this JSON file")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill ``args.model_dir`` (the named model converted on first use) and the default ``args.task``."""
    from workbench.models import loading as models

    args.model_dir = str(models.resolve(args.model)) if args.model in models.NAMES else args.model
    if not Path(args.model_dir, "config.json").is_file():
        raise SystemExit(f"--model {args.model!r}: not {' or '.join(models.NAMES)} nor a model directory")
    if args.task is None:
        args.task = default_task(args.model_dir)
    return args


def is_chat(model_dir: str) -> bool:
    from transformers import AutoTokenizer

    return bool(getattr(AutoTokenizer.from_pretrained(model_dir), "chat_template", None))


def default_task(model_dir: str) -> str:
    if is_chat(model_dir):
        try:
            from workbench.tasks.reasoning_gym import DEFAULT_REAL_TASK

            return DEFAULT_REAL_TASK
        except ImportError:  # reasoning-gym not installed
            pass
    return "countdown"


def describe(args: argparse.Namespace) -> str:
    return f"model {args.model}, task {args.task}; {args.prompts} prompts x {args.generations} generations"


# --- one timed run ---------------------------------------------------------------------------------
@dataclass
class Setting:
    """One side-by-side run: both systems get exactly this."""

    model_dir: str
    task: str
    prompts: int
    generations: int
    length: int  # every completion exactly this many tokens (EOS suppressed on both sides)
    steps: int  # warm-up included
    threads: int = 2  # on the CPU (0: all cores)
    device: str = "cpu"
    lora_r: int = 8  # alpha = 2 r, all linear layers, no dropout
    learning_rate: float = 2e-3
    precision: str = "float32"  # resolved: float32 or bfloat16 (the workbench's base stored in it)

    @property
    def bf16(self) -> bool:  # TRL's bf16=True: autocast, as TRL does it
        return self.precision == "bfloat16"


def setting(args: argparse.Namespace, **overrides) -> Setting:
    """The Setting of a script's options (``add_args``, after ``resolve``); ``--precision auto``
    resolved as a workbench run would on this device (``devices.precision``: measured on a CPU)."""
    import torch

    from workbench.engine import devices

    values = dict(model_dir=args.model_dir, task=args.task, prompts=args.prompts, generations=args.generations,
                  length=args.length, steps=args.warmup + args.steps, threads=args.threads)
    values.update(overrides)
    if args.threads:
        torch.set_num_threads(args.threads)  # the probe is per thread count
    chosen = devices.precision(getattr(args, "precision", "auto"), torch.device(values.get("device", "cpu")))
    return Setting(**{**values, "precision": chosen})


def step_problems(s: Setting) -> list:
    """The problems of every step, ``s.prompts`` each: the same on both sides."""
    from workbench import tasks

    problems = tasks.get(s.task).prompts("train", s.prompts * s.steps, seed=0)
    return [problems[i * s.prompts:(i + 1) * s.prompts] for i in range(s.steps)]


def timed_step(trainer) -> tuple[float, dict[str, float]]:
    """One workbench step: its wall time and the time of each phase."""
    phases = {}
    started = last = time.perf_counter()
    for phase in trainer.phases():
        now = time.perf_counter()
        phases[phase.name] = phases.get(phase.name, 0.0) + now - last
        last = now
    return time.perf_counter() - started, phases


def run_workbench(s: Setting, queue) -> None:
    """The workbench's GRPO, all telemetry on: beta 0, the DAPO loss, one update per batch."""
    from workbench import RunConfig, Trainer

    trainer = Trainer(RunConfig(model=s.model_dir, task=s.task, num_prompts=s.prompts, num_generations=s.generations,
                                max_completion_length=s.length, learning_rate=s.learning_rate, beta=0.0,
                                loss_type="dapo", lora_r=s.lora_r, lora_alpha=2 * s.lora_r, threads=s.threads,
                                device=s.device, dtype=s.precision))
    trainer.sampler.eos_token_id = -1  # no token id is -1: every completion runs to the limit, as TRL's min_new_tokens
    schedule = iter(step_problems(s))
    trainer.train_problems = lambda: next(schedule)  # TRL's prompts, in TRL's order
    times, phases = [], []
    for _ in range(s.steps):
        seconds, step_phases = timed_step(trainer)
        times.append(seconds)
        phases.append(step_phases)
    queue.put({"times": times, "sampling": [p["sample"] for p in phases], "phases": phases,
               "tokens": float(trainer.history["response_length"].iloc[-1]) * s.prompts * s.generations, **_peaks()})


def run_trl(s: Setting, queue) -> None:
    """TRL's GRPOTrainer on its HF-generate path: the same LoRA, lr, loss and beta, gradient
    checkpointing off (its default is on), completions forced to ``s.length`` by min_new_tokens."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from workbench import tasks
    from workbench.models.policy import Policy

    if s.device == "cpu":
        torch.set_num_threads(s.threads or os.cpu_count() or 1)
    task = tasks.get(s.task)
    schedule = step_problems(s)
    problems = [p for step in schedule for p in step]
    by_prompt = {p.prompt: p for p in problems}
    tokenizer = AutoTokenizer.from_pretrained(s.model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    chat = bool(getattr(tokenizer, "chat_template", None))

    def as_prompt(text: str):
        return [{"role": "user", "content": text}] if chat else text

    def text(value) -> str:  # a conversational prompt or completion is a list of messages
        return value[-1]["content"] if isinstance(value, list) else value

    seen: list[set[str]] = []  # each step's prompts, to check that TRL took them in the workbench's order

    def reward(prompts, completions, **kwargs):
        seen.append({text(p) for p in prompts})
        scores = tasks.score_batch(task, [by_prompt[text(p)] for p in prompts], [text(c) for c in completions])
        return [score.reward for score in scores]

    model = AutoModelForCausalLM.from_pretrained(s.model_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=s.device == "cpu", bf16=s.bf16, max_steps=s.steps, learning_rate=s.learning_rate,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            per_device_train_batch_size=s.prompts * s.generations, num_generations=s.generations,
            max_completion_length=s.length, generation_kwargs={"min_new_tokens": s.length},
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, loss_type="dapo", epsilon=0.2,
            gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=0,
            shuffle_dataset=False, dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=config, processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"prompt": [as_prompt(p.prompt) for p in problems]}),
            peft_config=LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r, lora_dropout=0.0, target_modules="all-linear",
                                   task_type="CAUSAL_LM"),
        )
        same_ids = True  # TRL's own tokenisation of the first step's prompts against the workbench's
        if hasattr(trainer, "_tokenize_prompts"):
            first = [p.prompt for p in schedule[0]]
            theirs = trainer._tokenize_prompts([as_prompt(t) for t in first])[0]
            same_ids = [list(r) for r in theirs] == Policy(model=None, tokenizer=tokenizer).format_prompts(first)
        checkpointing = bool(getattr(trainer.model, "is_gradient_checkpointing", False))  # must stay off, as ours
        times, sampling = timed_trl(trainer)
        trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    same_prompts = same_ids and seen == [{p.prompt for p in step} for step in schedule]
    queue.put({"times": times, "sampling": sampling, "same_prompts": same_prompts,
               "gradient_checkpointing": checkpointing,
               "tokens": lengths[-1] * s.prompts * s.generations if lengths else float("nan"), **_peaks()})


def timed_trl(trainer) -> tuple[list[float], list[float]]:
    """Lists that fill with each step's time and each generation's time as a TRL trainer trains."""
    from transformers import TrainerCallback

    times: list[float] = []
    sampling: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)

    trainer.add_callback(StepTimer())
    generate = trainer._generate

    def timed_generate(*a, **kw):  # TRL logs no generation time of its own
        started = time.perf_counter()
        result = generate(*a, **kw)
        sampling.append(time.perf_counter() - started)
        return result

    trainer._generate = timed_generate
    return times, sampling


def run_workbench_trl(s: Setting, queue) -> None:
    """The workbench's GRPO on TRL (``WorkbenchGRPOTrainer``): run_trl's work plus the workbench's
    telemetry (a scoring pass for entropy and top-5 alternatives, pivots, rollouts written)."""
    import torch

    from workbench import RunConfig
    from workbench.integrations.trl import WorkbenchGRPOTrainer

    if s.device == "cpu":
        torch.set_num_threads(s.threads or os.cpu_count() or 1)
    cfg = RunConfig(model=s.model_dir, task=s.task, num_prompts=s.prompts, num_generations=s.generations,
                    max_completion_length=s.length, learning_rate=s.learning_rate, beta=0.0, loss_type="dapo",
                    lora_r=s.lora_r, lora_alpha=2 * s.lora_r, threads=s.threads, device=s.device,
                    dtype=s.precision, track_kl=False)
    with tempfile.TemporaryDirectory() as out:
        trainer = WorkbenchGRPOTrainer(cfg, Path(out) / "run", steps=s.steps,
                                       generation_kwargs={"min_new_tokens": s.length})
        times, sampling = timed_trl(trainer)
        trainer.train()
        rows = trainer.run_store.read_metrics()
    queue.put({"times": times, "sampling": sampling,
               "tokens": rows[-1]["response_length"] * s.prompts * s.generations, **_peaks()})


def _peaks() -> dict:
    import torch

    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def in_child(target, *args):
    """``target(*args, queue)`` in a fresh process (its peak memory its own); what it put on the queue."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queues.Empty:
            if not process.is_alive():
                try:
                    result = queue.get(timeout=1)
                    break
                except queues.Empty:
                    failed = f"{target.__name__} failed in its child process (exit code {process.exitcode})"
                    raise SystemExit(failed) from None
    process.join()
    return result


def summary(result: dict, warmup: int, tokens_per_step: int) -> dict:
    """Medians over the measured steps (after ``warmup``) of one system's run."""
    times, sampling = result["times"][warmup:], result["sampling"][warmup:]
    out = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
           "sampling_s": statistics.median(sampling) if sampling else None,
           "sampling_tokens_per_s": tokens_per_step / statistics.median(sampling) if sampling else None,
           **{k: v for k, v in result.items() if k not in ("times", "sampling", "phases")}, "times": result["times"]}
    if result.get("phases"):
        measured = result["phases"][warmup:]
        out["phases_s"] = {name: statistics.median(p.get(name, 0.0) for p in measured) for name in measured[0]}
    return out


# --- output ---------------------------------------------------------------------------------------
def environment() -> dict:
    import torch
    import transformers

    info = {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": cpu_features()}
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def cpu_features() -> str:
    """The CPU's model and the flags that decide matmul speed (every figure is recorded with them)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        return platform.processor()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return f"{model}; " + " ".join(f for f in wanted if f in flags)


def write_json(path: str | None, args: argparse.Namespace, results: dict) -> None:
    if not path:
        return
    options = {k: v for k, v in vars(args).items() if k != "json"}
    payload = {"command": options, "environment": environment(), "results": results}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"wrote {path}")

