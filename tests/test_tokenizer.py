"""The built-in SentencePiece vocabulary: exact round trips, fixed specials, offsets, labels, determinism."""

from __future__ import annotations

import pickle
import random

import pytest

from archplay.models import story as C
from archplay.models.story.tokenizer import ASSET_DIR, MODEL_NAME, SPTokenizer, train_model_proto, train_tokenizer

ODD_TEXTS = [
    "",
    " ",
    "   ",
    "  Mia has a red ball.  ",
    "Mia\thas\na ball.\r\n",
    "😀 🙂‍↔️ 👩🏽‍🚀",
    "漢字かなカナ 한국어",
    "مرحبا بالعالم",  # right to left
    "e\u0301 n\u0303 a\u030a\u0323",  # combining marks
    "\x00\x01\x1b\x7f nul and controls",
    "zero\u200bwidth\u00a0nbsp\u3000ideographic",
    "a literal \u2581 lower block",
    "\u2581\u2581Mia",
    "<s> </s> <pad> <cls> <sep> <unk> <0xE6>",
    "x<mask>y <mask>",
    "ALL CAPS, digits 0123456789, and symbols #$%&*@[]{}~",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def tok() -> SPTokenizer:
    return SPTokenizer.builtin()


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_round_trip_is_exact(tok, text):
    assert tok.decode(tok.encode(text)) == text
    wrapped = SPTokenizer.builtin(prefix=("<cls>",), suffix=("<sep>",))
    ids = wrapped.encode(text)
    assert ids[0] == wrapped.cls_token_id and ids[-1] == wrapped.sep_token_id
    assert wrapped.decode(ids) == text  # the control specials are dropped


def test_decode_agrees_with_sentencepiece_on_ordinary_text(tok):
    text = "One day, Mia finds a big red ball. She throws the ball to Tom."
    assert tok.decode(tok.encode(text)) == tok.sp.decode(tok.sp.encode(text)) == text


def test_special_ids_are_fixed(tok):
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (4, 5, 6)
    assert [tok.id_of(p) for p in ("<pad>", "<unk>", "<s>", "</s>", "<cls>", "<sep>", "<mask>")] == list(range(7))
    assert tok.vocab_size == 1280
    with pytest.raises(KeyError):
        tok.id_of("no such piece")


def test_prefix_and_suffix():
    gpt = SPTokenizer.builtin(prefix=("<s>",))
    t5 = SPTokenizer.builtin(suffix=("</s>",))
    plain = SPTokenizer.builtin()
    body = plain.encode("Mia is happy.")
    assert gpt.encode("Mia is happy.") == [2, *body]
    assert t5.encode("Mia is happy.") == [*body, 3]
    assert gpt.encode("") == [2]


def test_typed_mask_is_the_mask_token_but_typed_controls_are_text(tok):
    ids = tok.encode("Mia has a <mask> ball.")
    assert ids.count(tok.mask_token_id) == 1
    assert tok.tokens(ids)[ids.index(tok.mask_token_id)] == "<mask>"
    typed = tok.encode("<s></s><cls><sep><pad>")
    assert not set(typed) & {0, 1, 2, 3, 4, 5}


def test_labels(tok):
    assert tok.tokens(tok.encode("Mia has a red ball.")) == ["Mia", "␣has", "␣a", "␣red", "␣ball", "."]
    assert tok.tokens(tok.encode("😀")) == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert tok.tokens(tok.encode("\n\t")) == ["↵", "⇥"]
    assert tok.tokens(tok.encode("\x00")) == ["<0x00>"]
    assert tok.tokens([2, 3, 0, 6, 99999, -1]) == ["<s>", "</s>", "<pad>", "<mask>", "<99999>", "<-1>"]
    assert tok.decode([2, 99999, *tok.encode("ok"), 3]) == "ok"


@pytest.mark.parametrize("text", ODD_TEXTS + ["One day, Mia finds a big red ball. She throws the ball to Tom."])
def test_offsets_cover_the_text(text):
    tok = SPTokenizer.builtin(prefix=("<s>",), suffix=("</s>",))
    ids, spans = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert spans[0] is None and spans[-1] is None and len(spans) == len(ids)
    at = 0
    for i, span in zip(ids[1:-1], spans[1:-1]):
        a, b = span
        piece = tok.decode([i])
        if "\ufffd" in piece:  # one byte of a multi-byte character: that character's span
            assert b == a + 1 and a in (at, at - 1)
            at = b
        else:
            assert text[a:b] == piece and a == at
            at = b
    assert at == len(text)


def test_tokens_map_to_story_words(tok):
    s = C.generate_story(random.Random(7))
    ids, spans = tok.encode_with_offsets(s.text)
    owner = C.token_word_index(s, spans)
    assert None not in owner and owner == sorted(owner)
    for i, w in zip(ids, owner):
        assert s.words[w].endswith(tok.decode([i]).strip())  # "▁ball" belongs to "ball"
    assert set(owner) == set(range(len(s.words)))


def test_pieces_never_mix_letters_and_punctuation(tok):
    for i in range(tok.vocab_size):
        piece = tok.sp.id_to_piece(i)
        if any(ch.isalpha() for ch in piece) and not tok.sp.is_byte(i) and not tok.sp.is_control(i):
            assert not set(piece) & {".", ","}, piece


def test_corpus_words_are_mostly_single_pieces(tok):
    splits = C.make_splits(seed=0, n_train=300, n_valid=1, n_test=1)
    english = {w for s in splits["train"] for w in s.words}
    target = {w for p in C.translation_pairs(splits["train"]) for w in p.target_words}
    for words in (english, target):
        words = {w for w in words if w not in C.PUNCT}
        single = [w for w in words if len(tok.encode(" " + w)) == 1]
        assert len(single) >= 0.9 * len(words)
    assert len(english) > 150 and len(target) > 120


def test_builtin_file_is_small_and_pickles():
    path = ASSET_DIR / MODEL_NAME
    assert path.stat().st_size < 1_000_000
    tok = SPTokenizer.builtin(prefix=("<s>",))
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("Mia has a ball.") == tok.encode("Mia has a ball.") and clone.prefix == ("<s>",)
    assert clone.fingerprint() == tok.fingerprint() == SPTokenizer(path).fingerprint()


def test_training_is_deterministic(tmp_path):
    rng = random.Random(3)
    texts = [C.generate_story(rng).text for _ in range(200)]
    a = train_model_proto(texts, vocab_size=400)
    b = train_model_proto(texts, vocab_size=400)
    assert a == b
    assert train_model_proto(texts[:150], vocab_size=400) != a
    one = train_tokenizer(tmp_path / "one", texts=texts, vocab_size=400)
    two = train_tokenizer(tmp_path / "two", texts=texts, vocab_size=400)
    assert one.read_bytes() == two.read_bytes() == a
    assert (tmp_path / "one" / "archplay.vocab").read_text(encoding="utf-8").splitlines()[6] == "6\t<mask>\t0"
    small = SPTokenizer(one)
    assert small.vocab_size == 400 and small.decode(small.encode("Mia ☃ x")) == "Mia ☃ x"
