"""Issue 33 item 3: report_to. Every step goes to TensorBoard and W&B (offline) as well as to the run
directory, whichever engine trains: read back here with TensorBoard's own reader and from the W&B run's
transaction log, and compared with metrics.jsonl (the source of truth)."""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from workbench import RunConfig, Trainer
from workbench.cli import main
from workbench.config import ConfigError
from workbench.run import trackers
from workbench.run.store import RunStore

pytest.importorskip("tensorboard", reason="report_to needs the [trackers] extra")
pytest.importorskip("wandb", reason="report_to needs the [trackers] extra")

SMALL = dict(num_prompts=2, num_generations=4, max_completion_length=8, threads=1, seed=3)
SMALL_SET = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """W&B never reaches the network here, and writes nothing outside the run directories: not even
    into the current directory (./wandb, where W&B goes by default)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / "wandb").exists()


# --- reading the trackers back ------------------------------------------------------------------
def tensorboard_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


def wandb_records(run_file: Path):
    """The records of a W&B run's transaction log (run-ID.wandb): a LevelDB-style log of 32 KiB blocks,
    each record a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a
    protobuf ``Record``, after the file's 7-byte header (":W&B", magic, version)."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, parts = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        if kind == 0:  # zeroed padding up to the block's end
            position += left
            continue
        parts += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def wandb_history(run_dir: Path) -> tuple[Path, dict[int, dict]]:
    """The one W&B offline run under ``run_dir``/wandb: its folder, and its history rows by step."""
    (folder,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    rows = {}
    for record in wandb_records(next(folder.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            row: dict = {}
            for item in record.history.item:  # a histogram's or a table's fields come one by one: nested keys
                *path, last = [item.key] if item.key else list(item.nested_key)
                place = row
                for key in path:
                    place = place.setdefault(key, {})
                place[last] = json.loads(item.value_json)
            rows[row["_step"]] = row
    return folder, rows


def numeric(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def same(a: float, b: float, rel: float = 0.0) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=rel)


# --- the tests ---------------------------------------------------------------------------------
def test_report_to_takes_trl_names_in_every_form_and_refuses_others_naming_them(tmp_path):
    assert RunConfig().report_to == []
    assert RunConfig(report_to="tensorboard,wandb").report_to == ["tensorboard", "wandb"]  # --set's form
    assert RunConfig(report_to=["wandb"]).report_to == ["wandb"]
    assert RunConfig(report_to="all").report_to == list(trackers.TRACKERS)
    assert RunConfig(report_to="none").report_to == []
    with pytest.raises(ConfigError, match=r"report_to=\['wandb', 'mlflow'\] is not allowed: .*'mlflow' is not a"):
        RunConfig(report_to=["wandb", "mlflow"])
    RunConfig(report_to="tensorboard").to_yaml(tmp_path / "config.yaml")
    assert RunConfig.from_yaml(tmp_path / "config.yaml").report_to == ["tensorboard"]


def test_cli_train_reports_every_metric_entropy_histogram_and_responses_to_tensorboard_and_wandb(tmp_path):
    run = tmp_path / "run"
    code = main(["train", "--steps", "3", "--out", str(run), "--set", "report_to=tensorboard,wandb", *SMALL_SET])
    assert code == 0
    store = RunStore(run)
    assert store.config().report_to == ["tensorboard", "wandb"]
    rows = {r["step"]: numeric(r) for r in store.read_metrics()}
    assert sorted(rows) == [0, 1, 2]
    tokens = {step: np.concatenate(list(store.read_rollouts(step)["entropy"])) for step in rows}

    events = tensorboard_events(run / "tensorboard")
    assert set(rows[0]) <= set(events.Tags()["scalars"])
    for key in rows[0]:
        logged = {e.step: e.value for e in events.Scalars(key)}
        assert sorted(logged) == [0, 1, 2], key
        assert all(same(logged[s], rows[s][key], rel=1e-6) for s in rows), key  # float32 in the event file
    histograms = {e.step: e.histogram_value for e in events.Histograms("entropy")}
    assert sorted(histograms) == [0, 1, 2]
    for step, histogram in histograms.items():
        assert histogram.num == tokens[step].size
        assert histogram.sum == pytest.approx(tokens[step].sum(), rel=1e-5)
        assert histogram.min == pytest.approx(tokens[step].min()) and histogram.max == pytest.approx(tokens[step].max())

    folder, history = wandb_history(run)
    assert sorted(history) == [0, 1, 2]
    for step, row in rows.items():
        assert all(same(history[step][k], v) for k, v in row.items()), step  # JSON both: exact
        assert history[step]["entropy"]["_type"] == "histogram"
        assert sum(history[step]["entropy"]["values"]) == tokens[step].size
    table = history[0]["responses"]  # the first step has the table (then every TABLE_EVERY steps)
    assert table["_type"] == "table-file" and "responses" not in history[1]
    written = json.loads((folder / "files" / table["path"]).read_text())
    first = store.read_rollouts(0).head(trackers.TABLE_ROWS)
    assert written["columns"][:4] == ["prompt", "completion", "reward", "length"]
    assert [r[1] for r in written["data"]] == list(first["completion"])


def test_a_failing_tracker_is_one_warning_and_the_run_and_the_other_tracker_carry_on(tmp_path, monkeypatch):
    class Broken(trackers.TensorBoardTracker):
        def log(self, *args):
            raise OSError(28, "No space left on device")

    class Missing:
        def __init__(self, *args):
            raise ImportError("No module named 'wandb'")

    monkeypatch.setitem(trackers.TRACKERS, "tensorboard", Broken)
    monkeypatch.setitem(trackers.TRACKERS, "wandb", Missing)
    trainer = Trainer(RunConfig(**SMALL, report_to=["tensorboard", "wandb"]), out_dir=tmp_path / "run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run(3, progress=False)
        trainer.close()
    said = [str(w.message) for w in caught if "report_to=" in str(w.message)]
    assert len(said) == 2, said  # once each, not once a step
    assert any(s.startswith("report_to=tensorboard: it failed to report step (OSError") for s in said)
    assert any(s.startswith("report_to=wandb: it is not installed") and "[trackers]" in s for s in said)
    assert [r["step"] for r in RunStore(tmp_path / "run").read_metrics()] == [0, 1, 2]


def test_a_resumed_run_reports_the_steps_it_runs_again_once_and_report_to_can_change_on_resume(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(RunConfig(**SMALL, checkpoint_every=2, report_to="tensorboard"), out_dir=run)
    trainer.run(3, progress=False)
    trainer.close()
    assert not (run / "wandb").exists()
    shutil.rmtree(run / "checkpoints" / "step-3")  # as if it died before that save: step 2 runs again
    resumed = Trainer.resume(run, report_to="tensorboard,wandb")  # a live field: recorded in config.yaml
    resumed.run(2, progress=False)
    resumed.close()
    assert RunStore(run).config().report_to == ["tensorboard", "wandb"]
    rows = {r["step"]: numeric(r) for r in RunStore(run).read_metrics()}
    assert sorted(rows) == [0, 1, 2, 3]
    losses = [(e.step, e.value) for e in tensorboard_events(run / "tensorboard").Scalars("loss")]
    assert [step for step, _ in losses] == [0, 1, 2, 3]  # the first session's step 2 is purged
    assert all(same(value, rows[step]["loss"], rel=1e-6) for step, value in losses)
    _, history = wandb_history(run)  # W&B from the resume on: a new W&B run
    assert sorted(history) == [2, 3] and all(same(history[s]["loss"], rows[s]["loss"]) for s in (2, 3))


def test_the_trl_backend_passes_report_to_through_to_trl_in_its_own_directory(tmp_path, monkeypatch):
    pytest.importorskip("trl", reason="the TRL backend needs the [scale] extra")
    from workbench.integrations.trl import WorkbenchGRPOTrainer
    from workbench.integrations.trl_config import grpo_config

    monkeypatch.setenv("WANDB_DIR", "")
    monkeypatch.delenv("WANDB_DIR")  # restored (unset) after the test: grpo_config sets it
    settings = {"epsilon": 0.2, "epsilon_high": None, "beta": 0.0}
    assert grpo_config(RunConfig(**SMALL), settings, tmp_path / "trl", 2, 1).report_to in ("none", [], ["none"])
    with pytest.raises(ConfigError, match="trl.report_to"):  # the run's field, not a --trl one
        grpo_config(RunConfig(**SMALL), settings, tmp_path / "trl", 2, 1, report_to="wandb")

    run = tmp_path / "run"
    WorkbenchGRPOTrainer(RunConfig(**SMALL, report_to="tensorboard,wandb"), run, steps=2).train()
    rows = {r["step"]: numeric(r) for r in RunStore(run).read_metrics()}
    assert sorted(rows) == [0, 1]
    events = tensorboard_events(run / "tensorboard")  # the workbench's: every column of metrics.jsonl
    for key in rows[0]:
        assert [(e.step, same(e.value, rows[e.step][key], 1e-6)) for e in events.Scalars(key)] == [(0, True), (1, True)]
    assert [e.step for e in events.Histograms("entropy")] == [0, 1]
    assert sorted(wandb_history(run)[1]) == [0, 1]
    # TRL's own trackers, with TRL's own metrics, in TRL's output directory: apart from the workbench's
    (trl_events,) = {p.parent for p in (run / "trl").rglob("events.out.tfevents.*")}
    assert any(tag.startswith("train/") for tag in tensorboard_events(trl_events).Tags()["scalars"])
    assert os.environ["WANDB_DIR"] == str(run / "trl") and len(list((run / "trl" / "wandb").glob("offline-run-*"))) == 1
