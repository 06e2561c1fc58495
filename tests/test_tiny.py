"""The embedded model: a char tokenizer that loads with AutoTokenizer, a Qwen2 checkpoint that
loads offline, and a build that writes the same bytes twice."""

import hashlib

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2ForCausalLM

from workbench.models.tiny import CHECKPOINT_DIR
from workbench.models.tiny.build import BuildConfig, build
from workbench.models.tiny.tokenizer import CHARACTERS


def test_shipped_checkpoint_loads_offline_with_auto_classes():
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINT_DIR)
    assert isinstance(tokenizer, PreTrainedTokenizerFast) and isinstance(model, Qwen2ForCausalLM)
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 10e6
    assert (CHECKPOINT_DIR / "model.safetensors").exists()


def test_tokenizer_is_one_token_per_character_and_roundtrips():
    # transformers 5 loads a Qwen2 checkpoint's tokenizer as Qwen2Tokenizer, transformers 4 as written
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    for text in ['Make 22 from 3 5 7.\n3*5=15,15+7=22 "High Entropy" mode!', " two  spaces\n\n" + CHARACTERS]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids
    assert tokenizer(" \na", add_special_tokens=False)["input_ids"] == [4, 3, 69]  # the ids the model was trained on


def test_build_is_deterministic(tmp_path):
    cfg = BuildConfig(steps=3, batch_size=8, warmup=1, high_entropy_every=2, high_entropy_batch_size=2)
    digests = []
    for name in ("a", "b"):
        out = build(tmp_path / name, cfg, progress=False)
        digests.append(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
        assert (out / "tokenizer.json").exists()
    assert digests[0] == digests[1]
    # what the build writes loads on transformers 4 and 5 and reads text as the shipped tokenizer does
    built, shipped = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    assert built(CHARACTERS)["input_ids"] == shipped(CHARACTERS)["input_ids"]
