"""Figures of the Compare view: surprisal per token, each panel's map, and forward latency against length.

Compare shows up to four panels side by side, each about 230 px wide at 1024 px: the panel figures
use short titles wrapped to that width, small tick fonts, tight margins and one height per kind, so
the panels' rows line up and nothing is cut.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style
from archplay.viz.attention import tick_positions

SURPRISAL = "#c0392b"
SERIES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")

# A panel is ~230 px wide at 1024 px: about 34 characters of a 12 px title, 44 of its <sup> lines.
TITLE_CHARS = 34
SUB_CHARS = 44
TITLE_FONT = dict(size=12)
TICK_FONT = dict(size=9)
LINE_PX = 13  # a title's <sup> line
EXPORT_BAR_PX = 24  # the page's export buttons over a figure's top left corner
MAP_HEIGHT = 360  # every panel's map, whatever its shape: the surprisal charts below start level
SURPRISAL_HEIGHT = 320
PANEL_TICKS = 24  # labelled tokens at most on a panel's axis (9 px labels, ~230 px)


def panel_title(title: str, *notes: str) -> str:
    """``title`` and its ``notes`` (smaller, one per line) wrapped to a panel's width: plotly never
    wraps a title, it cuts it at the figure's edge."""
    lines = textwrap.wrap(title, TITLE_CHARS) or [""]
    for n in notes:
        lines += [f"<sup>{part}</sup>" for part in textwrap.wrap(n, SUB_CHARS)]
    return "<br>".join(lines)


def _title_layout(text: str, clear: int) -> dict:
    """A panel title's layout: its last line ``clear`` px above the plot, the lines growing upwards.

    Anchored at the bottom, plotly sets a multi-line title ~13 px lower for each line after the first
    (at the top, as much higher: out of the figure), so the padding makes up for it."""
    pad = clear + LINE_PX * text.count("<br>") + 5
    return dict(text=text, font=TITLE_FONT, x=0.02, xanchor="left", yref="paper", y=1, yanchor="bottom",
                pad=dict(b=pad))  # fmt: skip


def _top_margin(lines: int, clear: int) -> int:
    """Room above the plot for a title of ``lines`` lines (16 px for the first, 13 for each note), below
    the page's export buttons (HTML, SVG, PNG) in the figure's top left corner."""
    return clear + 16 + LINE_PX * (lines - 1) + EXPORT_BAR_PX


def fit_panel_map(fig: go.Figure, title: str, *notes: str, axis_on_top: bool = False) -> go.Figure:
    """``fig`` (a tab's map: attention, router, hidden attention) refitted, in place, to a Compare panel.

    The tabs' maps are drawn for the full width: long titles, axis titles, wide colour bars.
    Here the title is ``panel_title(title, *notes)`` (the notes say what the rows and the colours
    are, in place of axis titles), ticks are small and the height is ``MAP_HEIGHT`` for every
    family. ``axis_on_top``: the x tick labels sit above the map (the router's experts).
    """
    text = panel_title(title, *notes)
    clear = 52 if axis_on_top else 4  # above the tick labels
    fig.update_layout(dict(
        title=_title_layout(text, clear), height=MAP_HEIGHT,
        margin=dict(l=48, r=8, t=_top_margin(text.count("<br>") + 1, clear), b=8 if axis_on_top else 56),
        xaxis=dict(title=dict(text=""), tickfont=TICK_FONT, tickangle=-90),
        yaxis=dict(title=dict(text=""), tickfont=TICK_FONT),
    ))  # fmt: skip
    fig.update_traces(dict(colorbar=dict(title=dict(text=""), thickness=8, tickfont=TICK_FONT, xpad=4)),
                      selector=dict(type="heatmap"))  # fmt: skip
    return fig


def shared_top(bit_lists) -> float | None:
    """One y-axis top for every panel's surprisal: the largest finite value of all, rounded up to a
    whole bit (5 % headroom), so equal bars mean equal surprise; None when nothing was predicted."""
    finite = [b for bits in bit_lists for b in bits if b is not None and math.isfinite(b)]
    if not finite:
        return None
    return float(max(1, math.ceil(max(finite) * 1.05)))


def surprisal_bars(bits, labels, *, title: str = "Surprisal per token", note: str = "", y_max: float | None = None,
                   positions: int | None = None, max_ticks: int = PANEL_TICKS) -> go.Figure:  # fmt: skip
    """Bars of −log₂ p for each token (``bits`` (T,), NaN where the model made no prediction).

    Tall bars are the tokens the model did not see coming. The title's notes give ``note`` and the
    mean over the predicted tokens. ``y`` is ``bits`` as given (NaN stays a gap); x is the token's
    position. Side by side, panels pass one ``y_max`` (bits, see ``shared_top``) and one
    ``positions`` (the x axis spans that many token positions) so their bars compare: the same
    height is the same surprise and position i sits at the same place in every panel.
    """
    bits = style.to_numpy(bits).astype(np.float64).reshape(-1)
    if len(bits) != len(labels):
        raise ValueError(f"{len(bits)} values for {len(labels)} labels")
    x = np.arange(len(bits))
    shown = bits[np.isfinite(bits)]
    mean = f"mean {shown.mean():.2f} bits over {len(shown)} tokens" if len(shown) else "no predictions"
    customdata = [style.safe_label(s) for s in labels]
    bars = dict(type="bar", x=x, y=bits, customdata=customdata, marker=dict(color=SURPRISAL),
                hovertemplate="%{x:d} ‘%{customdata}’<br>%{y:.2f} bits<extra></extra>")  # fmt: skip
    ticks = tick_positions(len(labels), max_ticks).tolist()
    text = panel_title(title, *[n for n in (note, mean) if n])
    xaxis = dict(tickvals=ticks, ticktext=[style.safe_label(style.short_label(labels[i], 8)) for i in ticks],
                 tickangle=-90, tickfont=TICK_FONT)  # fmt: skip
    if positions:
        xaxis["range"] = [-0.5, max(positions, len(bits)) - 0.5]
    yaxis = dict(title=dict(text="bits"), rangemode="tozero")
    if y_max is not None:
        yaxis["range"] = [0.0, float(y_max)]
    clear = 12  # above the top tick label
    top = _top_margin(max(3, text.count("<br>") + 1), clear)  # room for 3 lines in every panel: equal plot heights
    return style.figure(data=[bars], layout=style.base_layout(
        text, height=SURPRISAL_HEIGHT, margin=dict(l=44, r=8, t=top, b=64), xaxis=xaxis, yaxis=yaxis,
    ) | {"title": _title_layout(text, clear)})  # fmt: skip


def latency_chart(series: dict, *, title: str = "Forward latency against input length") -> go.Figure:
    """One line per model, log-log: ``series[name] = (lengths, ms, stretched flags)``.

    On log-log axes a straight line's slope is the growth exponent: 1 linear (an SSM's scan), 2
    quadratic (attention, once the T × T scores dominate; at short lengths fixed per-call costs
    flatten every line). Hollow markers: timed beyond the model's own context on a same-shaped copy.
    Guides for slopes 1 and 2 start from the first series' first point.
    """
    traces = []
    for i, (name, (lengths, ms, stretched)) in enumerate(series.items()):
        colour = SERIES[i % len(SERIES)]
        symbols = ["circle-open" if s else "circle" for s in stretched]
        traces.append(dict(
            type="scatter", mode="lines+markers", name=style.safe_label(name), x=list(lengths), y=list(ms),
            line=dict(color=colour, width=2), marker=dict(symbol=symbols, size=9, color=colour),
            customdata=["beyond its context: a same-shaped copy" if s else "" for s in stretched],
            hovertemplate="%{x} tokens: %{y:.1f} ms<br>%{customdata}<extra>" + style.safe_label(name) + "</extra>",
        ))  # fmt: skip
    if series:
        lengths, ms, _ = next(iter(series.values()))
        x0, y0, x1 = float(lengths[0]), float(ms[0]), float(lengths[-1])
        for slope, dash in ((1, "dot"), (2, "dash")):
            traces.append(dict(
                type="scatter", mode="lines", name=f"∝ length{'²' if slope == 2 else ''}", x=[x0, x1],
                y=[y0, y0 * (x1 / x0) ** slope], line=dict(color=style.BALANCED, dash=dash, width=1),
                hoverinfo="skip",
            ))  # fmt: skip
    return style.figure(data=traces, layout=style.base_layout(
        title, height=420, xaxis=dict(type="log", title="input length (tokens)"),
        yaxis=dict(type="log", title="forward pass (ms)"),
        legend=dict(orientation="h", y=-0.25),
    ))  # fmt: skip
