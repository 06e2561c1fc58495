"""The HTML report: offline, plotly.js inlined once, model text escaped, comparisons in one file."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from workbench.metrics.registry import GROUPS, STAGE1_ACCURACY, STAGE2_ACCURACY
from workbench.studies.report import write_report

PLOTLY_MARKER = "plotly.js v"  # the banner at the top of the inlined library
ATTACK = "<script>alert(1)</script>"
FIGURE_TITLES = [
    GROUPS["reward"].title,
    GROUPS["entropy"].title,
    "KL to reference and clip fraction",
    GROUPS["diversity"].title,
    GROUPS["length"].title,
    "Entropy at pivots vs elsewhere",
    "pass@k, base vs final",
]


def _metrics(step: int) -> dict:
    return {
        "step": step, "reward_mean": 0.2 + 0.02 * step, "reward_std": 0.3, "frac_reward_zero_std": 1,
        "parsed_fraction": 0.9, "entropy_mean": 0.8 - 0.01 * step, "entropy_p50": 0.4, "entropy_p80": 0.9,
        "entropy_p95": 1.6, "response_length": 120 + step, "unique_answers": 3.0, "distinct_strategies": 2.5,
        "distinct_correct_strategies": 1.5, "pivots_per_response": 4.0, "entropy_at_pivots": 1.9,
        "entropy_elsewhere": 0.5, "loss": 0.01, "clip_fraction": 0.05, "kl": 0.001 * step, "grad_norm": 1.2,
        "skipped": 0, "nan_skips": 0, "learning_rate": 1e-5, "step_time": 3.2, "method_extra": [1, 2],
    }


def _rollouts() -> pd.DataFrame:
    rows = []
    for group in range(3):
        for k in range(4):
            tokens = ["The", " answer", " is", " <b>", " 4"]
            rows.append({
                "step": 29, "problem_id": f"p{group}", "group": group, "mode": "train", "stage": "rl",
                "prompt": f"What is 2+2? (problem {group}) <i>", "completion": ATTACK if k == 0 else "The answer is 4",
                "reward": float(k % 2), "answer": '4" onmouseover="x', "strategy": "<img src=x>", "parsed": True,
                "length": 5, "advantage": 0.5, "token_ids": np.arange(5), "logprob": np.full(5, -0.5),
                "entropy": np.array([0.1, 0.5, 1.0, 2.5, math.nan]), "token_advantage": np.full(5, 0.5),
                "gate": np.ones(5), "pivot": np.array([0, 0, 1, 0, 0], dtype=float), "tokens": tokens,
            })
    return pd.DataFrame(rows)


def _make_run(path, lr=1e-5):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"model: tiny\ntask: arithmetic\nmethod: grpo\nseed: 0\nlearning_rate: {lr}\n")
    lines = [json.dumps(_metrics(s)) for s in range(30)]
    lines[7] = lines[7].replace('"kl": 0.007', '"kl": null')
    lines.append('{"step": 30, "reward_mean": 0.')  # a crash mid-write
    (path / "metrics.jsonl").write_text("\n".join(lines))
    (path / "rollouts").mkdir()
    _rollouts().to_parquet(path / "rollouts" / "step-29.parquet", index=False)
    scores = {"test": {"pass@1": 0.3, "pass@4": 0.5, "pass@16": 0.7, "accuracy": 0.3, "entropy_mean": 0.6}}
    (path / "eval.json").write_text(json.dumps({"base": scores, "final": scores}))
    return path


@pytest.fixture
def report(tmp_path):
    return write_report(_make_run(tmp_path / "run-a")).read_text()


def test_single_run_writes_report_in_run_dir(tmp_path):
    run = _make_run(tmp_path / "run-a")
    out = write_report(run)
    assert out == run / "report.html" and out.exists()


def test_report_is_offline_with_plotly_inlined_once(report):
    assert "<script src=" not in report
    assert "cdn.plot.ly" not in report
    assert report.count(PLOTLY_MARKER) == 1


def test_model_text_is_escaped(report):
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    assert "<script>alert(1)" not in report
    assert "&lt;b&gt;" in report and "> <b>" not in report
    assert "<img src=x>" not in report and '4" onmouseover' not in report


def test_figure_titles_and_tables_present(report):
    for title in FIGURE_TITLES:
        assert title in report
    assert "Sample rollouts" in report and "arithmetic" in report and "pass@16" in report


def test_a_method_panel_appears_where_a_run_records_its_group(tmp_path, report):
    eepo = GROUPS["eepo"].title
    assert eepo not in report  # a GRPO run records no EEPO metric
    run = _make_run(tmp_path / "run-eepo")
    rows = [{**_metrics(s), STAGE1_ACCURACY: 0.25, STAGE2_ACCURACY: 0.5} for s in range(5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    text = write_report(run).read_text()
    assert eepo in text and STAGE1_ACCURACY.label in text and STAGE2_ACCURACY.label in text
    assert GROUPS["erpo"].title not in text and GROUPS["policy_split"].title not in text


def test_comparison_writes_one_file_with_both_runs(tmp_path):
    a, b = _make_run(tmp_path / "run-a"), _make_run(tmp_path / "run-b", lr=3e-5)
    out = write_report([a, b])
    assert out == tmp_path / "comparison.html"
    text = out.read_text()
    assert "run-a" in text and "run-b" in text
    assert text.count(PLOTLY_MARKER) == 1
    assert 'class="diff"' in text  # the differing learning rate is highlighted


def test_missing_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")
