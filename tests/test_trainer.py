"""The GRPO trainer on the embedded model: phases, exact interruption, resume, NaN skips."""

import math

import pytest
import torch

from workbench import RunConfig, Trainer
from workbench.config import ConfigError
from workbench.engine import update
from workbench.run.store import RunStore

QUICK = dict(num_prompts=4, num_generations=4, max_completion_length=24, seed=1)


def adapter_and_optimizer(trainer):
    return trainer.policy.adapter_state(), {k: {n: v.clone() for n, v in s.items()} for k, s in trainer.optimizer.state.items()}


def same_state(a, b):
    (ad_a, opt_a), (ad_b, opt_b) = a, b
    return all(torch.equal(ad_a[k], ad_b[k]) for k in ad_a) and len(opt_a) == len(opt_b)


def test_phases_in_order_and_metrics_recorded():
    trainer = Trainer(RunConfig(**QUICK))
    names = [p.name for p in trainer.phases()]
    assert names == ["sample", "score", "advantage", "update", "metrics"]
    m = trainer.history.iloc[-1]
    for key in ("reward_mean", "entropy_mean", "entropy_p50", "entropy_p80", "entropy_p95", "response_length",
                "frac_reward_zero_std", "kl", "clip_fraction", "unique_answers", "distinct_strategies", "step_time"):
        assert math.isfinite(m[key]), key
    assert m["entropy_p50"] <= m["entropy_p80"] <= m["entropy_p95"]
    batch = trainer.last_batch
    assert len(batch) == 16 and batch.advantages.shape == (16,) and batch.pivots.shape == batch.mask.shape
    assert abs(m["kl"]) < 1e-6  # LoRA starts as the identity: policy == reference


@pytest.mark.parametrize("stop_after", ["sample", "score", "advantage", "update"])
def test_interrupting_a_step_leaves_the_policy_as_it_was(stop_after):
    trainer = Trainer(RunConfig(**QUICK))
    trainer.step()  # the optimizer has state now
    before = adapter_and_optimizer(trainer)
    phases = trainer.phases()
    for phase in phases:
        if phase.name == stop_after:
            break
    phases.close()
    assert same_state(before, adapter_and_optimizer(trainer))
    assert trainer.step_index == 1 and len(trainer.history) == 1
    trainer.step()
    assert trainer.step_index == 2


def test_exception_in_a_phase_restores_adapter_and_optimizer(monkeypatch):
    trainer = Trainer(RunConfig(**QUICK))
    trainer.step()
    before = adapter_and_optimizer(trainer)
    original = trainer.method.loss_settings
    monkeypatch.setattr(trainer.method, "loss_settings", lambda batch=None: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        trainer.step()
    assert same_state(before, adapter_and_optimizer(trainer))
    monkeypatch.setattr(trainer.method, "loss_settings", original)
    trainer.step()
    assert trainer.step_index == 2


def test_nan_loss_skips_the_update_and_is_counted(monkeypatch):
    trainer = Trainer(RunConfig(**QUICK))
    before = trainer.policy.adapter_state()
    original = trainer.method.advantages

    def nan_advantages(tr, batch):
        original(tr, batch)
        batch.token_advantages = batch.token_advantages * float("nan")
        return {}

    monkeypatch.setattr(trainer.method, "advantages", nan_advantages)
    result = trainer.step()
    assert result.metrics["skipped"] == 1.0 and result.metrics["nan_skips"] == 1.0
    assert math.isnan(result.metrics["loss"])
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.adapter_state().items())


@pytest.mark.parametrize("method", ["grpo", "eepo"])
def test_resume_continues_exactly(tmp_path, method):
    cfg = RunConfig(**QUICK, method=method)  # EEPO's gate reads the history: resume must restore it
    straight = Trainer(cfg)
    straight.run(4, progress=False)
    first = Trainer(cfg, out_dir=tmp_path / "run")
    first.run(2, progress=False)  # run() checkpoints at its end
    first.close()  # one writer at a time: let go of the run directory
    resumed = Trainer.resume(tmp_path / "run")
    assert resumed.step_index == 2
    resumed.run(2, progress=False)
    a, b = straight.history.drop(columns="step_time"), resumed.history.drop(columns="step_time")
    assert list(b["step"]) == [0, 1, 2, 3]
    diff = (a.astype(float) - b.astype(float)).abs().fillna(0).max().max()
    assert diff < 1e-6
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert sorted((tmp_path / "run" / "rollouts").glob("*.parquet"))


def test_gradient_accumulation_equals_one_big_batch():
    gradients, chunk_counts = [], []
    for accumulation in (1, 2):
        trainer = Trainer(RunConfig(**QUICK, gradient_accumulation_steps=accumulation, learning_rate=1e-2))
        seen = {}
        original_step = trainer.optimizer.step

        def step_recording_gradients(*args, seen=seen, original_step=original_step, **kwargs):
            seen.update({name: p.grad.clone() for name, p in trainer.policy.model.named_parameters() if p.grad is not None})
            return original_step(*args, **kwargs)

        trainer.optimizer.step = step_recording_gradients
        original_chunks = update.split_into_micro_batches
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(update, "split_into_micro_batches",
                          lambda *a, **k: chunk_counts.append(len(c := original_chunks(*a, **k))) or c)
            trainer.step()
        gradients.append(seen)
    assert chunk_counts == [1, 2]  # the default token budget holds this batch whole
    one, two = gradients
    assert one.keys() == two.keys() and one
    scale = max(g.abs().max() for g in one.values())
    assert scale > 0
    # The same sum in a different order: float rounding only. A wrong normalisation of the
    # accumulated micro-batches would be off by a factor near 2.
    assert max((one[k] - two[k]).abs().max() for k in one) < 1e-5 * scale


def test_entropy_bonus_has_a_real_gradient(monkeypatch):
    cfg = RunConfig(**QUICK, entropy_coef=5.0, learning_rate=2e-2, track_kl=False)
    trainer = Trainer(cfg)
    original = trainer.method.advantages

    def zero_advantages(tr, batch):
        original(tr, batch)
        batch.token_advantages = torch.zeros_like(batch.token_advantages)
        return {}

    monkeypatch.setattr(trainer.method, "advantages", zero_advantages)
    for phase in trainer.phases():
        if phase.name == "advantage":
            batch = phase.batch
            with torch.no_grad():
                _, before = trainer.policy.token_logprobs(batch.prompt_ids, batch.ids)
    with torch.no_grad():
        _, after = trainer.policy.token_logprobs(batch.prompt_ids, batch.ids)
    valid = batch.mask.bool()
    assert after[valid].mean() > before[valid].mean() + 1e-3


def test_kl_penalty_and_multiple_iterations_run():
    trainer = Trainer(RunConfig(**QUICK, beta=0.1, num_iterations=2))
    trainer.run(3, progress=False)
    h = trainer.history
    assert (h["kl"] >= 0).all() and h["kl"].iloc[-1] > 0


def test_evaluate_reports_monotone_pass_at_k():
    trainer = Trainer(RunConfig(**QUICK))
    result = trainer.evaluate("test", k=(1, 2, 4), n_samples=4, num_prompts=8)
    assert 0 <= result["pass@1"] <= result["pass@2"] <= result["pass@4"] <= 1
    assert result["samples"] == 32 and result["entropy_mean"] > 0


def test_evaluate_samples_each_question_once(monkeypatch):
    trainer = Trainer(RunConfig(**QUICK))
    drawn = trainer.task.prompts("test", 3, seed=12345)
    # a split with few distinct questions repeats them among its draws
    monkeypatch.setattr(trainer.task, "prompts", lambda split, n, seed=0: [drawn[0], drawn[1], drawn[0], drawn[2]])
    seen = []
    sample_group = trainer.sample_group

    def recorded(chunk, *args, **kwargs):
        seen.extend(chunk)
        return sample_group(chunk, *args, **kwargs)

    monkeypatch.setattr(trainer, "sample_group", recorded)
    result = trainer.evaluate("test", k=(1,), n_samples=2, num_prompts=4)
    assert [p.prompt for p in seen] == [p.prompt for p in drawn]
    assert result["prompts"] == 3 and result["samples"] == 6


def test_evaluate_gives_accuracys_interval_over_prompts(monkeypatch):
    trainer = Trainer(RunConfig(**QUICK))
    # successes by prompt: 4, 0, 2, 2 of 4 samples -> per-prompt accuracies 1, 0, .5, .5
    wins = iter([1.0] * 4 + [0.0] * 4 + [1.0, 0.0, 1.0, 0.0] * 2)
    score = trainer.score

    def scripted(batch):
        score(batch)
        batch.rewards = torch.tensor([next(wins) for _ in range(len(batch.rewards))])

    monkeypatch.setattr(trainer, "score", scripted)
    result = trainer.evaluate("test", k=(1,), n_samples=4, num_prompts=4)
    assert result["accuracy"] == result["pass@1"] == 0.5
    assert result["accuracy_ci95"] == pytest.approx(1.96 * (0.5 / 3) ** 0.5 / 2)  # sample variance of 1, 0, .5, .5
    # these 4 prompts' own sampling: p(1 - p) of 0, 0, .25, .25 over n - 1 = 3, root, over 4 prompts
    assert result["accuracy_ci95_sampling"] == pytest.approx(1.96 * (0.5 / 3) ** 0.5 / 4)


def test_sampling_interval_covers_the_questions_accuracy_95_percent_of_the_time():
    from workbench.engine.evaluation import sampling_half_width

    generator = torch.Generator().manual_seed(0)
    p = torch.linspace(0.05, 0.95, 46, dtype=torch.float64)  # the questions' true success rates
    wins = torch.binomial(torch.full((4000, 46), 32.0, dtype=torch.float64), p.expand(4000, 46), generator=generator)
    covered = [
        abs(float(row.sum()) / (46 * 32) - float(p.mean())) <= sampling_half_width(row.int().tolist(), 32)
        for row in wins
    ]
    assert 0.935 <= sum(covered) / len(covered) <= 0.965


def test_subscribers_see_every_phase_and_can_unsubscribe():
    trainer = Trainer(RunConfig(**QUICK))
    seen = []
    unsubscribe = trainer.subscribe(lambda phase: seen.append((phase.step, phase.name)))
    trainer.step()
    assert seen == [(0, "sample"), (0, "score"), (0, "advantage"), (0, "update"), (0, "metrics")]
    unsubscribe()
    trainer.step()
    assert len(seen) == 5


def test_live_settings_apply_from_the_next_step_and_persist(tmp_path):
    trainer = Trainer(RunConfig(**QUICK, method="eepo"), out_dir=tmp_path / "run")
    trainer.step()
    trainer.set_live(learning_rate=1e-3, temperature=0.8, method_options={"alpha": 0.5})
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3 and trainer.method.options["alpha"] == 0.5
    assert trainer.method.options["window"] == 3  # merged, not replaced
    assert RunStore(tmp_path / "run").config().temperature == 0.8
    with pytest.raises(ConfigError, match="num_generations.*fork"):
        trainer.set_live(num_generations=8)
    with pytest.raises(ConfigError, match="temperature"):
        trainer.set_live(temperature=-1.0)
    assert trainer.cfg.temperature == 0.8  # a rejected change changes nothing
    assert trainer.step().metrics["step"] == 1


def test_fork_starts_from_the_same_adapter_and_history():
    trainer = Trainer(RunConfig(**QUICK))
    trainer.run(2, progress=False)
    branch = trainer.fork(learning_rate=5e-3, entropy_coef=0.01)
    assert branch.step_index == 2 and len(branch.history) == 2 and branch.cfg.entropy_coef == 0.01
    state, branch_state = trainer.policy.adapter_state(), branch.policy.adapter_state()
    assert all(torch.equal(state[k], branch_state[k]) for k in state)
    branch.step()
    assert trainer.step_index == 2 and all(torch.equal(state[k], v) for k, v in trainer.policy.adapter_state().items())
    with pytest.raises(ConfigError, match="fork"):
        trainer.fork(lora_r=4)


def test_a_fork_trains_on_the_task_it_is_given():
    trainer = Trainer(RunConfig(**QUICK))
    trainer.step()
    branch = trainer.fork(task="coins")
    assert branch.task.name == "coins" and trainer.task.name == "countdown"
    assert branch.train_problems()[0].id.startswith("coins")
    branch.step()
    assert branch.last_batch.problems[0].id.startswith("coins") and branch.cfg.task == "coins"


def test_a_fork_takes_the_new_weight_decay_and_learning_rate():
    trainer = Trainer(RunConfig(**QUICK))
    trainer.step()
    branch = trainer.fork(weight_decay=0.5, learning_rate=1e-2)
    assert [(g["lr"], g["weight_decay"]) for g in branch.optimizer.param_groups] == [(1e-2, 0.5)]
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.0]
    # the decay acts: the same step with and without it ends on different adapters
    plain = trainer.fork(learning_rate=1e-2)
    branch.step(), plain.step()
    a, b = branch.policy.adapter_state(), plain.policy.adapter_state()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("field,value", [("model", "other"), ("lora_r", 4), ("device", "cuda"), ("dtype", "float16")])
def test_a_fork_refuses_what_would_change_the_model_and_names_it(field, value):
    trainer = Trainer(RunConfig(**QUICK))
    with pytest.raises(ConfigError, match=f"^{field}=.*a fork keeps the model"):
        trainer.fork(**{field: value})


def test_evaluate_returns_the_whole_pass_at_k_curve():
    from workbench.metrics import pass_at_k_grid

    assert pass_at_k_grid(64) == [1, 2, 4, 8, 16, 32, 64] and pass_at_k_grid(12) == [1, 2, 4, 8, 12]
    result = Trainer(RunConfig(**QUICK)).evaluate("test", n_samples=4, num_prompts=2)
    assert [key for key in result if key.startswith("pass@")] == ["pass@1", "pass@2", "pass@4"]
    assert result["pass@1"] <= result["pass@2"] <= result["pass@4"]


def test_a_step_cursor_walks_the_phases_and_a_second_open_step_is_refused():
    from workbench.engine.step_cursor import StepCursor

    trainer = Trainer(RunConfig(**QUICK))
    before = {k: v.clone() for k, v in trainer.policy.adapter_state().items()}
    cursor, other = StepCursor(trainer), StepCursor(trainer)
    assert cursor.next_phase().name == "sample" and cursor.is_open
    with pytest.raises(RuntimeError, match="already part-way"):
        other.next_phase()
    with pytest.raises(RuntimeError, match="already part-way"):
        trainer.step()
    assert not other.is_open
    assert [cursor.next_phase().name for _ in range(3)] == ["score", "advantage", "update"]
    cursor.discard()  # abandoned after the update: the adapter goes back
    assert not cursor.is_open and trainer.step_index == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.adapter_state().items())
    names = [other.next_phase().name for _ in range(5)]
    assert names == ["sample", "score", "advantage", "update", "metrics"] and not other.is_open
    assert trainer.step_index == 1 and trainer.step().metrics["step"] == 1


def test_the_progress_bar_names_the_method_and_the_run(capsys):
    trainer = Trainer(RunConfig(**QUICK))
    trainer.run(1, label="branch: entropy bonus 0.05")
    assert "grpo · branch: entropy bonus 0.05" in capsys.readouterr().err
