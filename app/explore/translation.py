"""The translation view (encoder-decoders such as T5) on the Explore page: translate, then trace the translation.

Run makes two model calls: a greedy ``generate`` (the encoder runs once, then one cached
decoder step per new token) and one traced forward pass that feeds the decoder its own
translation, shifted right behind the start token:

    decoder input   <start>  t0  t1  …  t(n-2)
    decoder output    t0     t1  t2  …  t(n-1)     (greedy: each output is the argmax at its step)

so row i of the decoder's attention maps is the step that chose target token t(i). The trace
then holds three kinds of attention: the encoder's self-attention over the source, the
decoder's causal self-attention over what it has written, and the cross-attention from each
target step to the source tokens.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

import plotly.graph_objects as go
import torch
from torch import Tensor

from archplay.models import ModelOutput, Trace
from archplay.viz.attention import attention_heatmap

from ..catalog import Entry
from ..tokens import tokens_html as token_chips

if TYPE_CHECKING:
    from ..session import Analysis

TRANSLATION_LIMIT = 128  # the most target tokens Run writes (the heatmaps stay readable)

# The attention kinds of an encoder-decoder, in the order data flows through it.
KINDS = ("encoder", "decoder", "cross")
KIND_CHOICES = [
    ("encoder self-attention", "encoder"),
    ("decoder self-attention (causal)", "decoder"),
    ("cross-attention (decoder → encoder)", "cross"),
]
LANGUAGE = (
    "verb last, adjectives after the noun, particles after the words (ga marks the subject, wo the object, "
    "na a destination) and -ri for plurals"
)
DEFAULT_KIND = "cross"  # a Run opens on cross-attention: the alignment between the two languages
KIND_NAMES = {
    "encoder": "Encoder self-attention",
    "decoder": "Decoder self-attention",
    "cross": "Cross-attention",
}
KIND_HELP = {
    "encoder": (
        "**Encoder self-attention.** Row = a source token doing the looking, column = the source "
        "token it looks at. The encoder reads your whole text at once, so every token may look both "
        "ways: no empty triangle."
    ),
    "decoder": (
        "**Decoder self-attention.** Row i = the step that chose translation token i; columns = "
        "what the decoder had written by then (the start token, then its own earlier tokens). It "
        "cannot look at tokens it has not written yet, hence the empty upper triangle."
    ),
    "cross": (
        "**Cross-attention.** Row i = the step that chose translation token i; columns = your "
        "source tokens. It shows where in your text the decoder looked while choosing each word; "
        "in a trained translator it often traces a word-by-word alignment."
    ),
}


@dataclass
class Translation:
    """One Run's greedy translation and the decoder's attention over it (CPU, float32)."""

    ids: list[int]  # the target tokens the decoder wrote, (n,)
    labels: list[str]  # one display label per target token
    input_labels: list[str]  # the decoder's inputs: the start token, then ids[:-1]
    text: str  # the decoded translation
    decoder_attentions: list[Tensor]  # per decoder layer (H, n, n), causal
    cross_attentions: list[Tensor]  # per decoder layer (H, n, S)
    stopped_at_eos: bool  # False: it ran into the token budget
    budget: int  # the most tokens it could write

    @property
    def n_decoder_layer(self) -> int:
        return len(self.decoder_attentions)


def budget(n_source: int) -> int:
    """How many target tokens Run lets the decoder write for ``n_source`` source tokens."""
    return max(1, min(TRANSLATION_LIMIT, 2 * n_source + 16))


def eos_id(entry: Entry) -> int | None:
    """The end-of-text token the decoder stops at: the tokenizer's, else the config's."""
    eos = getattr(entry.tokenizer, "eos_token_id", None)
    return eos if eos is not None else getattr(entry.config, "eos_token_id", None)


@torch.inference_mode()
def translate(entry: Entry, ids: list[int]) -> tuple[list[int], ModelOutput]:
    """Greedy translation of the source ``ids``, then one traced pass over it.

    Returns ``(target ids, output)``; ``output.logits[0]`` (n, V) are the decoder's scores at
    each target step and ``output.trace.attentions`` the encoder's self-attention.
    """
    source = torch.tensor([ids], dtype=torch.long, device=entry.device)  # (1, S)
    new = entry.model.generate(source, max_new_tokens=budget(len(ids)), temperature=0.0, eos_token_id=eos_id(entry))
    new = [int(t) for t in new[0]]
    decoder_input = torch.tensor([decoder_inputs(entry, new)], dtype=torch.long, device=entry.device)  # (1, n)
    return new, entry.model(source, decoder_input_ids=decoder_input, trace=True)


def decoder_inputs(entry: Entry, new: list[int]) -> list[int]:
    """What the decoder read at each step: the start token, then its own tokens shifted right."""
    return [int(entry.config.decoder_start_token_id), *new[:-1]]


def written(entry: Entry, source: list[int], new: list[int], trace: Trace) -> Translation:
    """The session's Translation of ``new`` (written for ``source``) from its traced pass, ``trace``
    being batch row 0 on the CPU (``Trace.detach(0)``)."""
    tok, eos = entry.tokenizer, eos_id(entry)
    return Translation(
        ids=new,
        labels=list(tok.tokens(new)),
        input_labels=list(tok.tokens(decoder_inputs(entry, new))),
        text=tok.decode(new),
        decoder_attentions=trace.decoder_attentions,
        cross_attentions=trace.cross_attentions,
        stopped_at_eos=bool(new) and eos is not None and new[-1] == eos,
        budget=budget(len(source)),
    )


# --------------------------------------------------------------------------- drawn from the session's Run


def attention_figure(analysis: Analysis, kind: str, layer: int, head: int, *, title: str, cells: bool = True
                     ) -> go.Figure:  # fmt: skip
    """One head of ``kind``: the encoder's self-attention over the source, the decoder's over what
    it wrote, or the cross-attention from each target step to the source."""
    t = analysis.translation
    if kind == "encoder":
        return attention_heatmap(
            analysis.attentions[layer][head], analysis.labels, analysis.labels, title=title,
            query_title="source token (looking)", key_title="source token (looked at)", cells=cells,
        )  # fmt: skip
    maps = t.decoder_attentions if kind == "decoder" else t.cross_attentions
    keys = t.input_labels if kind == "decoder" else analysis.labels
    return attention_heatmap(
        maps[layer][head], t.labels, keys, title=title,
        query_title="translation token being chosen",
        key_title="decoder input (written so far)" if kind == "decoder" else "source token",
        query_word="step", key_word="input" if kind == "decoder" else "source", cells=cells,
    )  # fmt: skip


def tokens_html(analysis: Analysis, note_text: str = "") -> str:
    """Two strips: the source the encoder read and the translation the decoder wrote."""
    t = analysis.translation
    ending = "stopped at the end-of-text token" if t.stopped_at_eos else f"stopped at the {t.budget}-token limit"
    return (
        '<div class="ap-strip-title">Source: what the encoder reads</div>'
        + token_chips(analysis.labels, analysis.ids, note_text=note_text)
        + '<div class="ap-strip-title">Translation: what the decoder wrote (greedy, one token per step), in a '
        + f'language invented for the story world: {html.escape(LANGUAGE)}</div>'
        + token_chips(t.labels, t.ids, note_text=ending)
    )
