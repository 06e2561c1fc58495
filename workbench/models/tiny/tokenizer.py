"""A character-level Hugging Face tokenizer: one token per printable ASCII character.

It loads with ``AutoTokenizer`` like any hub tokenizer, on transformers 4 and 5 alike.
transformers 5 loads the tokenizer of a Qwen2 checkpoint as ``Qwen2Tokenizer`` whatever
``tokenizer_config.json`` says, and that class keeps only the vocabulary and merges of
``tokenizer.json``: it rebuilds the rest (NFC, byte-level pre-tokenizer and decoder, BPE
without an unknown token). So the vocabulary is spelt in the byte-level alphabet (``Ġ``
for a space, ``Ċ`` for a newline), there are no merges, and ``tokenizer.json`` declares
that same pipeline for transformers 4, which reads the file as it is (Qwen2's pre-split
regex is left out: without merges it changes nothing): both versions give the same ids,
the ones the model was trained on. Characters outside the vocabulary are dropped (no ``<unk>``), as
``Qwen2Tokenizer`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    def spelt(character: str) -> str:  # the piece the byte-level pre-tokenizer makes of it
        return byte_level.pre_tokenize_str(character)[0][0]

    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *map(spelt, CHARACTERS)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: every character stays one token
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = byte_level
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def save_char_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """``save_pretrained``, with a ``tokenizer_class`` both transformers 4 and 5 can load
    (transformers 5 writes ``TokenizersBackend``, a name transformers 4 does not know)."""
    tokenizer.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") != "PreTrainedTokenizerFast":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
