"""Explore's Generate: the model keeps writing (an encoder-decoder translates again), streamed token
by token, each new token shaded by the probability it was drawn with. Whether a model may generate
is its family's word (``Family.generates``); a masked model fills blanks instead.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from typing import NamedTuple

import torch

from archplay.models.sampling import MIN_TEMPERATURE, is_greedy

from ..catalog import Catalog, Entry, UnknownModelError
from ..messages import error, md_escape, note, ok, plural, warn
from ..tokens import clip, mask_token
from . import translation
from .sampling import settings

MIN_NEW_TOKENS = 16  # new tokens a prompt that fills the context is cut to make room for


class Generated(NamedTuple):
    """One step of the stream: what the Generate panel shows after each token."""

    text: str  # the text so far (an encoder-decoder: its translation so far)
    status: str  # markdown
    tokens_html: str  # the new tokens shaded by probability


def generate_note(entry: Entry) -> tuple[bool, str]:
    """Whether ``entry`` can generate, and a note for the Generate panel (why not, or what it does)."""
    spec = entry.spec
    if "translation" in spec.views:
        return True, note(
            "An encoder-decoder does not continue your text: Generate translates it again, token by "
            "token, with the sampling settings above (Run shows the greedy translation)."
        )
    if spec.generates:
        return True, ""
    mask = mask_token(entry.tokenizer)
    tip = f" Put {md_escape(mask)} in your text and the distribution panel shows what it would fill in." if mask else ""
    return False, note(
        "Encoders such as BERT fill in blanks rather than continue text, so Generate is off for this model." + tip
    )


def generate(
    catalog: Catalog,
    model_key: str | None,
    text: str | None,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Iterator[Generated]:
    """Continue ``text`` token by token (an encoder-decoder: translate it), yielding what the panel
    shows after each token.

    When prompt + new tokens would overflow the context, fewer new tokens are made (``_fit``);
    a prompt that alone fills it keeps its last tokens, an encoder-decoder's source its first ones.
    Errors are yielded as a status message (with an empty text), never raised.
    """
    try:
        entry = catalog.get(model_key)
    except UnknownModelError as e:
        yield Generated("", error(md_escape(str(e))), "")
        return
    can_gen, why = generate_note(entry)
    if not can_gen:
        yield Generated("", why, "")
        return
    if text is None or not str(text).strip():
        yield Generated("", error("Type some text to continue, then press Generate."), "")
        return
    try:
        temperature, top_k, top_p = settings(temperature, top_k, top_p)
        max_new_tokens, seed = int(max_new_tokens), int(seed or 0)
        if max_new_tokens < 1:
            raise ValueError(f"max new tokens must be at least 1, got {max_new_tokens}")
    except (TypeError, ValueError) as e:
        yield Generated("", error(md_escape(str(e))), "")
        return
    text, clipped = clip(text)
    prompt = [int(i) for i in entry.tokenizer.encode(text)]
    if not prompt:
        yield Generated("", error("This text produced no tokens."), "")
        return
    for step in _stream(entry, prompt, max_new_tokens, temperature, top_k, top_p, seed):
        yield step._replace(status=step.status + "\n\n" + warn(clipped)) if clipped else step


def _fit(entry: Entry, prompt: list[int], max_new_tokens: int) -> tuple[list[int], int, list[str]]:
    """(prompt, max new tokens, notes) fitted into the model's context.

    A large max new tokens shrinks to what fits after the prompt, never the prompt itself: the
    models usually stop at an end-of-story token long before. Only a prompt that leaves room for
    fewer than ``MIN_NEW_TOKENS`` (or the asked number, if smaller) loses its first tokens.
    """
    limit, notes = int(entry.config.max_seq_len), []
    if "translation" in entry.spec.views:  # the decoder's length is free (relative positions); the source is bounded
        if len(prompt) > limit:
            notes.append(warn(f"The text was cut to its first {limit} tokens, as much as this model reads."))
            prompt = prompt[:limit]
        return prompt, max_new_tokens, notes
    room = limit - len(prompt)
    if max_new_tokens <= room:
        return prompt, max_new_tokens, notes
    least = max(1, min(max_new_tokens, MIN_NEW_TOKENS, limit - 1))
    if room >= least:
        notes.append(warn(f"This model's context is {limit} tokens and your text uses {len(prompt)}, "
                          f"so at most {room} new tokens."))  # fmt: skip
        return prompt, room, notes
    keep = limit - least
    notes.append(warn(f"This model's context is {limit} tokens and your text uses {len(prompt)}: it was cut to "
                      f"its last {keep} tokens to leave room for {plural(least, 'new token')}."))  # fmt: skip
    return prompt[-keep:], least, notes


def _stream(entry: Entry, prompt, max_new_tokens, temperature, top_k, top_p, seed) -> Iterator[Generated]:
    prompt, max_new_tokens, notes = _fit(entry, prompt, max_new_tokens)
    tok = entry.tokenizer
    translates = "translation" in entry.spec.views
    new: list[int] = []
    probs: list[float] = []
    eos = translation.eos_id(entry) if translates else getattr(tok, "eos_token_id", None)
    shown = (lambda: tok.decode(new)) if translates else (lambda: tok.decode(prompt + new))
    verb = ("Translating…", "Translated into") if translates else ("Generating…", "Generated")
    pieces = ProbabilityChips(tok)
    started = time.perf_counter()
    ids = torch.tensor([prompt], dtype=torch.long, device=entry.device)
    stream = entry.model.generate_stream(
        ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=seed, eos_token_id=eos,
    )  # fmt: skip
    try:
        for token_id, prob in stream:
            new.append(int(token_id))
            probs.append(float(prob))
            pieces.add(int(token_id), float(prob))
            status = _status(new, probs, started, notes, verb, done=False, greedy=is_greedy(temperature))
            yield Generated(shown(), status, pieces.html())
    except (ValueError, RuntimeError) as e:
        yield Generated(shown(), error(f"Generation stopped: {md_escape(str(e))}"), pieces.html())
        return
    stopped = bool(new) and eos is not None and new[-1] == eos
    final = _status(new, probs, started, notes, verb, done=True, greedy=is_greedy(temperature), stopped_at_eos=stopped)
    yield Generated(shown(), final, pieces.html())


class ProbabilityChips:
    """The generated tokens as text pieces, each shaded by the probability it was drawn with
    (red: an unlikely pick, green: a confident one); hovering a piece shows the number."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.pieces = tokenizer, [], []

    def add(self, token_id: int, prob: float) -> None:
        before = self.tok.decode(self.ids)
        self.ids.append(token_id)
        after = self.tok.decode(self.ids)  # the piece is what this token added to the decoded text
        piece = after[len(before):] if after.startswith(before) else self.tok.decode([token_id])
        self.pieces.append((piece, prob))

    def html(self) -> str:
        if not self.pieces:
            return ""
        spans = "".join(
            f'<span class="ap-gen" style="background:hsl({120 * p:.0f},70%,84%)" '
            f'title="p = {p:.1%}">{html.escape(piece) or "∅"}</span>'
            for piece, p in self.pieces
        )
        legend = ('<div class="ap-gen-legend">shade = the probability each token was drawn with: '
                  '<span style="background:hsl(0,70%,84%)">unlikely</span> → '
                  '<span style="background:hsl(120,70%,84%)">certain</span></div>')  # fmt: skip
        return f'<div class="ap-gen-text">{spans}</div>{legend}'


def _status(new, probs, started, notes, verb, *, done: bool, greedy: bool, stopped_at_eos: bool = False) -> str:
    secs = max(time.perf_counter() - started, 1e-9)
    n = len(new)
    line = f"{verb[1] if done else verb[0]} {plural(n, 'token')} · {n / secs:.1f} tokens/s"
    if greedy:
        line += f" · greedy (temperature below {MIN_TEMPERATURE:g} counts as 0): always the likeliest token"
    elif probs:
        line += f" · the drawn tokens had {sum(probs) / len(probs):.1%} probability on average"
    if stopped_at_eos:
        line += " · stopped at the end-of-text token"
    return "\n\n".join([ok(line) if done else note(line), *notes])
