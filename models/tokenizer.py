"""Tokenizers behind one small interface: encode, decode, and display labels.

* ``ByteTokenizer``: every UTF-8 byte is a token, plus a few specials. Encodes any text
  exactly; used by the untrained built-in model.
* ``HFTokenizer``: wraps a Hugging Face tokenizer loaded from a checkpoint folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


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
        return list(self.hf.encode(text, add_special_tokens=True))

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
