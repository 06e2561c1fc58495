"""The device a run's config names, checked against this machine, and the precision it trains in.

``dtype="auto"`` is chosen by the hardware: bfloat16 on a CUDA GPU; on a CPU, bfloat16 where a short
measured probe finds its matmuls faster than float32's (Intel AMX: about 5x), else float32 (an
AVX2-only CPU: bf16 matmuls 2-70x slower). The probe runs once per machine and is cached; the run
records the chosen precision in config.yaml. ``$WORKBENCH_CPU_DTYPE`` (float32 or bfloat16) makes
the CPU's choice without measuring (the tests set float32: their references are float32's). In half
precision the frozen base weights are stored in it (half the memory, and no re-cast of every weight
on every call, which made autocast over float32 weights slower than float32 itself); the LoRA
adapter and the optimiser stay float32.
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch

from workbench.config import ConfigError, RunConfig
from workbench.models.loading import cache_dir

HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# a SmolLM2-135M MLP projection over 4 responses of 150 tokens: small enough to take about a second
# where bf16 is slow, large enough to reach the matrix units where it is fast
PROBE_SHAPE = (600, 576, 1536)
BF16_FASTER_BELOW = 0.8  # bf16 is chosen where its matmul takes under this fraction of float32's
PROBE_FILE = "precision-probe.json"
CPU_DTYPE_VARIABLE = "WORKBENCH_CPU_DTYPE"  # set: dtype="auto" on a CPU is this, unmeasured
CPU_DTYPES = ("float32", "bfloat16")


def device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(name)
    usable = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (chosen.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(chosen.type, False)
    if not usable:
        have = ", ".join(
            ["cpu"]
            + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            + (["mps"] if torch.backends.mps.is_available() else [])
        )
        raise ConfigError("device", name, f"a device this machine has: auto, {have} (the gpu preset needs a CUDA GPU)")
    return chosen


def precision(name: str, on: torch.device) -> str:
    """The precision a new run trains in on device ``on``: ``name``, or for "auto" the hardware's choice."""
    if name != "auto":
        return name
    if on.type == "cuda":
        return "bfloat16"
    if on.type != "cpu":
        return "float32"
    told = os.environ.get(CPU_DTYPE_VARIABLE)
    if told is not None:
        if told not in CPU_DTYPES:
            raise ConfigError(f"${CPU_DTYPE_VARIABLE}", told, f"one of {', '.join(CPU_DTYPES)}")
        return told
    return "bfloat16" if cpu_bf16_probe()["bf16_faster"] else "float32"


def recorded_auto(on: torch.device) -> str:
    """What ``dtype: auto`` in a config.yaml written before the probe trained in: bfloat16 on a CUDA
    GPU, float32 elsewhere (a resumed run keeps it, whatever this machine's probe says)."""
    return "bfloat16" if on.type == "cuda" else "float32"


def chosen_precision(cfg: RunConfig, on: torch.device, recorded: str | None = None) -> RunConfig:
    """``cfg`` with ``dtype="auto"`` replaced by what trains: a resumed run's ``recorded`` dtype (its
    config.yaml's; "auto" there meaning ``recorded_auto``), else this machine's choice (``precision``)."""
    if cfg.dtype != "auto":
        return cfg
    if recorded is not None:
        return cfg.replace(dtype=recorded_auto(on) if recorded == "auto" else recorded)
    return cfg.replace(dtype=precision("auto", on))


def autocast_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a chosen precision (None: float32, no autocast)."""
    return HALF.get(name)


def cpu_bf16_probe() -> dict:
    """This machine's float32 and bfloat16 matmul times (``PROBE_SHAPE``, best of 5, the current
    thread count), measured once and cached in the workbench cache under the CPU and torch version."""
    key = f"{platform.machine()} {platform.processor()} {os.cpu_count()} cpus {torch.get_num_threads()} threads " + (
        f"{torch.backends.cpu.get_cpu_capability()} torch {torch.__version__}"
    )
    path = cache_dir() / PROBE_FILE
    known = json.loads(path.read_text()) if path.exists() else {}
    if key not in known:
        known[key] = _measure()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(path)  # another process's probe of the same machine writes the same facts
    return known[key]


def _measure() -> dict:
    m, k, n = PROBE_SHAPE
    seconds: dict[str, float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        x @ w  # warm-up: kernels chosen, pages touched
        times: list[float] = []
        while len(times) < 3:
            start = time.perf_counter()
            x @ w
            times.append(time.perf_counter() - start)
            if dtype == torch.bfloat16 and times[-1] > seconds["float32"] * 2:
                break  # clearly slower (an AVX2-only CPU: 2-70x): no need to measure it longer
        seconds[str(dtype).removeprefix("torch.")] = min(times)
    ratio = seconds["bfloat16"] / seconds["float32"]
    return {
        "float32_s": seconds["float32"],
        "bfloat16_s": seconds["bfloat16"],
        "bf16_faster": ratio < BF16_FASTER_BELOW,
    }
