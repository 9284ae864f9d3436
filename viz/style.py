"""Shared look for every archplay figure: template, colours, margins and small data helpers."""

from __future__ import annotations

import html
import os

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import get_colorscale

TEMPLATE = "plotly_white"
FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=13)
MARGIN = dict(l=70, r=30, t=80, b=70)

# Stage colours for the sampling figure; FADED_ALPHA dims bars of tokens that sampling removed.
RAW = "#7f8fa6"
TEMPERED = "#f5a623"
FINAL = "#2e86de"
KEPT = "#27ae60"
REMOVED = "#c0392b"
THRESHOLD = "#8e44ad"
FADED_ALPHA = 0.25

# Attention: a sequential scale whose low end is white, so masked zeros read as empty.
ATTENTION_SCALE = "Blues"
MASK_OFF = "#e5e7eb"  # masked
MASK_ON = "#2e86de"  # may attend
GOLD = "#e8590c"  # the frame of a cell the story world's truth names (a pronoun's gold antecedent)

# Mixture of experts: router probabilities on a sequential scale; each expert has its own
# colour (chips, load bars, tick labels), cycling after ten.
ROUTER_SCALE = "Purples"
CHOSEN = "#1f2937"  # the ring around a chosen (token, expert) cell
EXPERT_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
BALANCED = "#6b7280"  # the dashed uniform-load line

# State-space model: the step size Δ per token.
DELTA = "#e67e22"


def expert_colour(expert: int) -> str:
    """The colour of expert ``expert`` (``#rrggbb``); the palette repeats after ten experts."""
    return EXPERT_COLOURS[int(expert) % len(EXPERT_COLOURS)]


def to_numpy(x) -> np.ndarray:
    """A numpy array from a torch tensor (as float32) or anything array-like (unchanged dtype)."""
    if hasattr(x, "detach"):
        if x.dtype.is_floating_point:
            return x.detach().cpu().float().numpy()
        return x.detach().cpu().numpy()
    return np.asarray(x)


def safe_label(label) -> str:
    """A token label as plotly should receive it: ``<``, ``>`` and ``&`` escaped as HTML entities.

    Plotly renders tick and hover text as a small HTML subset, so a token such as ``<br>`` would
    otherwise become a line break. The entities display as the original characters.
    """
    return html.escape(str(label), quote=False)


def short_label(label: str, limit: int = 14) -> str:
    """``label`` cut to ``limit`` characters with an ellipsis, for crowded tick labels."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def rgba(hex_colour: str, alpha: float) -> str:
    """``#rrggbb`` as an ``rgba(...)`` string with the given opacity."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


_TEMPLATE = pio.templates[TEMPLATE].to_plotly_json()  # as plain data, converted once (not per figure)


def base_layout(title: str, **layout) -> dict:
    """The shared layout (template, font, title, margins) as a dict; ``layout`` adds or overrides."""
    base = dict(
        template=_TEMPLATE,  # the template itself, not its name: ``figure`` does not expand names
        font=FONT,
        title=dict(text=title, x=0.02, xanchor="left"),
        margin=MARGIN,
        hoverlabel=dict(font_size=13),
    )
    return {**base, **layout}


def figure(data: list, layout: dict) -> go.Figure:
    """``go.Figure(data, layout)`` without plotly's per-property validation.

    Validation deep-copies every trace and layout value (about 20 ms for the sampling figure,
    most of a slider redraw) and adds nothing to figures built, as here, from fixed code. The
    JSON sent to the browser is the same. ``ARCHPLAY_VALIDATE_FIGURES=1`` turns validation back
    on (a test builds every view that way, so an invalid property still fails). ``_validate``
    is plotly's own switch, the one it uses internally.
    """
    if os.environ.get("ARCHPLAY_VALIDATE_FIGURES") == "1":
        return go.Figure(data=data, layout=layout)
    return go.Figure(data=[expand(t) for t in data], layout=expand(layout), _validate=False)


_REAL_UNDERSCORE_KEYS = {"error_x", "error_y", "error_z", "plot_bgcolor", "paper_bgcolor"}


def expand(d):
    """Plotly's "magic underscore" keys spelled out (``title_text="x"`` -> ``title={"text": "x"}``),
    recursively, string titles as ``{"text": …}``, and named colour scales as their colours (plotly.js
    knows only some names):
    validation does both, and ``figure`` skips validation."""
    if not isinstance(d, dict):
        return d
    out: dict = {}
    for key, value in d.items():
        value = expand(value) if isinstance(value, dict) else value
        if key == "colorscale" and isinstance(value, str):
            value = get_colorscale(value)
        if key == "title" and isinstance(value, str):  # the old shorthand; plotly.js 3 wants {"text": …}
            value = {"text": value}
        if "_" in key and key not in _REAL_UNDERSCORE_KEYS and not key.startswith("_"):
            head, rest = key.split("_", 1)
            inner = out.setdefault(head, {})
            if isinstance(inner, dict):
                inner.update(expand({rest: value}))
                continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out
