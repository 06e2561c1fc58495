"""Reliability (issue 8): an exception or interrupt in any phase of any method leaves adapter
and optimizer bit-identical; a NaN loss is skipped, recorded and shown. Rows of docs/reliability.md."""

from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter

import pytest
import torch
from reliability_common import code_sum, tiny_config

from workbench import Trainer, methods
from workbench.run.store import RunStore
from workbench.tasks import Countdown, Score


# =============================================================================================
# An exception or KeyboardInterrupt in any phase of any method
# =============================================================================================
def snapshot(trainer) -> dict:
    params = trainer.policy.trainable_parameters()
    return {
        "adapter": {k: v.detach().clone() for k, v in params.items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "param_ids": [id(p) for p in params.values()],
        "optimizer_param_ids": [id(p) for g in trainer.optimizer.param_groups for p in g["params"]],
        "counters": (trainer.step_index, len(trainer.records), trainer.nan_skips),
        "metrics_lines": trainer.store.metrics_path.read_text() if trainer.store else None,
    }


def assert_same(before: dict, after: dict, fault: str) -> None:
    assert before["adapter"].keys() == after["adapter"].keys(), fault
    for name, value in before["adapter"].items():
        assert torch.equal(value, after["adapter"][name]), f"{fault}: adapter {name} changed"
    a, b = before["optimizer"], after["optimizer"]
    assert a["param_groups"] == b["param_groups"], fault
    assert a["state"].keys() == b["state"].keys(), fault
    for index, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key])), \
                f"{fault}: optimizer {key} of parameter {index} changed"
    assert before["param_ids"] == after["param_ids"] == after["optimizer_param_ids"], f"{fault}: parameters swapped"
    assert before["counters"] == after["counters"], fault
    assert before["metrics_lines"] == after["metrics_lines"], f"{fault}: metrics.jsonl changed"


@contextlib.contextmanager
def patched(obj, name: str, wrapper_of):
    """Replace ``obj.name`` by ``wrapper_of(original)`` on the instance; put back on exit."""
    had, old = name in vars(obj), vars(obj).get(name)
    setattr(obj, name, wrapper_of(getattr(obj, name)))
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


def failing_on_call(nth: int, error: BaseException):
    def wrapper_of(original):
        calls = 0

        def wrapper(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == nth:
                raise error
            return original(*args, **kwargs)
        return wrapper
    return wrapper_of


def counting(counts: Counter, key: str):
    def wrapper_of(original):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)
        return wrapper
    return wrapper_of


# the work inside phases: (label, the object holding it, attribute)
CALLS = {
    "sampling": lambda t: (t.sampler, "generate"),
    "forward pass": lambda t: (t.policy, "token_logprobs"),
    "scoring": lambda t: (t, "score"),
    "advantages": lambda t: (t.method, "advantages"),
    "optimizer step": lambda t: (t.optimizer, "step"),
    "method metrics": lambda t: (t.method, "extra_metrics"),
    "rollouts file": lambda t: (t.store, "write_rollouts"),
    "metrics line": lambda t: (t.store, "append_metrics"),
}


def probe(trainer) -> tuple[list[str], Counter]:
    """The phase names of a step and how often each call runs in it; the step is then
    abandoned after its update (closing the generator), which must restore everything too."""
    counts: Counter = Counter()
    before = trainer.policy.adapter_state()
    with contextlib.ExitStack() as stack:
        for label, where in CALLS.items():
            stack.enter_context(patched(*where(trainer), counting(counts, label)))
        names, step = [], trainer.phases()
        for phase in step:
            names.append(phase.name)
            if phase.name == "update":
                moved = trainer.policy.adapter_state()
                assert any(not torch.equal(before[k], moved[k]) for k in before), "the update must move the adapter"
                break
        step.close()
    return names, counts


class ParityTask:
    """Countdown prompts with a reward every completion can earn (its character codes sum to an
    odd number), so groups have reward spread and every update moves the adapter."""

    name = "parity"

    def __init__(self):
        self.base = Countdown()

    def prompts(self, split, n, seed=0):
        return self.base.prompts(split, n, seed)

    def score(self, problem, completion):
        total = code_sum(completion)
        return Score(float(total % 2), str(total % 5), str(total % 3), parsed=True)


def faults(names: list[str], counts: Counter) -> list[tuple]:
    """Every phase boundary, with a KeyboardInterrupt thrown in and an exception from a
    subscriber; every call inside a phase, alternating KeyboardInterrupt and RuntimeError."""
    out = [("interrupt after", name, None) for name in names]
    out += [("subscriber raises at", name, None) for name in names]
    calls = [(label, nth) for label in CALLS for nth in range(1, max(counts[label], 1) + 1)]
    out += [("fails in", label, nth) for label, nth in calls]
    return out


def inject(trainer, fault: tuple, index: int) -> None:
    kind, where, nth = fault
    if kind == "interrupt after":
        step = trainer.phases()
        for phase in step:
            if phase.name == where:
                with pytest.raises(KeyboardInterrupt):
                    step.throw(KeyboardInterrupt())
                return
        raise AssertionError(f"phase {where} never came")
    if kind == "subscriber raises at":
        def explode(phase):
            if phase.name == where:
                raise RuntimeError(f"subscriber at {where}")
        unsubscribe = trainer.subscribe(explode)
        try:
            with pytest.raises(RuntimeError, match="subscriber at"):
                trainer.step()
        finally:
            unsubscribe()
        return
    error = KeyboardInterrupt() if index % 2 else RuntimeError(f"fault in {where}")
    with patched(*CALLS[where](trainer), failing_on_call(nth, error)):
        with pytest.raises(type(error)):
            trainer.step()


@pytest.mark.parametrize("method", methods.names())
def test_a_fault_anywhere_in_a_step_leaves_adapter_and_optimizer_bit_identical(method, tmp_path):
    cfg = tiny_config(method)
    trainer = Trainer(cfg, task=ParityTask(), out_dir=tmp_path / "run")
    trainer.step()  # the optimizer has moments now
    before = snapshot(trainer)
    names, counts = probe(trainer)
    assert_same(before, snapshot(trainer), "closing the step after its update")
    assert counts["sampling"] >= 1 and counts["forward pass"] >= 1 and counts["optimizer step"] == cfg.num_iterations
    for index, fault in enumerate(faults(names, counts)):
        inject(trainer, fault, index)
        assert_same(before, snapshot(trainer), " ".join(map(str, fault)))
    trainer.step()  # works, and is the step an uninterrupted trainer takes
    reference = Trainer(cfg, task=ParityTask())
    reference.run(2, progress=False)
    state, expected = trainer.policy.adapter_state(), reference.policy.adapter_state()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    for key, value in reference.records[-1].items():
        if key != "step_time" and isinstance(value, float):
            assert trainer.records[-1][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    assert [r["step"] for r in trainer.store.read_metrics()] == [0, 1]


def test_a_checkpoint_that_fails_after_the_step_is_recorded_keeps_the_step(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(checkpoint_every=1), task=ParityTask(), out_dir=tmp_path / "run")
    before = trainer.policy.adapter_state()
    monkeypatch.setattr(trainer.store, "save_checkpoint", failing_on_call(1, OSError(28, "No space"))(None))
    with pytest.raises(OSError, match="No space"):
        trainer.step()
    monkeypatch.undo()
    # the step is in metrics.jsonl, so it stays: adapter, step index and history agree with it
    assert trainer.step_index == 1 and [r["step"] for r in trainer.store.read_metrics()] == [0]
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.adapter_state().items())
    trainer.step()
    assert trainer.store.checkpoint_steps() == [0, 2]
    trainer.close()
    assert Trainer.resume(tmp_path / "run").step_index == 2


def test_resume_takes_the_learning_rate_from_config_yaml(tmp_path):
    trainer = Trainer(tiny_config(), out_dir=tmp_path / "run")
    trainer.step()
    trainer.save_checkpoint()
    trainer.set_live(learning_rate=1e-3)  # rewrites config.yaml; the checkpoint still holds 2e-3
    trainer.close()
    resumed = Trainer.resume(tmp_path / "run")
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [1e-3]


# =============================================================================================
# NaN loss: skipped, recorded, shown
# =============================================================================================
def test_a_nan_loss_is_skipped_recorded_and_shown_in_the_dashboard(tmp_path, monkeypatch):
    from widgets import TrainingDashboard

    trainer = Trainer(tiny_config(), out_dir=tmp_path / "run")
    trainer.step()
    adapter = trainer.policy.adapter_state()
    original = trainer.method.advantages

    def nan_advantages(tr, batch):
        numbers = original(tr, batch)
        batch.token_advantages = batch.token_advantages * math.nan
        return numbers

    monkeypatch.setattr(trainer.method, "advantages", nan_advantages)
    skipped = trainer.step().metrics
    monkeypatch.undo()
    assert skipped["skipped"] == 1.0 and skipped["nan_skips"] == 1.0 and math.isnan(skipped["loss"])
    assert all(torch.equal(adapter[k], v) for k, v in trainer.policy.adapter_state().items())
    after = trainer.step().metrics
    assert after["skipped"] == 0.0 and after["nan_skips"] == 1.0 and math.isfinite(after["loss"])
    rows = RunStore(tmp_path / "run").read_metrics()
    assert [(r["skipped"], r["nan_skips"], r["loss"] is None) for r in rows] == [
        (0.0, 0.0, False), (1.0, 1.0, True), (0.0, 1.0, False)]  # the NaN is kept as null, not averaged in

    trainer.save_checkpoint()
    trainer.close()
    for source in (trainer, Trainer.resume(tmp_path / "run")):  # live, and read back from metrics.jsonl
        dashboard = TrainingDashboard(source, min_interval=0)
        try:
            marker = dashboard.trace("skipped_update")
            assert marker.visible and list(marker.x) == [1]
            assert list(marker.y) == pytest.approx([skipped["reward_mean"]])
            assert "1 update skipped (NaN/inf loss) at step 1" in dashboard.status.value
        finally:
            dashboard.close()
    assert Trainer.resume(tmp_path / "run", read_only=True).nan_skips == 1  # the resumed trainer above still writes


