"""Explore's attention views, redrawn from the session's Run (never a model call): one layer and
head as a heatmap, every layer × head as thumbnails, the mask pattern the architecture imposes,
and how to read each. An encoder-decoder draws its three kinds (``translation``); a state-space
model its hidden attention, one map per layer (``scan``).
"""

from __future__ import annotations

from typing import NamedTuple

import plotly.graph_objects as go
import torch
from torch import Tensor

from archplay.models.architectures.layers import attention_mask
from archplay.viz.attention import attention_grid, attention_heatmap, attention_mask_heatmap

from ..session import Analysis
from ..sliders import check, clamp
from . import scan, translation

ATTENTION_HELP = {
    "causal": (
        "Row = the token doing the looking (query), column = what it looks at (key); "
        "causal models cannot look ahead, hence the empty upper triangle."
    ),
    "bidirectional": (
        "Row = the token doing the looking (query), column = what it looks at (key); "
        "this encoder is bidirectional, so every token may look at every other one."
    ),
    "none": "This architecture has no attention weights to show.",
    "scan": scan.HELP + "\n\n" + scan.DELTA_HELP,
    **{f"translation-{kind}": text for kind, text in translation.KIND_HELP.items()},
}
HEAD_INFO = "each head has its own pattern"
NO_HEADS_INFO = "this architecture has no attention heads"

MASK_HELP = {
    "causal": "Causal: each token may look at itself and the tokens before it, never ahead.",
    "sliding": "Sliding window: causal, and only the last {w} tokens (this layer's window).",
    "bidirectional": "Bidirectional: every token may look at every token, before and after.",
    "cross": "Cross-attention: every translation step may look at every source token.",
    "scan": "No attention mask: the recurrence is causal by construction (each state mixes only earlier tokens).",
}


def head_info(analysis: Analysis) -> str:
    """The Head slider's explanation: what a head is, or why there is none."""
    if analysis.spec.has_heads:
        return HEAD_INFO
    return scan.HEAD_INFO if analysis.scan is not None else NO_HEADS_INFO


def attention_help(analysis: Analysis, kind: str | None = None) -> str:
    """How to read the heatmap for this family and kind, or why there is none."""
    if analysis.scan is not None:
        return ATTENTION_HELP["scan"]
    if analysis.translation is not None:
        return ATTENTION_HELP[f"translation-{analysis.kind(kind)}"]
    if analysis.attentions is None:
        return ATTENTION_HELP["none"]
    return ATTENTION_HELP["causal" if analysis.causal else "bidirectional"]


def attention_figure(analysis: Analysis | None, layer: int, head: int, kind: str | None = None) -> go.Figure | None:
    """The heatmap of one layer and head (of ``kind``, for an encoder-decoder) from the cached trace.

    A state-space model has no heads: its hidden attention of ``layer`` (``head`` is ignored).
    None before a Run or without attention; ValueError for a layer, head or kind out of range.
    """
    if analysis is None:
        return None
    if analysis.scan is not None:
        return scan.attention_figure(analysis.scan, analysis.labels, layer)
    if analysis.attentions is None:
        return None
    kind = analysis.kind(kind)
    layer = analysis.check_layer(layer, kind)
    head = check(head, analysis.n_head, "head")
    if analysis.translation is not None:
        return translation.attention_figure(analysis, kind, layer, head)
    title = f"Layer {layer}, head {head} of {analysis.n_layer} × {analysis.n_head}"
    return attention_heatmap(analysis.attentions[layer][head], analysis.labels, analysis.labels, title=title)


class KindSwitch(NamedTuple):
    """What switching an encoder-decoder's attention kind redraws."""

    layer: int  # clamped into the kind's layers
    n_layer: int  # the kind's layers (0 before a Run)
    figure: go.Figure | None
    help: str  # markdown


def attention_kind(analysis: Analysis | None, kind: str | None, layer: int, head: int) -> KindSwitch:
    """Switch an encoder-decoder's attention kind: the layer is clamped into the new kind's range
    (a T5 decoder may be deeper than its encoder). Other families have one kind and keep their
    view. ValueError for an unknown kind."""
    if analysis is None:
        return KindSwitch(0, 0, None, "")
    kind = analysis.kind(kind)
    n = analysis.layer_count(kind)
    layer = clamp(layer or 0, n)
    fig = attention_figure(analysis, layer, clamp(head or 0, analysis.n_head), kind)
    return KindSwitch(layer, n, fig, attention_help(analysis, kind))


def attention_maps(analysis: Analysis, kind: str | None = None) -> Tensor | None:
    """Every layer's and head's attention of ``kind`` as one (L, H, Tq, Tk) tensor (a state-space
    model: its hidden attention as (L, 1, T, T)); None without attention."""
    if analysis.scan is not None:
        return torch.stack(analysis.scan.hidden_attention)[:, None]
    kind = analysis.kind(kind)
    if analysis.translation is not None and kind != "encoder":
        t = analysis.translation
        return torch.stack(t.decoder_attentions if kind == "decoder" else t.cross_attentions)
    return torch.stack(analysis.attentions) if analysis.attentions else None


def grid_figure(analysis: Analysis | None, layer: int, head: int, kind: str | None = None) -> go.Figure | None:
    """Thumbnails of every layer × head (of ``kind``), the chosen one framed; None without attention."""
    if analysis is None:
        return None
    maps = attention_maps(analysis, kind)
    if maps is None:
        return None
    scanned = analysis.scan is not None
    name = "hidden attention" if scanned else translation.KIND_NAMES.get(analysis.kind(kind), "attention")
    title = f"Every layer × head: {name} (rows = layers, 0 at the top)"
    selected = (int(layer), 0 if scanned else int(head))
    return attention_grid(maps, selected=selected, title=title, col_name="channel mean" if scanned else "head")


def mask_figure(analysis: Analysis | None, layer: int, kind: str | None = None) -> tuple[go.Figure | None, str]:
    """The mask pattern the architecture applies in ``layer`` (of ``kind``) and a sentence on it."""
    if analysis is None:
        return None, ""
    kind = analysis.kind(kind)
    t = analysis.translation
    if t is not None and kind != "encoder":
        queries, keys = t.labels, (t.input_labels if kind == "decoder" else analysis.labels)
    else:
        queries = keys = analysis.labels
    window = None
    if analysis.windows and 0 <= int(layer) < len(analysis.windows):
        window = analysis.windows[int(layer)]
    pattern, help_text = _mask_pattern(analysis, kind, window)
    q, k = torch.arange(len(queries)), torch.arange(len(keys))
    allowed = attention_mask(q, k, causal=pattern in ("causal", "sliding"), window=window)
    if allowed is None:
        allowed = torch.ones(len(queries), len(keys), dtype=torch.bool)
    title = f"Mask pattern: {pattern}" + (f" (window {window})" if window else "")
    return attention_mask_heatmap(allowed, queries, keys, title=title), help_text


def _mask_pattern(analysis: Analysis, kind: str, window: int | None) -> tuple[str, str]:
    """(pattern name, help) of ``kind``'s mask."""
    if kind == "cross":
        return "cross", MASK_HELP["cross"]
    if analysis.scan is not None:
        return "causal", MASK_HELP["scan"]
    if kind == "encoder" or not analysis.causal:
        return "bidirectional", MASK_HELP["bidirectional"]
    if window is not None:
        return "sliding", MASK_HELP["sliding"].format(w=window)
    return "causal", MASK_HELP["causal"]
