"""Tokenizers behind one small interface: encode, decode, and display labels.

* ``ByteTokenizer``: every UTF-8 byte is a token, plus a few specials. Encodes any text
  exactly; handy for tiny test models that need no trained vocabulary.
* ``HFTokenizer``: wraps a Hugging Face tokenizer loaded from a checkpoint folder.
* ``SPTokenizer``: the built-in models' SentencePiece BPE vocabulary (``assets/tokenizer/``),
  trained on the story corpus and its translation by ``train_tokenizer``
  (``python -m archplay.models.story.tokenizer`` retrains it, deterministically).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from archplay.models.checkpoints.assets import ASSETS

_SURROGATES = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with lone UTF-16 surrogates (which no UTF-8 tokenizer can encode; a browser or an API
    client can still send them) replaced by U+FFFD, one character for one."""
    return _SURROGATES.sub("\ufffd", text)


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None
    mask_token_id: int | None
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def tokens(self, ids: list[int]) -> list[str]: ...


# Whitespace and control characters made visible in labels.
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(piece: str) -> str:
    """A display label for a piece of text: whitespace and control characters shown, never empty."""
    out = []
    for ch in piece:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"<0x{ord(ch):02X}>")
        else:
            out.append(ch)
    return "".join(out) or "∅"


def _int_ids(ids) -> list[int]:
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


class ByteTokenizer:
    """Bytes 0..255 are ids 0..255; then <bos>, <eos>, <pad>, <mask> (typed as "<mask>")."""

    SPECIALS = ("<bos>", "<eos>", "<pad>", "<mask>")

    def __init__(self) -> None:
        self.bos_token_id, self.eos_token_id, self.pad_token_id, self.mask_token_id = 256, 257, 258, 259
        self.vocab_size = 256 + len(self.SPECIALS)

    def encode(self, text: str) -> list[int]:
        text = valid_text(text)
        out: list[int] = []
        for i, part in enumerate(text.split("<mask>")):
            if i:
                out.append(self.mask_token_id)
            out.extend(part.encode("utf-8"))
        return out

    def decode(self, ids) -> str:
        return bytes(i for i in _int_ids(ids) if i < 256).decode("utf-8", errors="replace")

    def tokens(self, ids) -> list[str]:
        out = []
        for i in _int_ids(ids):
            if i >= 256:
                out.append(self.SPECIALS[i - 256] if i < self.vocab_size else f"<{i}>")
            elif i < 128:
                out.append(visible(chr(i)))
            else:
                out.append(f"<0x{i:02X}>")  # one byte of a multi-byte character
        return out


def _hf_tokenizer(folder: Path):
    """AutoTokenizer, except that a folder declaring the generic fast class gets exactly that.

    (transformers 5 otherwise swaps in the model type's own tokenizer class, which rebuilds
    a different pipeline from the same vocabulary.)
    """
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # heavy: only for folders

    declared = None
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        declared = json.loads(cfg.read_text(encoding="utf-8")).get("tokenizer_class")
    if declared in ("TokenizersBackend", "PreTrainedTokenizerFast") and (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


class HFTokenizer:
    """A Hugging Face tokenizer from a checkpoint folder, with readable token labels."""

    def __init__(self, folder: str | Path):
        self.hf = _hf_tokenizer(Path(folder))
        self.bos_token_id = self.hf.bos_token_id
        self.eos_token_id = self.hf.eos_token_id
        self.mask_token_id = self.hf.mask_token_id
        self.pad_token_id = self.hf.pad_token_id
        self.vocab_size = len(self.hf)
        backend = getattr(self.hf, "backend_tokenizer", None)
        self._wordpiece = backend is not None and type(backend.model).__name__ == "WordPiece"

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(valid_text(text), add_special_tokens=True))

    def decode(self, ids) -> str:
        return self.hf.decode(_int_ids(ids), skip_special_tokens=True)

    def tokens(self, ids) -> list[str]:
        ids = _int_ids(ids)
        raw = self.hf.convert_ids_to_tokens(ids)
        special = set(self.hf.all_special_ids)
        out = []
        for i, tok in zip(ids, raw):
            if tok is None:  # an id of the model's (padded) vocabulary beyond the tokenizer's
                out.append(f"<{i}>")
                continue
            if i in special or self._wordpiece:
                out.append(str(tok))  # [CLS], ##ing: the WordPiece spelling is the clearest
                continue
            piece = self.hf.decode([i], clean_up_tokenization_spaces=False)
            # A lone byte of a multi-byte character decodes to U+FFFD: show the raw token.
            out.append(visible(piece) if piece and "\ufffd" not in piece else str(tok))
        return out


# --------------------------------------------------------------------------- SentencePiece

ASSET_DIR = ASSETS / "tokenizer"
MODEL_NAME = "archplay.model"
VOCAB_SIZE = 1280  # 7 specials + 256 byte pieces + 1017 learned BPE pieces
SPECIAL_IDS = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "<cls>": 4, "<sep>": 5, "<mask>": 6}
# "<mask>" is a user-defined symbol: typed in a text, it becomes the mask token (and decodes
# back to "<mask>"). The others are control symbols: only code can insert them; typing "<s>"
# gives the characters "<", "s", ">". A model input never contains a stray control token.
_CONTROL = ("<cls>", "<sep>")
_USER = ("<mask>",)


def _trainer_options(vocab_size: int) -> dict:
    """SentencePiece options for an exact, reversible BPE vocabulary.

    BPE rather than unigram: on a closed vocabulary of a few hundred words the unigram
    trainer cannot grow past ~735 pieces, while BPE's merges reach every frequent word as one
    piece; and BPE's segmentation is a fixed sequence of merges, as in GPT-2 and LLaMA.
    Identity normalisation, no whitespace clean-up and no dummy prefix keep the pieces equal
    to the text's bytes, so decode(encode(t)) == t; byte_fallback covers any character never
    seen in training. Pieces never cross whitespace or a change of script (so "ball." is
    "▁ball" + "."), and there is no prefix space: the text's first word, as in GPT-2, is
    spelt without the "▁" the same word has after a space.
    """
    return dict(
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        split_by_whitespace=True, split_by_unicode_script=True, split_digits=True,
        allow_whitespace_only_pieces=False,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>",
        eos_piece="</s>", control_symbols=list(_CONTROL), user_defined_symbols=list(_USER),
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
    )  # fmt: skip


def train_model_proto(texts: list[str], *, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> bytes:
    """Train a SentencePiece model on ``texts`` (one sentence each); the serialized model.

    Deterministic: one thread, no sampling of the input, a fixed random seed, and trained in
    memory so no output path is recorded in the model.
    """
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=out, **_trainer_options(vocab_size))
    return out.getvalue()


def tokenizer_texts(seed: int = 0) -> list[str]:
    """The tokenizer's training text: the train split's stories and their translations."""
    from archplay.models import story

    train = story.make_splits(seed=seed)["train"]
    return [s.text for s in train] + [p.target for p in story.translation_pairs(train)]


def train_tokenizer(out_dir: str | Path = ASSET_DIR, seed: int = 0, *, texts: list[str] | None = None,
                    vocab_size: int = VOCAB_SIZE) -> Path:  # fmt: skip
    """Train the built-in vocabulary into ``out_dir``: ``archplay.model`` and a readable ``archplay.vocab``.

    ``texts`` defaults to ``tokenizer_texts(seed)``. Returns the model's path.
    """
    proto = train_model_proto(tokenizer_texts(seed) if texts is None else texts, vocab_size=vocab_size, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = out / MODEL_NAME
    model.write_bytes(proto)
    tok = SPTokenizer(model)
    if {p: tok.id_of(p) for p in SPECIAL_IDS} != SPECIAL_IDS:
        raise RuntimeError(f"the trained vocabulary does not put the special pieces at {SPECIAL_IDS}")
    lines = [f"{i}\t{tok.sp.id_to_piece(i)}\t{tok.sp.get_score(i):g}" for i in range(tok.vocab_size)]
    model.with_suffix(".vocab").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return model


class SPTokenizer:
    """A SentencePiece model behind the common interface, with exact round trips and char offsets.

        tok = SPTokenizer.builtin(prefix=("<s>",))   # gpt: "<s>" before every text
        ids = tok.encode("Mia has a red ball.")
        tok.tokens(ids)   # ['<s>', 'Mia', '␣has', '␣a', '␣red', '␣ball', '.']

    ``prefix``/``suffix``: special pieces added around every ``encode`` (bert: ("<cls>",),
    ("<sep>",); t5 source: suffix ("</s>",)). ``decode`` drops the control specials and is the
    exact inverse of ``encode`` on the text. Ids are computed by SentencePiece, except that a
    literal "▁" (U+2581, which SentencePiece reads as a space) is spelt in byte pieces.
    """

    def __init__(self, model_file: str | Path, *, prefix: tuple[str, ...] = (), suffix: tuple[str, ...] = ()):
        self._load(str(model_file), Path(model_file).read_bytes(), prefix, suffix)

    def _load(self, model_file: str, proto: bytes, prefix: tuple[str, ...], suffix: tuple[str, ...]) -> None:
        import sentencepiece as spm

        self.model_file, self._proto = model_file, proto
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.prefix, self.suffix = tuple(prefix), tuple(suffix)
        self.vocab_size = self.sp.get_piece_size()
        self.pad_token_id, self.unk_token_id = self.sp.pad_id(), self.sp.unk_id()
        self.bos_token_id, self.eos_token_id = self.sp.bos_id(), self.sp.eos_id()
        self.mask_token_id, self.cls_token_id, self.sep_token_id = map(self._maybe_id, ("<mask>", "<cls>", "<sep>"))
        self._prefix_ids = [self.id_of(p) for p in self.prefix]
        self._suffix_ids = [self.id_of(p) for p in self.suffix]
        # Per id: the UTF-8 bytes it stands for in the text (b"" for control specials), and whether it is special.
        self._special = [self.sp.is_control(i) or self.sp.is_unknown(i) for i in range(self.vocab_size)]
        self._surface = [self._bytes_of(i) for i in range(self.vocab_size)]
        self._byte_id = {self._surface[i][0]: i for i in range(self.vocab_size) if self.sp.is_byte(i)}

    @classmethod
    def builtin(cls, **kw) -> SPTokenizer:
        """The vocabulary in assets/tokenizer/ that the built-in models use."""
        path = ASSET_DIR / MODEL_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; create it with: python -m archplay.models.story.tokenizer")
        return cls(path, **kw)

    # -- pieces

    def _maybe_id(self, piece: str) -> int | None:
        try:
            return self.id_of(piece)
        except KeyError:
            return None

    def id_of(self, piece: str) -> int:
        """The id of a piece ("<mask>", "▁ball"); KeyError if the vocabulary lacks it."""
        i = self.sp.piece_to_id(piece)
        if self.sp.id_to_piece(i) != piece:
            raise KeyError(piece)
        return i

    def _bytes_of(self, i: int) -> bytes:
        piece = self.sp.id_to_piece(i)
        if self._special[i]:
            return b""
        if self.sp.is_byte(i):  # "<0xE6>"
            return bytes([int(piece[3:-1], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def fingerprint(self) -> str:
        """SHA-256 of the model file: checkpoints record it to catch a changed vocabulary."""
        import hashlib

        return hashlib.sha256(self._proto).hexdigest()

    # -- encode / decode

    def _encode_text(self, text: str) -> list[int]:
        ids: list[int] = []
        for n, part in enumerate(text.split("\u2581")):
            if n:  # a literal "▁": its three UTF-8 bytes
                ids += [self._byte_id[b] for b in "\u2581".encode("utf-8")]
            if part:
                ids += self.sp.encode(part)
        return ids

    def encode(self, text: str) -> list[int]:
        return self._prefix_ids + self._encode_text(valid_text(text)) + self._suffix_ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int] | None]]:
        """(ids, spans): each text token's [start, end) char span in ``text``; None for the prefix/suffix.

        A byte piece that is part of a multi-byte character gets that character's span (so the
        spans of the bytes of one character coincide).
        """
        text = valid_text(text)  # one character for one: the spans still index the caller's text
        body = self._encode_text(text)
        char_of_byte = [c for c, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]
        spans: list[tuple[int, int] | None] = []
        at = 0  # byte offset
        for i in body:
            n = len(self._surface[i])
            spans.append((char_of_byte[at], char_of_byte[at + n - 1] + 1) if n else None)
            at += n
        none = [None] * len(self._prefix_ids)
        return self._prefix_ids + body + self._suffix_ids, none + spans + [None] * len(self._suffix_ids)

    def decode(self, ids) -> str:
        """The text of ``ids``: control specials and ids outside the vocabulary are skipped."""
        raw = b"".join(self._surface[i] for i in _int_ids(ids) if 0 <= i < self.vocab_size)
        return raw.decode("utf-8", errors="replace")

    def tokens(self, ids) -> list[str]:
        """Display labels: "␣ball", specials by name, bytes as "<0xE6>" (ASCII ones as the character)."""
        out = []
        for i in _int_ids(ids):
            if not 0 <= i < self.vocab_size:
                out.append(f"<{i}>")
            elif self._special[i] or i == self.mask_token_id:
                out.append(self.sp.id_to_piece(i))
            elif self.sp.is_byte(i):
                b = self._surface[i][0]
                out.append(visible(chr(b)) if b < 0x80 else f"<0x{b:02X}>")
            else:
                out.append(visible(self._surface[i].decode("utf-8")))
        return out

    # -- pickling: the processor is rebuilt from the model bytes

    def __getstate__(self) -> dict:
        return {"model_file": self.model_file, "proto": self._proto, "prefix": self.prefix, "suffix": self.suffix}

    def __setstate__(self, state: dict) -> None:
        self._load(state["model_file"], state["proto"], state["prefix"], state["suffix"])

    def __repr__(self) -> str:
        return (f"SPTokenizer({self.model_file!r}, vocab_size={self.vocab_size}, prefix={self.prefix}, "
                f"suffix={self.suffix})")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """``python -m archplay.models.story.tokenizer [--out DIR] [--seed N]``: retrain the built-in vocabulary."""
    import argparse
    import time

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", default=str(ASSET_DIR))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    path = train_tokenizer(args.out, seed=args.seed)
    tok = SPTokenizer(path)
    print(f"wrote {path} ({path.stat().st_size} bytes, {tok.vocab_size} pieces, sha256 {tok.fingerprint()[:12]}) "
          f"in {time.perf_counter() - started:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
