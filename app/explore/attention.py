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
from archplay.viz.ssm import hidden_attention_heatmap

from ..session import LOCAL_PATTERNS, Analysis
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
    "strided": "Strided (Sparse Transformer): causal; the last {w} tokens, and every token a multiple of {w} back.",
    "block": "Block-local: causal, and only the tokens of the query's own block of {w}.",
    "bidirectional sliding": "Bidirectional sliding window: the tokens less than {w} positions away, either side.",
    "bidirectional strided": "Bidirectional strided: the tokens less than {w} away, and those a multiple of {w} away, either side.",
    "bidirectional block": "Block-local: every token of the query's own block of {w}, before and after.",
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
    text = ATTENTION_HELP["causal" if analysis.causal else "bidirectional"]
    if analysis.hybrid:  # say which layers attend and what the others' maps are
        text += (f"\n\nThis hybrid mixes its tokens two ways. Layers {_listed(analysis.blocks)} attend: a map per "
                 f"head. Layers {_listed(analysis.mamba.blocks)} are Mamba layers: their map is the scan's **hidden "
                 "attention**, how much each earlier token still counts in a token's output (mean |α| over the "
                 "channels, the same for every head; the rows need not sum to 1). **Inside a step** takes a scan "
                 "apart (Δ, the state, the readout).")  # fmt: skip
    elif analysis.blocks is not None:
        text += f"\n\nOnly layers {_listed(analysis.blocks)} of this model attend: the Layer slider steps through those."
    return text


def _listed(layers: list[int]) -> str:
    return ", ".join(map(str, layers))


def attention_figure(
    analysis: Analysis | None, layer: int, head: int, kind: str | None = None, *, cells: bool = True
) -> go.Figure | None:
    """The heatmap of one layer and head (of ``kind``, for an encoder-decoder) from the cached trace.

    A state-space model has no heads: its hidden attention of ``layer`` (``head`` is ignored).
    None before a Run or without attention; ValueError for a layer, head or kind out of range.
    ``cells=False``: without the per-cell hover labels (the page's script makes them).
    """
    if analysis is None:
        return None
    if analysis.scan is not None:
        return scan.attention_figure(analysis.scan, analysis.labels, layer, cells=cells)
    if analysis.attentions is None:
        return None
    kind = analysis.kind(kind)
    layer = analysis.check_layer(layer, kind)
    head = check(head, analysis.n_head, "head")
    if analysis.hybrid:  # the model's layer: an attention layer's head, or a Mamba layer's hidden attention
        what, entry = analysis.part(layer)
        title = layer_titles(analysis)[layer].format(head=head)
        if what == "scan":
            return hidden_attention_heatmap(analysis.mamba.hidden_attention[entry], analysis.labels, title=title,
                                            cells=cells)  # fmt: skip
        return attention_heatmap(analysis.attentions[entry][head], analysis.labels, analysis.labels, title=title,
                                 cells=cells)  # fmt: skip
    title = title_pattern(analysis, kind).format(layer=layer, head=head)
    if analysis.blocks is not None:  # only some layers attend: the model's own layer number, and which it is
        title = (f"Layer {analysis.blocks[layer]} (attention layer {layer} of {len(analysis.blocks)}), head {head} "
                 f"of {analysis.n_head}")  # fmt: skip
    if analysis.translation is not None:
        return translation.attention_figure(analysis, kind, layer, head, title=title, cells=cells)
    return attention_heatmap(analysis.attentions[layer][head], analysis.labels, analysis.labels, title=title,
                             cells=cells)  # fmt: skip


def title_pattern(analysis: Analysis, kind: str | None = None) -> str:
    """The heatmap's title with ``{layer}`` and ``{head}`` to fill in (the page fills them in too)."""
    if analysis.scan is not None:
        return scan.TITLE.format(n_layer=analysis.scan.n_layer, d_inner=analysis.scan.d_inner)
    kind = analysis.kind(kind)
    if analysis.hybrid:  # each layer's own title: ``layer_titles``
        return f"Layer {{layer}} of {analysis.layer_count(kind)}, head {{head}}"
    if analysis.blocks is not None:  # only some layers attend: say which of the model's layers they are
        return (f"Attention layer {{layer}} of {len(analysis.blocks)} (model layers {_listed(analysis.blocks)}), "
                f"head {{head}} of {analysis.n_head}")  # fmt: skip
    of = f"of {analysis.layer_count(kind)} × {analysis.n_head}"
    if analysis.translation is not None:
        return f"{translation.KIND_NAMES[kind]}: layer {{layer}}, head {{head}} {of}"
    return f"Layer {{layer}}, head {{head}} {of}"


def layer_titles(analysis: Analysis) -> list[str] | None:
    """A hybrid's heatmap title per layer, with ``{head}`` to fill in (the page fills it too); None otherwise."""
    if not analysis.hybrid:
        return None
    n, titles = analysis.layer_count(), []
    for layer in range(n):
        if analysis.part(layer)[0] == "attention":
            titles.append(f"Layer {layer} of {n} (attention), head {{head}} of {analysis.n_head}")
        else:
            titles.append(f"Layer {layer} of {n} (Mamba): hidden attention, mean |α| over {analysis.mamba.d_inner} "
                          "channels")  # fmt: skip
    return titles


def axis_labels(analysis: Analysis, kind: str | None = None) -> tuple[list[str], list[str]]:
    """(query labels, key labels) of ``kind``'s maps."""
    kind = analysis.kind(kind)
    t = analysis.translation
    if t is not None and kind != "encoder":
        return t.labels, (t.input_labels if kind == "decoder" else analysis.labels)
    return analysis.labels, analysis.labels


class KindSwitch(NamedTuple):
    """What switching an encoder-decoder's attention kind redraws."""

    layer: int  # clamped into the kind's layers
    n_layer: int  # the kind's layers (0 before a Run)
    figure: go.Figure | None
    help: str  # markdown


def attention_kind(analysis: Analysis | None, kind: str | None, layer: int, head: int, *, draw: bool = True
                   ) -> KindSwitch:  # fmt: skip
    """Switch an encoder-decoder's attention kind: the layer is clamped into the new kind's range
    (a T5 decoder may be deeper than its encoder). Other families have one kind and keep their
    view. ValueError for an unknown kind. ``draw=False``: no figure (the page draws its own)."""
    if analysis is None:
        return KindSwitch(0, 0, None, "")
    kind = analysis.kind(kind)
    n = analysis.layer_count(kind)
    layer = clamp(layer or 0, n)
    fig = attention_figure(analysis, layer, clamp(head or 0, analysis.n_head), kind) if draw else None
    return KindSwitch(layer, n, fig, attention_help(analysis, kind))


def attention_maps(analysis: Analysis, kind: str | None = None) -> Tensor | None:
    """Every layer's and head's attention of ``kind`` as one (L, H, Tq, Tk) tensor (a state-space
    model: its hidden attention as (L, 1, T, T)); None without attention."""
    if analysis.scan is not None:
        return torch.stack(analysis.scan.hidden_attention)[:, None]
    if analysis.hybrid:  # every layer: an attention layer's heads; a Mamba layer's hidden attention in each column
        H, maps = analysis.n_head, []
        for layer in range(analysis.layer_count()):
            what, entry = analysis.part(layer)
            m = analysis.attentions[entry] if what == "attention" else analysis.mamba.hidden_attention[entry]
            maps.append(m.float().expand(H, -1, -1))
        return torch.stack(maps)
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
    if analysis.hybrid:
        name = f"attention; Mamba layers {_listed(analysis.mamba.blocks)}: hidden attention, alike in every column"
    title = f"Every layer × head: {name} (rows = layers, 0 at the top)"
    selected = (int(layer), 0 if scanned else int(head))
    return attention_grid(maps, selected=selected, title=title, col_name="channel mean" if scanned else "head")


def mask_figure(analysis: Analysis | None, layer: int, kind: str | None = None) -> tuple[go.Figure | None, str]:
    """The mask pattern the architecture applies in ``layer`` (of ``kind``) and a sentence on it."""
    if analysis is None:
        return None, ""
    kind = analysis.kind(kind)
    queries, keys = axis_labels(analysis, kind)
    pattern, window, help_text = mask_rule(analysis, kind, layer)
    allowed = mask_matrix(pattern, window, len(queries), len(keys))
    return attention_mask_heatmap(allowed, queries, keys, title=mask_title(pattern, window)), help_text


CAUSAL_PATTERNS = ("causal", "sliding", "strided", "block", "scan")  # nothing above the diagonal


def local_pattern(pattern: str) -> str | None:
    """The local pattern a mask rule names ("sliding", "strided", "block"), or None for full attention."""
    last = pattern.split()[-1]
    return last if last in LOCAL_PATTERNS else None


def mask_matrix(pattern: str, window: int | None, n_queries: int, n_keys: int) -> Tensor:
    """Which keys each query may see under ``pattern`` (bool (Tq, Tk)); the page computes the same."""
    q, k = torch.arange(n_queries), torch.arange(n_keys)
    local = local_pattern(pattern) if window else None
    allowed = attention_mask(q, k, causal=pattern in CAUSAL_PATTERNS, window=window if local else None,
                             pattern=local or "full")  # fmt: skip
    return torch.ones(n_queries, n_keys, dtype=torch.bool) if allowed is None else allowed


def mask_title(pattern: str, window: int | None) -> str:
    """The mask figure's title."""
    if pattern == "scan":
        return "No attention mask: the scan only runs forward"
    return f"Mask pattern: {pattern}" + (f" (window {window})" if window else "")


def mask_rule(analysis: Analysis, kind: str, layer: int) -> tuple[str, int | None, str]:
    """(pattern, window, help) of ``kind``'s mask in ``layer``: "causal", "sliding", "bidirectional",
    "cross" or, for a state-space model, "scan" (no mask: causal by construction)."""
    window, local = None, None
    if analysis.windows and 0 <= int(layer) < len(analysis.windows):
        window = analysis.windows[int(layer)]
        local = (analysis.patterns[int(layer)] if analysis.patterns else None) or ("sliding" if window else None)
    if kind == "cross":
        return "cross", None, MASK_HELP["cross"]
    if analysis.scan is not None or (analysis.hybrid and analysis.part(int(layer))[0] == "scan"):
        return "scan", None, MASK_HELP["scan"]
    if kind == "encoder" or not analysis.causal:
        if window and local:
            pattern = f"bidirectional {local}"
            return pattern, window, MASK_HELP[pattern].format(w=window)
        return "bidirectional", None, MASK_HELP["bidirectional"]
    if window and local:
        return local, window, MASK_HELP[local].format(w=window)
    return "causal", None, MASK_HELP["causal"]
