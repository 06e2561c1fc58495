"""One batch through every method (workbench.credit, widgets.same_batch): each method's column
against its formula computed by hand, the methods run on copies of one batch, and the widget
built from the result."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from workbench import RolloutBatch, RunConfig, Trainer, core, methods
from workbench.credit import credit_by_method
from workbench.engine.step_cursor import StepCursor
from workbench.tasks import Problem

G = 6
# rewards chosen so that every kind of group is there: all correct, all wrong, one correct, five correct
REWARDS = [1.0] * G + [0.0] * G + [1.0] + [0.0] * (G - 1) + [1.0] * (G - 1) + [0.0]


@pytest.fixture(scope="module")
def trainer():
    trainer = Trainer(RunConfig(num_prompts=4, num_generations=G, max_completion_length=16, threads=1, seed=0))
    trainer.run(3, progress=False)  # the adapter has moved: ERPO's progress is not 0
    return trainer


@pytest.fixture(scope="module")
def batch(trainer):
    """A batch the trainer's current policy sampled, stopped at its score phase, rewards set by hand."""
    cursor = StepCursor(trainer)
    while (phase := cursor.next_phase()).name != "score":
        pass
    cursor.discard()
    phase.batch.rewards = torch.tensor(REWARDS)
    return phase.batch


@pytest.fixture(scope="module")
def credit(trainer, batch):
    return credit_by_method(trainer, batch)


def test_every_method_runs_on_its_defaults_and_grpo_comes_first(credit):
    assert list(credit.methods)[0] == "grpo"
    assert sorted(credit.methods) == methods.names() and credit.unavailable == {}


def test_grpo_is_the_group_advantage_by_hand_on_every_token(credit, batch):
    by_hand = []
    for g in range(4):
        r = [float(x) for x in REWARDS[g * G : (g + 1) * G]]
        mean = sum(r) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (G - 1))  # unbiased, as TRL
        by_hand += [0.0 if std == 0 else (x - mean) / (std + 1e-4) for x in r]
    grpo = credit.reference
    assert grpo.advantages.tolist() == pytest.approx(by_hand, abs=1e-5)
    assert torch.allclose(grpo.token_advantages, grpo.advantages[:, None] * batch.mask)
    assert torch.allclose(grpo.credit, grpo.token_advantages, atol=1e-6)  # every token kept, ratio 1


def test_w_reinforce_is_lambda_r_or_r_minus_1_and_credits_the_groups_grpo_leaves_at_0(credit):
    by_hand = [0.1 * r if r > 0.5 else r - 1.0 for r in REWARDS]
    assert credit.methods["w_reinforce"].advantages.tolist() == pytest.approx(by_hand)
    # the all-correct and the all-wrong groups: 0 under GRPO, +0.1 and -1 here
    assert credit.summary().loc["w_reinforce", "rows_credited_grpo_gives_none"] == 2 * G


def test_passk_is_its_formula_and_silences_a_group_whose_pass_at_k_is_certain(credit):
    k = 4
    expected = []
    for g in range(4):
        correct = REWARDS[g * G : (g + 1) * G]
        c = int(sum(correct))
        rho = 1 - math.comb(G - c, k) / math.comb(G, k)
        sigma = math.sqrt(rho * (1 - rho))
        wrong = math.comb(G - c - 1, k - 1) / math.comb(G - 1, k - 1) if c < G else 0.0
        expected += [(1 - rho) / (sigma + 1e-6) if x else (1 - rho - wrong) / (sigma + 1e-6) for x in correct]
    passk = credit.methods["passk_training"]
    assert passk.advantages.tolist() == pytest.approx(expected, abs=1e-4)
    # one correct of six: worth 0.71, GRPO gives it 2.04; five of six: pass@4 is 1 whatever, so 0
    assert passk.advantages[2 * G].item() == pytest.approx(1 / math.sqrt(2), abs=1e-4)
    assert credit.summary().loc["passk_training", "rows_grpo_credits_it_gives_none"] == G


def test_erpo_gate_and_credit_are_what_the_erpo_method_computes(trainer, batch, credit):
    erpo = methods.get("erpo")(trainer.cfg.replace(method="erpo"))
    own = batch.select(range(len(batch)))
    erpo.advantages(trainer, own)
    got = credit.methods["erpo"]
    assert torch.equal(got.values["gate"], own.gate) and torch.equal(got.token_advantages, own.token_advantages)
    assert credit.summary().loc["erpo", "differs_from_grpo"] > 0  # after training, progress shapes the credit


def test_policy_split_on_a_normal_only_batch_is_grpo_in_its_own_context_and_shows_its_bonus(credit):
    split = credit.methods["policy_split"]
    assert "policy_split" in credit.groups()[0]
    assert any("no responses sampled in its high_entropy mode" in note for note in split.notes)
    grpo = credit.reference.token_advantages
    assert torch.allclose(split.values["in high_entropy context"], grpo + split.values["he_bonus"])


def test_policy_split_on_its_own_two_context_batch_adds_its_bonus_to_the_high_entropy_rows_only():
    trainer = Trainer(RunConfig(method="policy_split", num_prompts=2, num_generations=4, max_completion_length=12,
                                threads=1, seed=0))  # fmt: skip
    cursor = StepCursor(trainer)
    while (phase := cursor.next_phase()).name != "score":
        pass
    cursor.discard()
    phase.batch.rewards = torch.tensor([1.0, 0.0] * 4)  # each mode's half holds a correct response
    credit = credit_by_method(trainer, phase.batch, methods=["policy_split"])
    split, grpo = credit.methods["policy_split"], credit.reference
    he = torch.tensor([m == "high_entropy" for m in phase.batch.mode])
    bonus = split.values["he_bonus"]
    assert torch.allclose(split.credit[he], grpo.credit[he] + bonus[he]) and bonus[he].abs().sum() > 0
    assert torch.equal(split.credit[~he], grpo.credit[~he])
    # recorded, the high-entropy rows get the system prompt back from their mode: the same bonus
    recorded = RolloutBatch.from_frame(phase.batch.to_frame(step=0))
    again = credit_by_method(trainer, recorded, methods=["policy_split"])
    assert again.batch.prompt_ids == phase.batch.prompt_ids
    assert torch.allclose(again.methods["policy_split"].credit, split.credit, atol=1e-5)


def test_methods_that_differ_only_in_the_loss_share_grpos_credit_and_top_entropy_keeps_a_fifth(credit, batch):
    for name in ("entropy_bonus", "clip_higher", "kl_cov", "eepo", "adaptive_entropy"):
        assert name in credit.groups()[0]
    top = credit.methods["top_entropy"]
    assert torch.equal(top.kept, core.top_entropy_mask(batch.entropy, batch.mask, 0.2))
    assert torch.allclose(top.credit, credit.reference.token_advantages * top.kept)
    notes = "; ".join(credit.methods["clip_higher"].notes)
    assert "clips the ratio from above at 1 + 0.28 (GRPO: 0.2)" in notes and "never acts" in notes


def test_the_batch_given_is_not_modified_and_the_result_is_deterministic(trainer, batch, credit):
    before = {name: getattr(batch, name) for name in ("advantages", "token_advantages", "gate", "ref_logprobs")}
    ids, rewards, extras = batch.ids.clone(), batch.rewards.clone(), dict(batch.extras)
    again = credit_by_method(trainer, batch)
    assert {name: getattr(batch, name) for name in before} == before and batch.extras == extras
    assert torch.equal(batch.ids, ids) and torch.equal(batch.rewards, rewards)
    for name, m in credit.methods.items():  # Clip-Cov's random pick included
        assert torch.equal(m.credit, again.methods[name].credit), name


def test_a_recorded_batch_gets_its_prompt_ids_back_and_the_same_credit(trainer, batch, credit):
    recorded = RolloutBatch.from_frame(batch.to_frame(step=3, tokenizer=trainer.policy.tokenizer))
    assert all(not ids for ids in recorded.prompt_ids)
    again = credit_by_method(trainer, recorded, methods=["erpo", "policy_split"])
    for name in ("erpo", "policy_split"):
        assert torch.allclose(again.methods[name].credit, credit.methods[name].credit, atol=1e-5), name


def test_bad_input_is_refused_with_what_is_allowed(trainer, batch):
    with pytest.raises(ValueError, match=r"methods names 'gpro', which is not allowed: a method, one of .*grpo"):
        credit_by_method(trainer, batch, methods=["grpo", "gpro"])
    with pytest.raises(ValueError, match=r"method_options names 'erpoo'"):
        credit_by_method(trainer, batch, method_options={"erpoo": {}})
    unscored = batch.select(range(len(batch)))
    unscored.rewards = None
    with pytest.raises(ValueError, match=r"batch.rewards=None is not allowed: credit_by_method needs a scored batch"):
        credit_by_method(trainer, unscored)


def test_a_method_whose_options_do_not_fit_the_batch_is_listed_with_the_reason(trainer, batch):
    credit = credit_by_method(trainer, batch, methods=["passk_training", "w_reinforce"],
                              method_options={"passk_training": {"k": G}})  # fmt: skip
    assert list(credit.methods) == ["grpo", "w_reinforce"]
    assert "method_options.k=6 is not allowed" in credit.unavailable["passk_training"]
    assert credit.summary().loc["passk_training", "notes"].startswith("not run on this batch: method_options.k=6")


def test_the_tidy_frame_has_a_row_per_method_and_generated_token(trainer, batch, credit):
    frame = credit.to_frame()
    tokens = int(batch.mask.sum())
    assert len(frame) == len(credit.methods) * tokens
    first = frame[(frame.method == "grpo") & (frame.row == 0)]
    assert "".join(first.token) == trainer.policy.tokenizer.decode(batch.ids[0, : int(batch.mask[0].sum())].tolist())
    erpo = frame[frame.method == "erpo"]
    assert erpo.gate.notna().all() and frame[frame.method == "grpo"].gate.isna().all()
    grpo = frame[frame.method == "grpo"].credit.to_numpy()
    for _, part in frame.groupby("method", sort=False):
        assert (part.credit - part.difference_from_grpo).to_numpy() == pytest.approx(grpo, abs=1e-6)


def test_the_widget_draws_one_column_per_method_and_outlines_the_differences(credit):
    from widgets.same_batch import SameBatchView, column_order, differing_cells

    view = SameBatchView(credit, row=2 * G)
    (heat,) = view.figure.data
    assert list(heat.x) == column_order(credit) and sorted(heat.x) == sorted(credit.methods)
    assert len(heat.z) == len(credit.batch) and len(heat.z[0]) == len(credit.methods)
    outlined = [s for s in view.figure.layout.shapes if s.type == "rect" and s.line.width == 2]
    assert len(outlined) == int(differing_cells(credit).sum()) > 0
    column = list(heat.x).index("w_reinforce")
    assert heat.z[0][column] == pytest.approx(0.1)  # all-correct group: lambda r
    strips = view.strips.value
    view.row_control.value = G  # an all-wrong response
    assert view.strips.value != strips and "erpo: gate" in view.strips.value
    view.heat_control.value = "difference from GRPO (mean per token)"
    assert view.figure.data[0].z[0][0] == 0
    with pytest.raises(ValueError, match=r"heat='x' is not allowed: one of sequence advantage"):
        SameBatchView(credit, heat="x")


def test_the_widget_escapes_the_batchs_text(credit):
    from widgets.same_batch import SameBatchView

    hostile = dataclasses.replace(credit, batch=credit.batch.select(range(len(credit.batch))))
    hostile.batch.problems = [Problem(p.id, "<script>alert(1)</script>" + p.prompt, p.answer, p.meta)
                              for p in credit.batch.problems]  # fmt: skip
    hostile.batch.answers = ["<img src=x onerror=alert(1)>"] * len(credit.batch)
    page = SameBatchView(hostile).strips.value
    assert "<script>" not in page and "<img" not in page and "&lt;script&gt;" in page
