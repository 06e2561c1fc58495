"""Security (issue 8): model text is untrusted. Verifiers and parsers never raise or run it,
every widget and the report render it as text, weights load only from safetensors, and make lab
binds localhost with a token. Rows of docs/reliability.md."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_common import IMG, REPO, SCRIPT, SCRIPT_ESCAPED, tiny_config

from workbench import Policy, PolicyLoadError, Trainer
from workbench.run.store import CheckpointError
from workbench.tasks import Coins, Countdown, DatasetTask, Problem, RewardFunctionError, RewardFunctionTask, Score
from workbench.tasks.dataset import parse_exact_answer, parse_number_answer, reference_answer

# =============================================================================================
# Untrusted text: verifiers and parsers
# =============================================================================================
FUZZ = settings(max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ANSWER_ALPHABET = "0123456789,.+-eE#: \n\\{}$%Answerboxd()*/="
MARKED = st.from_regex(r"(?:.{0,20}(?:####|[Aa]nswer\s*:|\\boxed\{))*"  # answer markers, repeated
                       r"[-+]?[0-9,]{0,14}(?:\.[0-9]{0,8})?(?:[eE][-+]?[0-9]{1,5})?.{0,10}", fullmatch=True)
TEXTS = st.one_of(st.text(), st.text(alphabet=ANSWER_ALPHABET),
                  st.text(alphabet=ANSWER_ALPHABET, min_size=100, max_size=600), MARKED,
                  st.text(alphabet=st.characters(categories=["Nd", "Pd", "Sm", "Zs", "Cc"])))


@FUZZ
@given(TEXTS)
def test_number_parser_never_raises_and_returns_a_finite_decimal(text):
    value = parse_number_answer(text)
    assert value is None or (isinstance(value, Decimal) and value.is_finite())


@FUZZ
@given(TEXTS)
def test_exact_parser_never_raises_and_returns_text_taken_from_the_completion(text):
    value = parse_exact_answer(text)
    assert value is None or (isinstance(value, str) and value == value.strip() and value)
    if value is not None:
        assert value in text.replace(",", "") or value in text


@FUZZ
@given(st.one_of(TEXTS, st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=3)))
def test_reference_answer_never_raises_on_any_data_value(raw):
    assert isinstance(reference_answer(raw), str)


WRAPPED = RewardFunctionTask(Countdown(), [lambda prompts, completions, **_: [float(len(c) % 3) for c in completions],
                                           lambda prompts, completions, **_: [1 / (len(c) % 2) for c in completions]],
                             reward_errors="zero")
WRAPPED_PROBLEMS = Countdown().prompts("test", 4, seed=0)


@settings(FUZZ, max_examples=500)
@given(st.lists(TEXTS, min_size=4, max_size=4))
def test_the_reward_function_wrapper_never_raises_in_zero_mode(completions):
    scores = WRAPPED.score_batch(WRAPPED_PROBLEMS, completions)
    assert len(scores) == 4 and all(isinstance(s, Score) and math.isfinite(s.reward) for s in scores)


def _verifiers():
    numeric = DatasetTask([{"prompt": f"q{i}", "answer": a} for i, a in enumerate(["42", "-3.5", "1e3"])],
                          test_fraction=0)
    exact = DatasetTask([{"prompt": f"q{i}", "answer": a} for i, a in enumerate(["Paris", "{{7*7}}"])], match="exact",
                        test_fraction=0)
    countdown, coins = Countdown(), Coins()
    return [(countdown, countdown.prompts("test", 3)), (coins, coins.prompts("test", 3)),
            (numeric, numeric.rows("train")), (exact, exact.rows("train")),
            (RewardFunctionTask(countdown, lambda prompts, completions, **_: [0.0] * len(completions)),
             countdown.prompts("test", 2))]


ADVERSARIAL = ["1," * 20000, "#### " * 5000, "\\boxed{" * 5000, "answer:" * 5000, "1+" * 20000, "9" * 100000,
               "-" * 50000 + "1", "1.1." * 20000, "=" * 50000, "1+1=2," * 10000, "1*2=" * 20000, "\x00" * 10000]


def test_verifiers_stay_fast_on_adversarial_text():
    """No backtracking blow-up: 100 kB of repetitive text is scored in well under a second each."""
    for task, problems in _verifiers():
        for text in ADVERSARIAL:
            started = time.perf_counter()
            score = task.score(problems[0], text)
            assert time.perf_counter() - started < 2.0, (task, text[:20])
            assert isinstance(score, Score) and 0.0 <= score.reward <= 1.0


def test_model_output_is_never_evaluated_or_run(tmp_path):
    marker = tmp_path / "ran"
    code = [f"__import__('pathlib').Path({str(marker)!r}).touch()", f"$(touch {marker})", f"`touch {marker}`",
            f"; touch {marker}", f"#### __import__('os').system('touch {marker}')",
            f"Answer: eval(\"open({str(marker)!r}, 'w')\")"]
    templates = ["{{7*7}}", "${7*7}", "#### {{7*7}}", "Answer: <%= 7*7 %>"]
    for task, problems in _verifiers():
        for problem in problems:
            for text in code:
                assert isinstance(task.score(problem, text), Score)
            for text in templates:
                assert task.score(problem, text).answer != "49"  # read as text, never rendered
    assert not marker.exists()
    exact_task, problems = _verifiers()[3]
    assert exact_task.score(problems[1], "{{7*7}}").reward == 1.0  # compared as text


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                f"{getattr(func.value, 'id', '?')}.{func.attr}" if isinstance(func, ast.Attribute) else "?")
            yield name, {k.arg: k.value for k in node.keywords}


def test_the_engine_has_no_eval_shell_pickle_or_unsafe_load():
    """Static: no eval/exec/compile, shell, pickle or unsafe YAML anywhere in workbench/ or widgets/;
    torch.load only with weights_only=True; trust_remote_code never hard-wired on."""
    forbidden = {"eval", "exec", "compile", "os.system", "os.popen", "pickle.load", "pickle.loads", "yaml.load",
                 "yaml.unsafe_load", "yaml.full_load", "marshal.loads"}
    for path in [*(REPO / "workbench").rglob("*.py"), *(REPO / "widgets").rglob("*.py")]:
        for name, keywords in _calls(path):
            where = f"{path.relative_to(REPO)}: {name}"
            assert name not in forbidden, where
            if name == "torch.load":
                assert getattr(keywords.get("weights_only"), "value", None) is True, where
            if "shell" in keywords:
                assert getattr(keywords["shell"], "value", None) is False, where
            if "trust_remote_code" in keywords:
                assert getattr(keywords["trust_remote_code"], "value", None) is not True, where
        assert "jinja2" not in path.read_text(), path


# =============================================================================================
# Untrusted text: the HTML report and every widget
# =============================================================================================
class HostileTask:
    """Countdown problems whose prompts, answers and strategy labels carry HTML payloads."""

    name = "hostile"

    def __init__(self):
        self.base = Countdown()

    def prompts(self, split, n, seed=0):
        return [Problem(p.id, f"{SCRIPT} {p.prompt}", p.answer, p.meta) for p in self.base.prompts(split, n, seed)]

    def score(self, problem, completion):
        return Score(float(len(completion) % 2), IMG, f"{SCRIPT}{len(completion) % 3}", parsed=True)


class HostileTokenizer:
    def decode(self, ids, **_):
        return SCRIPT


def hostile_trainer(method: str, out_dir=None, **kwargs) -> Trainer:
    trainer = Trainer(tiny_config(method), task=HostileTask(), out_dir=out_dir, **kwargs)
    decode = trainer.policy.decode
    trainer.policy.decode = lambda ids, mask: [f"{SCRIPT}{IMG}{text}" for text in decode(ids, mask)]
    return trainer


def rendered_strings(widget) -> list[str]:
    """Every string a browser renders as HTML in a widget tree: HTML widgets' values, descriptions
    that allow HTML, and all text of plotly figures (plotly draws a subset of HTML). Dropdown
    options and Labels are drawn as plain text by ipywidgets and are not included."""
    import ipywidgets as W
    import plotly.graph_objects as go

    out, stack = [], [widget]
    while stack:
        item = stack.pop()
        if isinstance(item, go.FigureWidget):
            out += _strings(item.to_plotly_json())
            continue
        if isinstance(item, (W.HTML, W.HTMLMath)):
            out.append(item.value)
        if getattr(item, "description_allow_html", False):
            out.append(item.description)
        stack += list(getattr(item, "children", ()))
    return out


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)) or (hasattr(value, "dtype") and value.dtype == object):
        return [s for v in value for s in _strings(v)]
    return []


def assert_escaped(strings: list[str], shown: bool = True) -> None:
    raw = [s for s in strings if "<script" in s.lower() or "<img" in s.lower()]
    assert not raw, raw[0][:300]
    if shown:
        assert any(SCRIPT_ESCAPED in s for s in strings)


def test_model_text_renders_as_text_in_the_html_report(tmp_path):
    from workbench.studies.report import write_report

    run = tmp_path / IMG  # a run directory name is shown too (no slash in a file name)
    trainer = hostile_trainer("grpo", out_dir=run)
    trainer.step()
    page = write_report(run).read_text()
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert SCRIPT_ESCAPED in page and "&lt;img src=x onerror=alert(1)&gt;" in page


@pytest.fixture(scope="module")
def hostile_grpo():
    trainer = hostile_trainer("grpo")
    trainer.step()
    return trainer


def test_model_text_renders_as_text_in_token_view_and_diversity_panel(hostile_grpo):
    from widgets import DiversityPanel, TokenView

    view = TokenView(hostile_grpo.last_batch, tokenizer=HostileTokenizer())
    assert_escaped(rendered_strings(view))
    panel = DiversityPanel(hostile_grpo, redraw_interval=0)
    try:
        panel.poll()
        strings = rendered_strings(panel)
        assert_escaped(strings)
        assert any("&lt;img src=x onerror=alert(1)&gt;" in s for s in strings)  # the answer key
    finally:
        panel.close()


def test_model_text_renders_as_text_in_the_dashboard_status_and_run_comparison(hostile_grpo, tmp_path):
    from widgets import RunComparison, TrainingDashboard

    def refuses(prompts, completions, **_):
        raise ValueError(f"cannot score {completions[0]}")

    trainer = hostile_trainer("grpo", reward_funcs=refuses)
    dashboard = TrainingDashboard(trainer, min_interval=0)
    try:
        with pytest.raises(RewardFunctionError):
            dashboard.step()
        assert SCRIPT_ESCAPED in dashboard.status.value  # the error names the completion, escaped
        assert_escaped(rendered_strings(dashboard))
    finally:
        dashboard.close()
    run = tmp_path / IMG
    directory_run = Trainer(tiny_config(), out_dir=run)
    directory_run.step()
    comparison = RunComparison({SCRIPT: hostile_grpo, IMG: hostile_grpo})
    by_directory = RunComparison([run])
    assert_escaped(rendered_strings(comparison))
    assert_escaped(rendered_strings(by_directory), shown=False)
    assert any("&lt;img src=x onerror=alert(1)&gt;" in s for s in rendered_strings(by_directory))


def test_model_text_renders_as_text_in_the_eepo_stepper_and_policy_split_view():
    from widgets import EEPOStepper, PolicySplitView

    stepper = EEPOStepper(hostile_trainer("eepo"), tokenizer=HostileTokenizer())
    try:
        while stepper.next_phase().name != "sample_stage2":
            pass
        assert_escaped(rendered_strings(stepper))
    finally:
        stepper.close()
    trainer = hostile_trainer("policy_split")
    view = PolicySplitView(trainer, redraw_interval=0)
    try:
        trainer.step()
        view.poll()
        assert_escaped(rendered_strings(view))
    finally:
        view.close()


# =============================================================================================
# Weights only from safetensors; pickles never run; no remote code unless asked
# =============================================================================================
class RunsCodeWhenUnpickled:
    """A pickle that creates a file when it is loaded: what a malicious .bin or .pt can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tiny_files(directory: Path, weights: bool) -> Path:
    from workbench.models.tiny import CHECKPOINT_DIR

    directory.mkdir()
    for path in CHECKPOINT_DIR.iterdir():
        if weights or path.suffix != ".safetensors":
            shutil.copy(path, directory / path.name)
    return directory


def test_a_model_directory_with_only_pytorch_model_bin_is_refused_unread(tmp_path):
    model = _tiny_files(tmp_path / "model", weights=False)
    marker = tmp_path / "unpickled"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCodeWhenUnpickled(marker)))
    with pytest.raises(PolicyLoadError, match=r"no \.safetensors weights: it holds pytorch_model\.bin") as info:
        Policy.from_pretrained(str(model))
    assert "unpickling can run code" in str(info.value) and not marker.exists()
    with pytest.raises(PolicyLoadError):
        Trainer(tiny_config(model=str(model)), out_dir=tmp_path / "run")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_pickled_optimizer_file_is_refused_by_weights_only_load(run_copy, tmp_path):
    marker = tmp_path / "unpickled"
    step = run_copy / "checkpoints" / "step-2"
    torch.save({"optimizer": RunsCodeWhenUnpickled(marker), "torch_rng": torch.get_rng_state()}, step / "optimizer.pt")
    state = json.loads((step / "state.json").read_text())  # a consistent checkpoint: the digest matches
    state["sha256"]["optimizer.pt"] = hashlib.sha256((step / "optimizer.pt").read_bytes()).hexdigest()
    (step / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="optimizer.pt is unreadable"):
        Trainer.resume(run_copy)
    assert not marker.exists()
    torch.load(step / "optimizer.pt", weights_only=False)  # the file really is an attack ...
    assert marker.exists()  # ... which weights_only=True refused


def test_remote_code_is_not_run_unless_asked_for(tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as remote

    monkeypatch.setattr(remote, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not ~/.cache
    model = _tiny_files(tmp_path / "model", weights=True)
    marker = tmp_path / "remote-code-ran"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="evil_qwen", auto_map={"AutoConfig": "evil.EvilConfig",
                                                     "AutoModelForCausalLM": "evil.EvilModel"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2Config, Qwen2ForCausalLM\n"
        "class EvilConfig(Qwen2Config):\n    model_type = 'evil_qwen'\n"
        "class EvilModel(Qwen2ForCausalLM):\n    config_class = EvilConfig\n")
    with pytest.raises(PolicyLoadError, match="trust_remote_code=True"):
        Policy.from_pretrained(str(model))
    with pytest.raises(PolicyLoadError):
        Trainer(tiny_config(model=str(model)))
    assert not marker.exists()
    from transformers import AutoConfig

    AutoConfig.from_pretrained(str(model), trust_remote_code=True)  # the directory really carries code ...
    assert marker.exists()  # ... which runs only when asked for


# =============================================================================================
# make lab: 127.0.0.1 and token authentication
# =============================================================================================
def _lab_command() -> str:
    dry_run = subprocess.run(["make", "-n", "lab"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = [line for line in dry_run.splitlines() if "jupyter lab" in line]
    assert len(lines) == 1, dry_run
    return lines[0]


def test_make_lab_binds_localhost_and_keeps_token_authentication(tmp_path):
    command = _lab_command()
    assert "--ServerApp.ip=127.0.0.1" in command
    disabling = [r"0\.0\.0\.0", r"--ip=(?!127\.0\.0\.1)", r"token\s*=\s*(''|\"\"|\s|$)", r"NotebookApp\.token",
                 r"IdentityProvider\.token", r"ServerApp\.token", r"password\s*=", r"disable_check_xsrf",
                 r"allow_remote_access", r"allow_origin", r"JUPYTER_TOKEN"]
    for pattern in disabling:
        assert not re.search(pattern, command), pattern
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not re.search(r"(^|/)(jupyter_\w*config\.(py|json)|\.jupyter/)", tracked, re.M)  # no repo-local override
    # Jupyter's own view of that command line (user config left out): the address and no fixed token
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path)}
    argv = command.split()
    shown = subprocess.run([*argv, "--show-config"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120).stdout
    assert ".ip = '127.0.0.1'" in shown
    assert not re.search(r"\.(token|password|disable_check_xsrf|allow_remote_access)\s*=", shown), shown
