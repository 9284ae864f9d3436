"""Positional encodings, each family's own, and what the position term does to one query's attention.

``encoding_figure(enc)`` draws an ``Encoding`` (``archplay.models.analysis.positions``, or anything
with the same attributes) by its ``kind``:

- ``learned`` / ``sinusoidal``: the table added to the embeddings as a heatmap (positions × dimensions)
  beside the cosine similarity of its rows (positions × positions).
- ``rotary``: the wavelength of each dimension pair's rotation in tokens (log axis), and how far a
  few pairs have turned at each position (the cosine of the angle).
- ``alibi``: the slope of each head, and the bias matrix of one head (query × key).
- ``relative``: the bias matrix of every head as small multiples (T5's buckets).
- ``none``: a figure with the sentence that says so, and no traces.

``effect_figure(effect, key_labels, query)`` draws an ``Effect``: the query's attention weights over
the keys with and without the position term, as paired bars.

Reading the figures back (names are the module's constants):

- table: heatmap ``TABLE`` with ``z`` (n, d) = ``table[:, :MAX_DIMS]``; heatmap ``SIMILARITY`` with
  ``z`` (n, n) = ``similarity``.
- rotary: scatter ``WAVELENGTH``, ``x`` the pair index, ``y`` = ``wavelength``, ``customdata[i]`` =
  ``inv_freq[i]`` (with a second base on the local layers, also scatter ``LOCAL_WAVELENGTH``, ``y`` =
  ``local_wavelength``; with a RoPE scaling, also scatter ``UNSCALED_WAVELENGTH``, ``y`` =
  ``unscaled_wavelength``); one scatter per drawn pair, named ``"pair i"``, ``x`` the positions 0..n-1, ``y`` =
  cos(position × inv_freq[i]).
- alibi: bar ``SLOPES`` (``x`` heads, ``y`` = ``slopes``); heatmap ``"bias, head h"`` ``z`` = ``bias[h]``.
- relative: heatmaps ``"bias, head h"`` ``z`` = ``bias[h]``, one per head (at most ``MAX_HEADS``; more
  heads: only the chosen one).
- effect: bar traces ``WITH`` and ``WITHOUT``, ``x`` the key positions 0..S-1, ``y`` the weights as
  given; ``customdata[j]`` the hover text (escaped key label, weight and score both ways).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style
from archplay.viz.attention import tick_positions, tick_text

TABLE = "position table"
SIMILARITY = "similarity"
WAVELENGTH = "wavelength"
LOCAL_WAVELENGTH = "wavelength on the local layers"  # rotary with a second base (Gemma 3, ModernBERT)
UNSCALED_WAVELENGTH = "without the scaling"  # rotary with a RoPE scaling (yarn, longrope, ...): plain RoPE's
SHOWN = "pairs drawn"
SLOPES = "slopes"
WITH = "with positions"
WITHOUT = "without positions"

MAX_DIMS = 256  # dimensions of a table drawn (a GPT-2 XL's 1,600 would be a megabyte of numbers)
MAX_HEADS = 16  # small multiples of the relative bias; more heads: only the chosen one
PAIRS_SHOWN = 4  # rotary pairs whose turning is drawn
MAX_TICKS = 40
SUBTITLE_WIDTH = 120  # characters of a subtitle line
NOTE_WIDTH = 80  # characters of a line of a note figure
DIVERGING = "RdBu"  # reversed where used: red positive, blue negative, white 0
WITH_COLOUR = style.FINAL
WITHOUT_COLOUR = style.RAW
HEAD_COLOUR = style.THRESHOLD  # the chosen head's slope

KIND_TITLES = {
    "learned": "Learned position embeddings",
    "sinusoidal": "Sinusoidal position embeddings",
    "rotary": "Rotary position embeddings (RoPE)",
    "alibi": "ALiBi: a distance penalty on the scores",
    "relative": "T5 relative position buckets",
    "none": "No position term",
}


def encoding_figure(enc, *, head: int = 0, title: str | None = None) -> go.Figure:
    """The figure of ``enc`` (an ``Encoding``) for its kind; ``head`` picks the bias matrix shown
    (alibi) or highlighted (relative)."""
    kind = getattr(enc, "kind", None)
    draw = {"learned": _table, "sinusoidal": _table, "rotary": _rotary, "alibi": _alibi, "relative": _relative,
            "none": _none}.get(kind)  # fmt: skip
    if draw is None:
        raise ValueError(f"unknown position encoding {kind!r}")
    title = title if title is not None else KIND_TITLES[kind]
    return draw(enc, int(head), title)


def note_figure(text: str, *, title: str = "", height: int = 220) -> go.Figure:
    """A figure that only says ``text`` (escaped), for a view with nothing to draw."""
    hidden = dict(visible=False, range=[0, 1], fixedrange=True)
    lines = "<br>".join(style.safe_label(line) for line in textwrap.wrap(text, NOTE_WIDTH))
    note = dict(text=lines, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=15),
                align="center")  # fmt: skip
    return style.figure(data=[], layout=style.base_layout(title, height=height, xaxis=hidden, yaxis=hidden,
                                                          annotations=[note], margin=dict(l=30, r=30, t=60, b=30)))


# --------------------------------------------------------------------------- the kinds


def _table(enc, head: int, title: str) -> go.Figure:
    table, sim = style.to_numpy(enc.table), style.to_numpy(enc.similarity)  # (n, D), (n, n)
    n, D = table.shape
    d = min(D, MAX_DIMS)
    shown = table[:, :d]
    top = float(np.abs(shown).max()) or 1.0
    pos = np.arange(n)
    dims = "dimension" if d == D else f"dimension (the first {d} of {D})"
    ticks = _position_ticks(n)
    data = [
        dict(type="heatmap", name=TABLE, z=shown, x=np.arange(d), y=pos, xaxis="x", yaxis="y",
             colorscale=DIVERGING, reversescale=True, zmin=-top, zmax=top, zmid=0,
             hovertemplate="position %{y} · dimension %{x}<br>value %{z:.3f}<extra></extra>",
             colorbar=dict(title=dict(text="value"), x=0.555, thickness=10, len=0.9)),
        dict(type="heatmap", name=SIMILARITY, z=sim, x=pos, y=pos, xaxis="x2", yaxis="y2",
             colorscale=DIVERGING, reversescale=True, zmin=-1, zmax=1, zmid=0,
             hovertemplate="positions %{y} and %{x}<br>cosine similarity %{z:.3f}<extra></extra>",
             colorbar=dict(title=dict(text="cosine"), x=1.0, thickness=10, len=0.9)),
    ]  # fmt: skip
    axis = dict(showgrid=False, zeroline=False)
    layout = dict(
        xaxis=dict(axis, domain=[0.0, 0.53], title_text=dims),
        yaxis=dict(axis, autorange="reversed", title_text="position", **ticks),
        xaxis2=dict(axis, domain=[0.64, 0.975], title_text="position", **ticks),
        yaxis2=dict(axis, anchor="x2", autorange="reversed", **ticks),
        annotations=[_header("x", "the vector added at each position"),
                     _header("x2", "how alike two positions' vectors are")],
    )  # fmt: skip
    return style.figure(data=data, layout=_layout(title, enc, _square_height(n), plot_bgcolor="white", **layout))


def _rotary(enc, head: int, title: str) -> go.Figure:
    inv, wave = style.to_numpy(enc.inv_freq).astype(np.float64), style.to_numpy(enc.wavelength).astype(np.float64)
    P, n = len(inv), int(enc.n)
    pairs = np.arange(P)
    shown = np.unique(np.linspace(0, P - 1, min(PAIRS_SHOWN, P)).round().astype(int))
    colours = [style.EXPERT_COLOURS[i % len(style.EXPERT_COLOURS)] for i in range(len(shown))]
    data = [dict(type="scatter", name=WAVELENGTH, x=pairs, y=wave, customdata=inv, mode="lines+markers",
                 line=dict(color=style.RAW, width=1.5), marker=dict(size=5, color=style.RAW), xaxis="x", yaxis="y",
                 showlegend=False,
                 hovertemplate="pair %{x}<br>θ = %{customdata:.4g} rad per token<br>"
                               "a full turn every %{y:,.1f} tokens<extra></extra>")]  # fmt: skip
    local = getattr(enc, "local_wavelength", None)
    if local is not None:  # a second base on the local layers (Gemma 3, ModernBERT): both curves, named
        local = style.to_numpy(local).astype(np.float64)
        data[0]["showlegend"] = True  # "wavelength" (the global layers') beside the local layers' one
        data.append(dict(type="scatter", name=LOCAL_WAVELENGTH, x=pairs, y=local,
                         customdata=style.to_numpy(enc.local_inv_freq).astype(np.float64), mode="lines",
                         line=dict(color=style.TEMPERED, width=1.5, dash="dash"), xaxis="x", yaxis="y",
                         showlegend=True, hovertemplate="pair %{x} on the local layers<br>θ = %{customdata:.4g} rad "
                         "per token<br>a full turn every %{y:,.1f} tokens<extra></extra>"))  # fmt: skip
        wave_all = np.concatenate([wave, local])
    else:
        wave_all = wave
    plain = getattr(enc, "unscaled_wavelength", None)
    if plain is not None:  # a RoPE scaling (yarn, longrope, ...): plain RoPE's wavelengths beside the scaled ones
        plain = style.to_numpy(plain).astype(np.float64)
        data[0]["showlegend"] = True
        data.append(dict(type="scatter", name=UNSCALED_WAVELENGTH, x=pairs, y=plain, mode="lines",
                         line=dict(color=style.BALANCED, width=1.5, dash="dot"), xaxis="x", yaxis="y",
                         showlegend=True, hovertemplate="pair %{x} without the scaling<br>a full turn every "
                         "%{y:,.1f} tokens<extra></extra>"))  # fmt: skip
        wave_all = np.concatenate([wave_all, plain])
    data.append(dict(type="scatter", name=SHOWN, x=shown, y=wave[shown], mode="markers", xaxis="x", yaxis="y",
                     marker=dict(size=11, color=colours, line=dict(color="white", width=1)), showlegend=False,
                     hoverinfo="skip"))  # the pairs drawn on the right, in their colours
    for i, c in zip(shown, colours):
        pos = np.arange(n)
        angle = pos * inv[i]
        degrees = np.degrees(angle) % 360
        data.append(dict(type="scatter", name=f"pair {int(i)}", x=pos, y=np.cos(angle), customdata=degrees,
                         mode="lines+markers" if n <= 64 else "lines", line=dict(color=c, width=2),
                         marker=dict(size=4), xaxis="x2", yaxis="y2", legendgroup=str(i),
                         hovertemplate=f"pair {int(i)} · position %{{x}}<br>turned %{{customdata:.0f}}° "
                                       f"(cos %{{y:.2f}})<extra></extra>"))  # fmt: skip
    span = [math.floor(math.log10(max(wave_all.min(), 1e-3))), math.ceil(math.log10(max(wave_all.max(), 10)))]
    layout = dict(
        xaxis=dict(domain=[0.0, 0.42], title_text="dimension pair (fast → slow)", zeroline=False),
        yaxis=dict(type="log", title_text="wavelength (tokens per full turn)", range=span, zeroline=False),
        xaxis2=dict(domain=[0.55, 1.0], title_text="position", zeroline=False),
        yaxis2=dict(anchor="x2", range=[-1.1, 1.1], title_text="cos(position × θ)", zeroline=False),
        shapes=[dict(type="line", xref="x domain", x0=0, x1=1, yref="y", y0=n, y1=n,
                     line=dict(color=style.REMOVED, width=1, dash="dash"))],
        annotations=[_header("x", "each pair turns at its own speed"),
                     _header("x2", "how far a few pairs have turned"),
                     dict(text=f"{n} positions shown", xref="x domain", x=1, xanchor="right", yref="y", y=math.log10(n),
                          yanchor="bottom", showarrow=False, font=dict(size=11, color=style.REMOVED))],
        legend=dict(orientation="h", x=0.55, y=-0.22, xanchor="left"),
    )  # fmt: skip
    return style.figure(data=data, layout=_layout(title, enc, 420, **layout))


def _alibi(enc, head: int, title: str) -> go.Figure:
    slopes, bias = style.to_numpy(enc.slopes), style.to_numpy(enc.bias)  # (H,), (H, n, n)
    H, n = len(slopes), bias.shape[-1]
    head = _head(head, H)
    colours = [HEAD_COLOUR if h == head else style.RAW for h in range(H)]
    low = float(bias[head].min()) or -1.0
    ticks = _position_ticks(n)
    data = [
        dict(type="bar", name=SLOPES, x=np.arange(H), y=slopes, marker=dict(color=colours), xaxis="x", yaxis="y",
             hovertemplate="head %{x}: −%{y:.4g} per token of distance<extra></extra>", showlegend=False),
        dict(type="heatmap", name=f"bias, head {head}", z=bias[head], x=np.arange(n), y=np.arange(n), xaxis="x2",
             yaxis="y2", colorscale="Reds", reversescale=True, zmin=low, zmax=0,
             hovertemplate="query %{y} · key %{x}<br>bias %{z:.3f}<extra></extra>",
             colorbar=dict(title=dict(text="bias"), thickness=10, len=0.9, x=0.95)),
    ]  # fmt: skip
    layout = dict(
        xaxis=dict(domain=[0.0, 0.36], title_text="head", tickmode="array", tickvals=list(range(H)), zeroline=False),
        yaxis=dict(title_text="slope m (penalty per token)", zeroline=False),
        xaxis2=dict(domain=[0.5, 0.93], title_text="key position", showgrid=False, zeroline=False, **ticks),
        yaxis2=dict(anchor="x2", title_text="query position", autorange="reversed", showgrid=False, zeroline=False,
                    **ticks),
        annotations=[_header("x", "steep heads look near, gentle heads far"),
                     _header("x2", f"head {head}: −m · distance, added to the scores")],
    )  # fmt: skip
    return style.figure(data=data, layout=_layout(title, enc, _square_height(n), plot_bgcolor="white", **layout))


def _relative(enc, head: int, title: str) -> go.Figure:
    bias = style.to_numpy(enc.bias)  # (H, n, n)
    H, n = bias.shape[0], bias.shape[-1]
    head = _head(head, H)
    heads = list(range(H)) if H <= MAX_HEADS else [head]
    top = float(np.abs(bias[heads]).max()) or 1.0
    cols = min(len(heads), 4)
    rows = math.ceil(len(heads) / cols)
    panel_px, gap_px = (230 if cols > 2 else 320), 70  # each panel's height, and the room for a header and ticks
    area = rows * panel_px + (rows - 1) * gap_px
    gap_x, gap_y = 0.05, gap_px / area
    width = (0.94 - gap_x * (cols - 1)) / cols
    height = panel_px / area
    data, layout, annotations = [], {}, []
    ticks = _position_ticks(n, max_ticks=6)
    for i, h in enumerate(heads):
        r, c = divmod(i, cols)
        k = "" if i == 0 else str(i + 1)
        x0, y1 = c * (width + gap_x), 1.0 - r * (height + gap_y)
        data.append(dict(type="heatmap", name=f"bias, head {h}", z=bias[h], x=np.arange(n), y=np.arange(n),
                         xaxis=f"x{k}", yaxis=f"y{k}", colorscale=DIVERGING, reversescale=True, zmin=-top,
                         zmax=top, zmid=0, showscale=i == 0,
                         colorbar=dict(title=dict(text="bias"), thickness=10, len=0.9, x=1.0),
                         hovertemplate=f"head {h} · query %{{y}} · key %{{x}}<br>bias %{{z:.3f}}<extra></extra>"))
        layout[f"xaxis{k}"] = dict(domain=[x0, x0 + width], anchor=f"y{k}", showgrid=False, zeroline=False,
                                   title_text="key" if r == rows - 1 else None, **ticks)  # fmt: skip
        layout[f"yaxis{k}"] = dict(domain=[y1 - height, y1], anchor=f"x{k}", autorange="reversed", showgrid=False,
                                   zeroline=False, title_text="query" if c == 0 else None, **ticks)  # fmt: skip
        label = f"<b>head {h}</b>" if h == head else f"head {h}"
        annotations.append(_header(f"x{k}", label, yref=f"y{k} domain"))
    margin = style.MARGIN["t"] + 20 + style.MARGIN["b"]
    return style.figure(data=data, layout=_layout(title, enc, area + margin, plot_bgcolor="white",
                                                  annotations=annotations, **layout))


def _none(enc, head: int, title: str) -> go.Figure:
    note = getattr(enc, "note", "") or "no position term"
    return note_figure(note[:1].upper() + note[1:] + ".", title=title)


# --------------------------------------------------------------------------- the effect on one query


def effect_figure(effect, key_labels: Sequence[str], query: int, *, query_label: str | None = None,
                  title: str | None = None) -> go.Figure:  # fmt: skip
    """Paired bars over the keys: the query's attention weights with (``effect.with_positions``) and
    without (``effect.without_positions``) the position term; the scores the softmax saw in the hover."""
    on, off = style.to_numpy(effect.with_positions).astype(np.float64), style.to_numpy(effect.without_positions)
    off = off.astype(np.float64)
    S = len(on)
    if off.shape != on.shape:
        raise ValueError(f"with and without positions differ in size: {on.shape} and {off.shape}")
    if len(key_labels) != S:
        raise ValueError(f"{len(key_labels)} key labels for {S} keys")
    s_on, s_off = _scores(effect, "logits_with", S), _scores(effect, "logits_without", S)
    keys = [style.safe_label(k) for k in key_labels]
    hover = [f"key {j} ‘{keys[j]}’<br>with positions {on[j]:.3f} (score {_num(s_on[j])})<br>"
             f"without {off[j]:.3f} (score {_num(s_off[j])})" for j in range(S)]  # fmt: skip
    x = np.arange(S)
    bars = [dict(type="bar", name=name, x=x, y=y, marker=dict(color=colour), customdata=hover,
                 hovertemplate="%{customdata}<extra></extra>") for name, y, colour in
            ((WITH, on, WITH_COLOUR), (WITHOUT, off, WITHOUT_COLOUR))]  # fmt: skip
    xt = tick_positions(S, MAX_TICKS)
    text = tick_text(key_labels, xt)
    text = [f"<b>{t}</b>" if int(i) == int(query) else t for i, t in zip(xt, text)]
    label = style.safe_label(query_label if query_label is not None else key_labels[query] if query < S else "")
    moved = float(np.abs(on - off).sum()) / 2  # total variation: the share of attention the positions moved
    title = title or f"Query {int(query)} ‘{label}’: attention with and without the position term"
    layout = dict(
        barmode="group", bargap=0.25, bargroupgap=0.05,
        xaxis=dict(title_text="key token", tickmode="array", tickvals=xt.tolist(), ticktext=text,
                   tickangle=-45 if len(xt) > 12 else 0, zeroline=False),
        yaxis=dict(title_text="attention weight", rangemode="tozero", zeroline=False),
        legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"),
    )  # fmt: skip
    title = f"{title}<br><sup>the positions move {moved:.0%} of this query's attention</sup>"
    return style.figure(data=bars, layout=style.base_layout(title, height=380, **layout))


# --------------------------------------------------------------------------- helpers


def _scores(effect, name: str, S: int) -> np.ndarray:
    value = getattr(effect, name, None)
    return style.to_numpy(value).astype(np.float64) if value is not None else np.full(S, np.nan)


def _num(v: float) -> str:
    if np.isnan(v):
        return "n/a"
    return "masked" if np.isinf(v) else f"{v:.2f}"


def _head(head: int, H: int) -> int:
    if not 0 <= head < H:
        raise ValueError(f"head must be between 0 and {H - 1}, got {head}")
    return head


def _layout(title: str, enc, height: int, **layout) -> dict:
    """The shared layout, the title with the encoding's sentence under it (escaped, wrapped to fit a
    laptop's figure) and the top margin grown to hold it (plus the panels' headings)."""
    note = getattr(enc, "note", "")
    lines = textwrap.wrap(note[:1].upper() + note[1:] + ".", SUBTITLE_WIDTH) if note else []
    title += "".join(f"<br><sup>{style.safe_label(line)}</sup>" for line in lines)
    top = 84 + 22 * len(lines)
    margin = dict(style.MARGIN, t=top)
    height += top - style.MARGIN["t"]
    shift = 40  # px from the top to the anchor (below the page's export buttons; plotly draws the first line above it)
    title = dict(text=title, x=0.02, xanchor="left", y=1 - shift / height, yref="container", yanchor="top")
    return {**style.base_layout("", height=height, margin=margin, **layout), "title": title}


def _header(xaxis: str, text: str, yref: str = "paper") -> dict:
    """A small heading above the panel of ``xaxis``."""
    return dict(text=text, xref=f"{xaxis} domain", x=0.5, xanchor="center", yref=yref, y=1.0, yanchor="bottom",
                yshift=4, showarrow=False, font=dict(size=12))  # fmt: skip


def _position_ticks(n: int, max_ticks: int = 16) -> dict:
    """Ticks at every 1, 2, 5, 10, 20, … positions: the smallest step that gives at most ``max_ticks``."""
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 10**9) if n / s <= max_ticks)
    ticks = list(range(0, n, step))
    return dict(tickmode="array", tickvals=ticks, ticktext=[str(t) for t in ticks])


def _square_height(n: int) -> int:
    return int(np.clip(300 + 4 * n, 420, 620))


__all__ = ["KIND_TITLES", "SIMILARITY", "SLOPES", "TABLE", "UNSCALED_WAVELENGTH", "WAVELENGTH", "WITH", "WITHOUT",
           "effect_figure", "encoding_figure", "note_figure"]  # fmt: skip
