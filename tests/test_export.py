"""Issue 33 item 4: ``workbench export``. A run's rollouts round-trip through ``datasets.load_from_disk``
(one row per response, its token columns intact) and its adapter through ``PeftModel.from_pretrained``
(the loaded model's logits are the trained policy's), with a model card."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import RunConfig, Trainer
from workbench.cli import main
from workbench.config import ConfigError
from workbench.models.loading import load
from workbench.run.export import export_adapter, export_rollouts
from workbench.run.store import RunStore

datasets = pytest.importorskip("datasets", reason="export --rollouts needs the [data] extra")
peft = pytest.importorskip("peft")

# an entropy bonus moves the adapter every step: the exported weights are not the initial ones
SMALL = dict(num_prompts=2, num_generations=4, max_completion_length=8, threads=1, seed=3, entropy_coef=0.05)
TOKEN_COLUMNS = ("token_ids", "logprob", "entropy", "token_advantage", "pivot", "topk_ids", "topk_probs")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step run of the embedded model, and the trainer whose policy ends where its last checkpoint is."""
    run = tmp_path_factory.mktemp("export") / "run"
    trainer = Trainer(RunConfig(**SMALL), out_dir=run)
    trainer.run(3, progress=False)
    trainer.close()
    return run, trainer


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(ids).logits


def test_cli_export_writes_rollouts_as_a_dataset_and_the_adapter_peft_loads_with_the_trained_weights(trained, tmp_path):
    run, trainer = trained
    code = main(["export", str(run), "--rollouts", str(tmp_path / "rollouts"), "--adapter", str(tmp_path / "adapter")])
    assert code == 0

    store = RunStore(run)
    expected = [store.read_rollouts(step) for step in store.rollout_steps()]
    dataset = datasets.load_from_disk(str(tmp_path / "rollouts"))
    assert dataset.num_rows == sum(len(f) for f in expected) == 3 * 2 * 4  # one row per response
    assert set(TOKEN_COLUMNS) <= set(dataset.column_names) and "completion" in dataset.column_names
    rows = [row for frame in expected for row in frame.to_dict("records")]
    for got, want in zip(dataset, rows):
        assert (got["step"], got["completion"], got["reward"]) == (want["step"], want["completion"], want["reward"])
        for column in TOKEN_COLUMNS:
            assert np.array_equal(np.asarray(got[column]), np.asarray(want[column])), column

    base, _ = load("tiny")
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    ids = torch.tensor([list(rows[0]["token_ids"]), list(rows[1]["token_ids"])])
    exported = logits(loaded, ids)
    assert torch.equal(exported, logits(trainer.policy.model, ids))  # the trained policy's, bit for bit
    with loaded.disable_adapter():
        assert not torch.allclose(exported, logits(loaded, ids))  # and not the base model's

    card = (tmp_path / "adapter" / "README.md").read_text()
    last = store.read_metrics()[-1]
    assert card.startswith("---\nlibrary_name: \"peft\"")
    for said in ("base model: tiny", "method: grpo", "task: countdown", "steps: 3", f"Last metrics (step {last['step']})"):
        assert said in card, said
    assert f"| entropy_mean | {last['entropy_mean']:.6g} |" in card


def test_export_adapter_of_an_earlier_checkpoint_and_what_it_refuses(trained, tmp_path):
    run, _ = trained
    first = export_adapter(run, tmp_path / "step0", step=0)
    base, _ = load("tiny")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    plain = logits(base, ids)
    loaded = peft.PeftModel.from_pretrained(base, str(first))
    assert torch.equal(logits(loaded, ids), plain)  # LoRA's B starts at zero: step 0 is the base model
    assert "steps: 0" in (first / "README.md").read_text()

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"adapter='.*full' is not allowed: a new or empty directory"):
        export_adapter(run, tmp_path / "full")
    with pytest.raises(ConfigError, match=r"rollouts='.*full' is not allowed"):
        export_rollouts(run, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]

    bare = tmp_path / "bare"
    quiet = Trainer(RunConfig(**{**SMALL, "save_rollouts": False}), out_dir=bare)
    quiet.run(1, progress=False)
    quiet.close()
    with pytest.raises(ConfigError, match="save_rollouts: true"):
        export_rollouts(bare, tmp_path / "none")
    assert main(["export", str(run)]) == 2  # nothing asked for: one line, no traceback
    with pytest.raises(ConfigError, match=r"step=2 is not allowed: the step of one of the run's checkpoints: 0, 3"):
        export_adapter(run, tmp_path / "step2", step=2)
    assert not (tmp_path / "step2").exists() and not (tmp_path / "none").exists()  # a refusal writes nothing
