"""Text and tokens as every tab handles them: the story sentence the tabs start with, a text
encoded within the page's token limit, a tokenizer's mask token, and the token chips strip.
"""

from __future__ import annotations

import html
import re

from archplay.models.analysis.trace_budget import trace_cap

from .catalog import Entry

# From the built-ins' story world (archplay.models.story), so the trained models have something to say.
DEFAULT_TEXT = "Mia finds a big red ball. She throws the ball to Tom. Then Tom"
# The most characters of a text the page reads; the rest is cut before tokenising (a tokenizer's
# time and memory grow with the text, and no Run shows more than PAGE_MAX_TOKENS tokens anyway).
MAX_TEXT_CHARS = 20_000
_SURROGATE = re.compile("[\ud800-\udfff]")


def clip(text: str) -> tuple[str, str]:
    """``text`` cut to ``MAX_TEXT_CHARS`` characters, and a sentence saying so ("" when it was not cut).

    Lone surrogates (which no UTF-8 response can carry) become U+FFFD, as the tokenizers read them."""
    text = _SURROGATE.sub("\ufffd", str(text))
    if len(text) <= MAX_TEXT_CHARS:
        return text, ""
    return text[:MAX_TEXT_CHARS], (f"Your text has {len(text):,} characters; the page reads the first "
                                   f"{MAX_TEXT_CHARS:,} (a Run shows at most {PAGE_MAX_TOKENS} tokens).")  # fmt: skip
PAGE_MAX_TOKENS = 512  # the most tokens one Run analyses: a T × T heatmap stays drawable


def token_limit(entry: Entry) -> int:
    """The most tokens a Run analyses: the model's context, or the page's limit if smaller, or fewer for a big
    model whose traced run would otherwise return too much (``trace_budget.trace_cap``)."""
    return trace_cap(entry.config, min(int(entry.config.max_seq_len), PAGE_MAX_TOKENS)).tokens


def encode(entry: Entry, text: str) -> tuple[list[int], int | None]:
    """Token ids for ``text``, cut to ``token_limit``; also the length before cutting (or None)."""
    ids = [int(i) for i in entry.tokenizer.encode(text)]
    limit = token_limit(entry)
    if len(ids) > limit:
        return ids[:limit], len(ids)
    return ids, None


def mask_id(tokenizer) -> int | None:
    """The id of the tokenizer's mask token (an encoder predicts what hides behind it), or None."""
    return getattr(tokenizer, "mask_token_id", None)


def mask_token(tokenizer) -> str | None:
    """How the tokenizer spells its mask token (``[MASK]``, ``<mask>``), or None without one."""
    mid = mask_id(tokenizer)
    return None if mid is None else tokenizer.tokens([mid])[0]


def tokens_html(labels: list[str], ids: list[int], *, focus: int | None = None, note_text: str = "") -> str:
    """Token chips; hovering a chip shows its position and id. Everything user-made is escaped."""
    if not labels:
        return '<div class="ap-tokens ap-empty">Run the model to see how it splits your text into tokens.</div>'
    chips = []
    for i, (label, tid) in enumerate(zip(labels, ids)):
        cls = "ap-tok ap-focus" if i == focus else "ap-tok"
        tip = f"#{i} · id {tid}" + (" · predicted here" if i == focus else "")
        chips.append(
            f'<span class="{cls}" title="{html.escape(tip, quote=True)}" data-index="{i}">'
            f'<span class="ap-idx">{i}</span>{html.escape(label or "∅", quote=True)}</span>'
        )
    meta = f"{len(labels)} token{'s' if len(labels) != 1 else ''} · hover one for its position and id"
    if note_text:
        meta += f" · {html.escape(note_text, quote=True)}"
    return (
        f'<div class="ap-tokens" role="list" aria-label="{len(labels)} tokens">{"".join(chips)}</div>'
        f'<div class="ap-tokens-meta">{meta}</div>'
    )
