"""What the reliability tests share (issue 8): tiny configs, a run directory's digest and hostile
strings (conftest.py has the fixture of a run after 2 steps). Their rows: docs/reliability.md."""

from __future__ import annotations

import hashlib
from pathlib import Path

from workbench import RunConfig

REPO = Path(__file__).resolve().parent.parent
METHOD_OPTIONS = {"eepo": {"gate": "always"}, "poly_epo": {"set_size": 2}, "passk_training": {"k": 2}}  # the unlearning pass always runs
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
SCRIPT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def tiny_config(method: str = "grpo", **changes) -> RunConfig:
    # one thread: on a busy 2-core machine two spinning OpenMP threads can make a step 50x slower
    return RunConfig(method=method, num_prompts=2, num_generations=4, max_completion_length=8, seed=3,
                     method_options=METHOD_OPTIONS.get(method, {}), threads=1, **changes)


def code_sum(text: str) -> int:
    """A deterministic number from a completion, for scripted rewards."""
    return sum(map(ord, text))


def tree_digest(root: Path) -> str:
    """Names, contents and modification times of everything under ``root`` but the writer lock."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.name != ".lock"):  # the writer lock is not run data
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).digest())
        digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()
