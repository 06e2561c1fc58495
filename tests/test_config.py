"""RunConfig: presets, YAML round-trip, and errors that name the field, the value and what is allowed."""

import pytest

from workbench import PRESETS, ConfigError, RunConfig


def test_defaults_follow_methods_md():
    cfg = RunConfig()
    assert (cfg.epsilon, cfg.epsilon_high, cfg.beta, cfg.loss_type, cfg.scale_rewards) == (0.2, None, 0.0, "dapo", "group")


def test_presets_and_overrides():
    for name in PRESETS:
        RunConfig.preset(name)
    cfg = RunConfig.preset("quick", learning_rate=1e-3)
    assert cfg.num_generations == 4 and cfg.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="preset='nope'.*quick"):
        RunConfig.preset("nope")


def test_yaml_roundtrip(tmp_path):
    cfg = RunConfig(method="clip_higher", num_generations=6, target_modules=["q_proj", "v_proj"])
    cfg.to_yaml(tmp_path / "c.yaml")
    assert RunConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_unknown_yaml_key_lists_the_valid_ones(tmp_path):
    (tmp_path / "c.yaml").write_text("num_generation: 8\n")
    with pytest.raises(ConfigError, match="num_generation.*valid keys:.*num_generations"):
        RunConfig.from_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("num_generations", 1, "integer >= 2"),
        ("num_generations", 2.5, "integer"),
        ("temperature", 0.0, r"\[0.01, 100.0\]"),
        ("top_p", 1.5, r"\(0.0, 1.0\]"),
        ("epsilon", "big", "number"),
        ("loss_type", "mean", "dapo, grpo, dr_grpo"),
        ("scale_rewards", "std", "group, batch, none"),
        ("method", "ppo", "grpo"),
        ("task", "chess", "countdown"),
        ("learning_rate", float("nan"), "number"),
        ("track_kl", "yes", "true or false"),
        ("top_entropy_quantile", 0.0, r"\(0.0, 1.0\]"),
    ],
)
def test_bad_values_name_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ConfigError, match=rf"{field}=.*{allowed}") as info:
        RunConfig(**{field: value})
    assert info.value.field == field


def test_unknown_method_option_is_rejected():
    with pytest.raises(ConfigError, match="method_options.alpha.*grpo"):
        RunConfig(method_options={"alpha": 0.3})


def test_the_options_tables_in_the_docs_are_generated_from_the_declarations():
    from pathlib import Path

    from workbench.config import options_markdown

    text = (Path(__file__).parent.parent / "docs" / "methods.md").read_text()
    begin, end = "<!-- options:begin -->\n", "<!-- options:end -->"
    assert text[text.index(begin) + len(begin):text.index(end)] == options_markdown(), (
        "docs/methods.md is out of date: paste the output of `workbench options --markdown` between its markers")


def test_a_method_option_is_one_declaration_that_validation_follows():
    from workbench import methods
    from workbench.options import number

    class Probe(methods.GRPO):
        name = "probe"
        OPTIONS = {"weight": number(0.5, "a probe", low=0.0, high=1.0)}

    assert Probe.defaults == {"weight": 0.5} and Probe.OPTIONS["weight"].name == "weight"
    cfg = RunConfig()
    cfg.method_options = {"weight": 1.5}
    with pytest.raises(ConfigError, match=r"method_options.weight=1.5 is not allowed: a number in \[0.0, 1.0\]"):
        Probe.validate(cfg)
    cfg.method_options = {"weight": 0.25}
    Probe.validate(cfg)


def test_a_config_error_crosses_processes_whole():
    """Ray tasks and sweep trials raise it in a worker; it must unpickle with its fields."""
    import pickle

    error = ConfigError("method_options.alpha", -1, "a number in [0.0, inf)", show_type=True)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ConfigError and str(again) == str(error)
    assert (again.field, again.value, again.allowed) == ("method_options.alpha", -1, "a number in [0.0, inf)")


# --- option facts on the declarations --------------------------------------------------------------
def test_live_and_fork_refused_fields_are_read_from_the_declarations():
    from workbench.config import OPTIONS
    from workbench.engine.trainer import FORK_REFUSES, LIVE_FIELDS
    from workbench.options import Option

    assert set(LIVE_FIELDS) == {name for name, o in OPTIONS.items() if o.changes_in == "live"}
    assert set(FORK_REFUSES) == {name for name, o in OPTIONS.items() if o.changes_in == "new_run"}
    assert {"learning_rate", "entropy_coef", "top_entropy_quantile", "method_options"} <= set(LIVE_FIELDS)
    assert {"model", "lora_r", "device"} <= set(FORK_REFUSES) and "num_generations" not in LIVE_FIELDS + FORK_REFUSES
    with pytest.raises(ValueError, match="changes_in='sometimes'.*live, fork, new_run"):
        Option(1, "a probe", "int", changes_in="sometimes")


def test_a_method_declares_only_the_settings_it_changes():
    from workbench import methods

    class Probe(methods.GRPO):
        name = "probe"
        CONFIG_DEFAULTS = {"entropy_coef": 0.05}

    assert Probe.CONFIG_DEFAULTS == {**methods.Method.CONFIG_DEFAULTS, "entropy_coef": 0.05}
    assert methods.get("poly_epo").CONFIG_DEFAULTS["entropy_coef"] == 0.0  # inherited


def test_method_options_parse_merge_and_fill_in_one_value():
    from workbench import methods
    from workbench.options import MethodOptions

    assert MethodOptions.key("method_options.alpha") == "alpha" and MethodOptions.key("learning_rate") is None
    flat = {"learning_rate": 1e-3, "method_options": {"gate": "always", "alpha": 0.1}, "method_options.alpha": 0.5}
    assert MethodOptions.gathered(flat) == {"learning_rate": 1e-3, "method_options": {"gate": "always", "alpha": 0.5}}
    assert MethodOptions.gathered({"method_options.eta": 1}) == {"method_options": {"eta": 1}}
    options = MethodOptions({"gate": "always"}, methods.get("eepo").OPTIONS)
    assert options["gate"] == "always" and options["alpha"] == 0.3  # the explicit value, else the declared default
    changed = options.merged({"alpha": 0.5})
    assert changed.explicit == {"gate": "always", "alpha": 0.5} and options.explicit == {"gate": "always"}
    assert MethodOptions({"alpha": 0.3}, options.declared) == MethodOptions({}, options.declared)  # as they train
    assert options.shown_as(dict(options)).explicit == {"gate": "always"}
    assert options.shown_as({**options, "window": 5}).explicit == {"gate": "always", "window": 5}


def test_replace_merges_method_options_and_another_method_starts_from_its_own():
    cfg = RunConfig(method="eepo", method_options={"gate": "always"})
    assert cfg.replace(method_options={"alpha": 0.5}).method_options == {"gate": "always", "alpha": 0.5}
    assert cfg.replace(method="erpo").method_options == {}  # EEPO's gate is no option of ERPO
    assert cfg.replace(method="policy_split", method_options={"eta": 0.05}).method_options == {"eta": 0.05}
    bonus = RunConfig(method="entropy_bonus", entropy_coef=0.02)
    assert bonus.replace(method="grpo").entropy_coef == 0.02  # the user's value is kept
