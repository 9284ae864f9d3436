"""Fine-tuning on your own text: a pasted text as a corpus, its held-out part, and what changed.

A causal model (decoder, mixture of experts, scan) continues training on the text's paragraphs
(split on blank lines, or on sentences when there is one paragraph); the last tenth of them is
held out. Before and after, the held-out text's perplexity and a greedy continuation of its
opening words are recorded, so the page can put them side by side.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_CHARS = 200_000  # a pasted text; longer is cut (and said so)
MIN_TRAIN_TOKENS = 48  # below this there is nothing to learn from
MIN_HELD_OUT_TOKENS = 12
PROMPT_TOKENS = 8
CONTINUATION_TOKENS = 24


@dataclass(frozen=True)
class Passage:
    """One paragraph of the user's text, shaped like a story (``.text``) for the training batches."""

    text: str


def split_text(text: str) -> tuple[list[Passage], list[Passage]]:
    """(training passages, held-out passages): paragraphs, or sentences when the text is one
    paragraph; the last tenth (at least one) held out. ValueError when the text is too short."""
    text = str(text or "").replace("\r\n", "\n")[:MAX_CHARS]
    parts = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(parts) < 2:
        parts = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    if len(parts) < 2:
        raise ValueError("give at least two sentences or paragraphs of text (the last is held out to measure)")
    held = max(1, len(parts) // 10)
    return [Passage(p) for p in parts[:-held]], [Passage(p) for p in parts[-held:]]


def stream(tok, passages) -> torch.Tensor:
    """``<s> passage </s> …`` as one (N,) tensor of ids (as the story world's causal stream)."""
    from archplay.models.training.train import causal_stream

    return causal_stream(tok, passages)


@torch.inference_mode()
def perplexity(model, ids: torch.Tensor, context: int) -> float:
    """exp(mean next-token loss) over ``ids`` (N,), read in windows of at most ``context`` tokens."""
    total, count = 0.0, 0
    model.eval()
    for start in range(0, max(1, ids.numel() - 1), context):
        chunk = ids[start : start + context + 1]
        if chunk.numel() < 2:
            break
        logits = model(chunk[None, :-1]).logits[0].float()
        total += float(F.cross_entropy(logits, chunk[1:], reduction="sum"))
        count += chunk.numel() - 1
    return math.exp(total / max(count, 1))


@torch.inference_mode()
def continuation(model, tok, prompt: list[int], n: int = CONTINUATION_TOKENS) -> str:
    """The greedy continuation of ``prompt`` (token ids), as text."""
    model.eval()
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, temperature=0.0, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, len(prompt) :].tolist())


def snapshot(model, tok, held_out, context: int) -> dict:
    """The held-out perplexity and the continuation of the held-out text's opening words, now."""
    ids = stream(tok, held_out)
    prompt = ids[: PROMPT_TOKENS + 1].tolist()  # <s> and the first words
    return {"perplexity": perplexity(model, ids, context), "prompt": tok.decode(prompt),
            "continuation": continuation(model, tok, prompt)}  # fmt: skip


def check_sizes(tok, train, held_out) -> tuple[int, int]:
    """(training tokens, held-out tokens); ValueError when either is too small to use."""
    n_train, n_held = stream(tok, train).numel(), stream(tok, held_out).numel()
    if n_train < MIN_TRAIN_TOKENS:
        raise ValueError(f"the text gives {n_train} tokens to train on; give at least {MIN_TRAIN_TOKENS}")
    if n_held < MIN_HELD_OUT_TOKENS:
        raise ValueError(f"the held-out part (the last paragraph or sentence) has {n_held} tokens; give a longer "
                         f"text (at least {MIN_HELD_OUT_TOKENS} held out)")  # fmt: skip
    return n_train, n_held


__all__ = ["Passage", "check_sizes", "continuation", "perplexity", "snapshot", "split_text", "stream"]
