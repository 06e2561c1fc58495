"""The `workbench` command end to end on the embedded model."""

import json

import pytest

from workbench.cli import main


def test_train_report_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "quick", "--steps", "2", "--out", str(out), "--set", "learning_rate=1e-3"]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1]
    assert (out / "checkpoints" / "step-2" / "adapter.safetensors").exists()
    assert "learning_rate: 0.001" in (out / "config.yaml").read_text()
    assert main(["report", str(out)]) == 0
    report = capsys.readouterr().out.strip().splitlines()[-1]
    assert report.endswith("report.html") and "plotly" in open(report).read()
    assert main(["eval", str(out), "--n-samples", "2", "--num-prompts", "4", "--k", "1,2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{"):])
    assert result["samples"] == 8 and 0 <= result["pass@1"] <= result["pass@2"] <= 1


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--preset", "quick", "--steps", "1", "--out", str(out)])
    capsys.readouterr()
    assert main(["train", "--preset", "quick", "--steps", "1", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("workbench: ") and error.count("\n") == 1
    assert "holds a run (its last checkpoint is at step 1)" in error and "--resume" in error


def test_bad_override_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "r"), "--set", "temperature=-1"]) == 2
    assert "temperature=-1" in capsys.readouterr().err


def test_run_directory_is_readable_with_pandas(tmp_path):
    from workbench.run.store import RunStore

    out = tmp_path / "run"
    main(["train", "--preset", "quick", "--steps", "2", "--out", str(out)])
    store = RunStore(out)
    assert store.rollout_steps() == [0, 1] and store.checkpoint_steps() == [0, 2]  # where it began, where it ended
    frame = store.read_rollouts()
    assert len(frame) == 16 and set(frame["step"]) == {1}
    assert all(len(t) == n for t, n in zip(frame["entropy"], frame["length"]))


def test_compare_then_report_a_study(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["compare", "--methods", "grpo,erpo", "--seeds", "1", "--steps", "1", "--out", str(out),
            "--eval-prompts", "2", "--eval-samples", "2",
            "--set", "num_prompts=2", "--set", "num_generations=4", "--set", "max_completion_length=8"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "erpo" in printed and "pass@1" in printed and f"workbench report {out}" in printed
    assert (out / "erpo-seed0" / "eval.json").exists() and (out / "base" / "eval.json").exists()
    assert main(["report", str(out)]) == 0
    page = capsys.readouterr().out.strip().splitlines()[-1]
    assert page.endswith("report.html") and "pass@k on test" in open(page).read()


def test_options_lists_every_declaration_and_set_takes_one_method_option(tmp_path, capsys):
    from workbench import methods
    from workbench.config import OPTIONS

    assert main(["options"]) == 0
    listed = capsys.readouterr().out
    assert all(f"\n{name} = " in "\n" + listed for name in OPTIONS)
    assert main(["options", "--method", "eepo"]) == 0
    listed = capsys.readouterr().out
    assert all(f"method_options.{key} = " in listed for key in methods.get("eepo").OPTIONS)
    assert "allowed: one of entropy, always, never" in listed
    config = tmp_path / "c.yaml"
    config.write_text("method: eepo\nmethod_options: {alpha: 0.5}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--steps", "1", "--out", str(out), "--set", "num_prompts=2",
                 "--set", "num_generations=2", "--set", "method_options.gate=always"]) == 0
    written = (out / "config.yaml").read_text()
    assert "gate: always" in written and "alpha: 0.5" in written  # merged with the file's options
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "bad"), "--method", "eepo",
                 "--set", "method_options.gate=sometimes"]) == 2
    assert "method_options.gate='sometimes' is not allowed: one of entropy, always, never" in capsys.readouterr().err


TINY = ["--steps", "2", "--set", "num_prompts=2", "--set", "num_generations=4", "--set", "max_completion_length=8"]
# a batch used for 4 updates at a high learning rate: the ratios leave 1, so every coefficient acts
MOVING = ["--steps", "2", "--set", "num_prompts=2", "--set", "num_generations=4", "--set", "max_completion_length=20",
          "--set", "seed=4", "--set", "num_iterations=4", "--set", "learning_rate=0.05"]


def _trained(out) -> tuple[str, list[dict]]:
    """A run directory's config.yaml and its metrics without the timings."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return (out / "config.yaml").read_text(), [{k: v for k, v in r.items() if k != "step_time" and not k.endswith("_s")}
                                               for r in rows]


@pytest.mark.parametrize("method,field,own,plain", [("entropy_bonus", "entropy_coef", "0.01", "0.0"),
                                                    ("top_entropy", "top_entropy_quantile", "0.2", "1.0"),
                                                    ("clip_higher", "epsilon_high", "0.28", "0.2")])
def test_config_yaml_records_the_setting_that_trains_and_an_explicit_one_is_kept(tmp_path, method, field, own, plain):
    assert main(["train", "--method", "grpo", "--out", str(tmp_path / "grpo"), *MOVING]) == 0
    assert main(["train", "--method", method, "--out", str(tmp_path / "own"), *MOVING]) == 0
    plain_run = ["train", "--method", method, "--out", str(tmp_path / "plain"), *MOVING, "--set", f"{field}={plain}"]
    assert main(plain_run) == 0
    (_, grpo), (own_yaml, on), (plain_yaml, off) = (_trained(tmp_path / n) for n in ("grpo", "own", "plain"))
    assert f"\n{field}: {own}\n" in own_yaml and f"\n{field}: {plain}\n" in plain_yaml
    assert on != grpo and off == grpo  # the plain setting trains as GRPO does, to the last bit


def test_an_old_run_resumes_with_what_its_config_yaml_says(tmp_path):
    """Before CONFIG_DEFAULTS, entropy_bonus trained with 0.01 and wrote entropy_coef: 0.0; the
    file is what counts now, and the live field can be set on resume to continue as it trained."""
    from workbench.engine.trainer import Trainer
    from workbench.run.store import RunStore

    out = tmp_path / "old"
    assert main(["train", "--method", "entropy_bonus", "--out", str(out), *TINY]) == 0
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("entropy_coef: 0.01", "entropy_coef: 0.0"))
    resumed = Trainer.resume(out, read_only=True)  # the old file loads, and trains without a bonus
    assert resumed.method.loss_settings()["entropy_coef"] == 0.0
    assert main(["train", "--resume", "--out", str(out), "--steps", "3", "--set", "entropy_coef=0.01"]) == 0
    assert RunStore(out).config().entropy_coef == 0.01 and "entropy_coef: 0.01" in config.read_text()
