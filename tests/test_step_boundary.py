"""Issue 32 item 5: live changes and forks act at a step boundary, never inside a step, and the
metrics row records the live settings each step ran with."""

from __future__ import annotations

import threading

import torch

from workbench import RunConfig, Trainer

# an entropy bonus moves the adapter even when every reward of a group is equal (no advantage)
SMALL = dict(num_prompts=2, num_generations=4, max_completion_length=8, threads=1, seed=3, entropy_coef=0.05)


def same_adapter(a: Trainer, b: Trainer, atol: float = 0.0) -> bool:
    """Equal adapters (within ``atol``: a forked model's copy sums in another order, ~1e-7; one
    update at learning_rate 0.002 moves every weight by about 2e-3)."""
    left, right = a.policy.adapter_state(), b.policy.adapter_state()
    return all(torch.allclose(left[name], right[name], rtol=0.0, atol=atol) for name in left)


def test_a_live_change_during_a_step_acts_from_the_next_step(tmp_path):
    changed, straight = Trainer(RunConfig(**SMALL), out_dir=tmp_path / "run"), Trainer(RunConfig(**SMALL))
    for phase in changed.phases():
        if phase.name == "advantage":  # the step's update is still to come
            assert changed.changes_act_from == 1
            cfg = changed.set_live(temperature=2.0, learning_rate=0.01)
            assert changed.live_change_acts_from == 1  # what the hyperparameter panel says it acts from
            assert cfg.temperature == 2.0 and changed.cfg.temperature == 1.0  # in force from step 1
    straight.step()
    assert same_adapter(changed, straight)  # step 0 ran wholly with the old settings
    assert changed.records[0]["temperature"] == 1.0 and changed.records[0]["learning_rate"] == 0.002
    assert changed.changes_act_from == 1 and "temperature: 1.0" in (tmp_path / "run" / "config.yaml").read_text()
    straight.set_live(temperature=2.0, learning_rate=0.01)  # the same change made between the steps
    changed.step()
    straight.step()
    assert same_adapter(changed, straight)
    assert changed.records[1]["temperature"] == 2.0 and changed.records[1]["learning_rate"] == 0.01
    assert "temperature: 2.0" in (tmp_path / "run" / "config.yaml").read_text()
    changed.close()


def test_a_fork_during_a_step_branches_from_where_the_step_started():
    trainer = Trainer(RunConfig(**SMALL))
    trainer.step()
    before = Trainer(RunConfig(**SMALL))
    before.step()  # the parent at the boundary of step 1
    for phase in trainer.phases():
        if phase.name == "update":  # updated, not yet on record
            branch = trainer.fork()
    assert branch.step_index == 1 and len(branch.records) == 1
    assert same_adapter(branch, before)  # not the half-finished step's updated adapter
    assert trainer.step_index == 2
    branch.step()
    before.step()
    assert same_adapter(branch, before, atol=1e-5) and branch.records[1]["step"] == 1


def test_a_change_from_another_thread_never_lands_inside_a_step():
    """The hyperparameter panel applies from the UI thread while a runner thread steps."""
    trainer = Trainer(RunConfig(**SMALL))
    done = threading.Event()

    def run():
        trainer.run(4, progress=False)
        done.set()

    runner = threading.Thread(target=run)
    runner.start()
    temperatures = [1.5, 0.5, 2.0, 1.25, 0.75]
    for t in temperatures:
        trainer.set_live(temperature=t)
        if done.is_set():
            break
    runner.join()
    for row in trainer.records:  # each step with one temperature, one of those set
        assert row["temperature"] in [1.0, *temperatures]


def test_a_fork_and_its_parent_keep_their_own_optimizer_state():
    parent, straight = Trainer(RunConfig(**SMALL)), Trainer(RunConfig(**SMALL))
    parent.step()
    straight.step()
    branch = parent.fork()
    parent.step()  # the parent goes on first: its Adam moments move, the branch's must not
    parent.step()
    branch.step()
    straight.step()
    assert same_adapter(branch, straight, atol=1e-5)
