"""One feed for widgets: a trainer in this process (LiveRun) and its run directory followed from
outside (RunFollower) give the same rows and the same batches through the same calls."""

from types import SimpleNamespace

import numpy as np
import pytest

from workbench import RunConfig, Trainer
from workbench.run.follower import RunFollower
from workbench.run.source import KEPT_BATCHES, LiveRun, open_run
from workbench.step.batch import RecordedTokens

TINY = dict(num_prompts=2, num_generations=4, max_completion_length=8, threads=1)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return Trainer(RunConfig(**TINY), out_dir=tmp_path_factory.mktemp("runs") / "run")


def test_open_run_gives_each_kind_its_source(trainer, tmp_path):
    live, follower = open_run(trainer), open_run(tmp_path / "elsewhere", steps=3)
    assert isinstance(live, LiveRun) and live.controllable and live.trainer is trainer
    assert isinstance(follower, RunFollower) and not follower.controllable and follower.steps == 3
    live.close()
    with pytest.raises(TypeError, match="source=int is not allowed: a workbench Trainer or a run directory"):
        open_run(3)


def test_a_live_run_and_its_directory_feed_the_same_rows_and_batches(trainer):
    live, follower = open_run(trainer), open_run(trainer.store.dir)
    first = live.poll()
    follower.poll()
    assert first.config is trainer.cfg and first.rows == trainer.records
    trainer.step()
    trainer.step()
    update, written = live.poll(), follower.poll()
    assert [r["step"] for r in update.rows] == [r["step"] for r in written.rows] == [trainer.step_index - 2,
                                                                                    trainer.step_index - 1]
    assert update.rows[-1]["reward_mean"] == pytest.approx(written.rows[-1]["reward_mean"])
    assert update.rollout_steps == written.rollout_steps and update.config is None
    assert f"step {trainer.step_index - 1} recorded · next: step {trainer.step_index}" == live.describe()
    step = trainer.step_index - 1
    held, read = live.step_batch(step), follower.step_batch(step)
    assert held.batch is trainer.last_batch and held.tokenizer is trainer.policy.tokenizer
    assert isinstance(read.tokenizer, RecordedTokens) and read.batch.text == held.batch.text
    np.testing.assert_allclose(read.batch.entropy.numpy(), held.batch.entropy.numpy(), rtol=1e-5)
    assert not live.poll().news  # nothing is returned twice
    live.close()


def test_a_live_run_calls_back_each_phase_and_holds_the_last_batches(trainer):
    live = LiveRun(trainer)
    live.poll()
    calls = []
    stop = live.watch(lambda: calls.append(live.last_phase.name), interval=60)
    trainer.step()
    assert calls[-1] == "metrics" and len(calls) == live.phase_count >= 5
    stop()
    called = len(calls)
    for _ in range(KEPT_BATCHES):
        trainer.step()
    assert len(calls) == called and live.phase_count > called  # stopped watching, still subscribed
    assert live.rollout_steps() == list(range(trainer.step_index - KEPT_BATCHES, trainer.step_index))
    with pytest.raises(LookupError, match=f"step=0 is not held: a live trainer's last {KEPT_BATCHES} steps"):
        live.step_batch(0)
    live.close()
    before = live.phase_count
    trainer.step()
    assert live.phase_count == before  # closed: no longer subscribed


def test_a_live_run_sees_the_config_change(trainer):
    live = LiveRun(trainer)
    live.poll()
    lr = trainer.cfg.learning_rate
    trainer.set_live(learning_rate=lr * 2)
    try:
        assert live.poll().config.learning_rate == lr * 2
    finally:
        trainer.set_live(learning_rate=lr)
    live.close()


def test_a_history_that_went_back_is_read_again_from_its_start():
    # the public surface LiveRun reads, of a trainer whose history a resume cut back
    run = SimpleNamespace(records=[{"step": s} for s in range(4)], last_batch=None, step_index=4,
                          cfg=RunConfig(**TINY), subscribe=lambda callback: lambda: None)
    live = LiveRun(run)
    assert [r["step"] for r in live.poll().rows] == [0, 1, 2, 3]
    run.records = run.records[:2]
    update = live.poll()
    assert update.restarted and [r["step"] for r in update.rows] == [0, 1]
    run.records = run.records + [{"step": 2}]
    update = live.poll()
    assert not update.restarted and update.rows == [{"step": 2}]
