"""Figures of the Interventions tab: a prediction, the surprisal of every token and the attribution of
one prediction to the input tokens, each with parts of the model switched off beside the unmodified run.

Reading the figures back (names are the module's constants):

- ``prediction_figure``: two horizontal bar traces, ``BEFORE`` ("unmodified") and ``AFTER`` ("with
  parts off"); ``x`` the probabilities, ``y`` the rank 0..n-1 (0 at the top), ``customdata[i]`` =
  ``[label (escaped), token id]``. The shown tokens are the union of both runs' top ``top_n``.
- ``surprisal_figure``: two line traces ``BEFORE`` and ``AFTER``; ``x`` the token positions, ``y`` the
  bits as given (NaN where nothing was predicted: a gap); a marker trace ``KNOCKED`` has the knocked-out
  positions as ``x``.
- ``attribution_figure``: two bar traces, ``GRAD_X_INPUT`` (upper row) and ``KNOCK_OUT`` (lower row),
  ``x`` the input positions, ``y`` the values as given; ``customdata[i]`` the escaped token label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style
from archplay.viz.attention import tick_positions, tick_text

BEFORE = "unmodified"
AFTER = "with parts off"
KNOCKED = "knocked out"
GRAD_X_INPUT = "gradient × input"
KNOCK_OUT = "knock-one-out Δ log-prob"

BEFORE_COLOUR = style.RAW  # grey: the reference
AFTER_COLOUR = style.FINAL  # blue: what the intervention left
KNOCKED_COLOUR = style.REMOVED
KNOCKED_BAND = "rgba(192,57,43,0.10)"
# Diverging, centred at 0: red lowers the prediction's log-probability, blue raises it.
DIVERGING = [[0.0, "#b2182b"], [0.25, "#ef8a62"], [0.5, "#f0f0f0"], [0.75, "#67a9cf"], [1.0, "#2166ac"]]
MAX_TICKS = 40


def prediction_figure(
    before,
    after,
    labels_for: Callable[[list[int]], list[str]] | Sequence[str],
    *,
    top_n: int = 8,
    title: str = "Top predictions",
    subtitle: str = "",
) -> go.Figure:
    """Paired horizontal bars: the probability of each of the likeliest tokens in the unmodified run
    (``before``, (V,)) and with parts switched off (``after``, (V,)).

    The tokens are the union of both runs' ``top_n``, the likeliest (in either run) at the top.
    ``labels_for`` gives display labels for token ids (a function, or a sequence indexed by id)."""
    p0, p1 = _vector(before), _vector(after)
    if p0.shape != p1.shape:
        raise ValueError(f"before and after differ in size: {p0.shape} and {p1.shape}")
    n = min(top_n, len(p0))
    top = np.concatenate([np.argsort(-p0, kind="stable")[:n], np.argsort(-p1, kind="stable")[:n]])
    ids = list(dict.fromkeys(int(i) for i in top))  # the union, in first-seen order
    ids.sort(key=lambda i: -max(p0[i], p1[i]))
    labels = labels_for(ids) if callable(labels_for) else [labels_for[i] for i in ids]
    if len(labels) != len(ids):
        raise ValueError(f"labels_for returned {len(labels)} labels for {len(ids)} ids")
    safe = [style.safe_label(s) for s in labels]
    customdata = [[s, i] for s, i in zip(safe, ids)]
    y = np.arange(len(ids))
    bars = [
        dict(type="bar", orientation="h", name=name, x=p[ids], y=y, customdata=customdata,
             marker=dict(color=colour), text=[f"{v:.0%}" for v in p[ids]], textposition="outside",
             cliponaxis=False, textfont=dict(size=11),
             hovertemplate=f"‘%{{customdata[0]}}’ · id %{{customdata[1]}}<br>{name}: %{{x:.2%}}<extra></extra>")
        for name, p, colour in ((BEFORE, p0, BEFORE_COLOUR), (AFTER, p1, AFTER_COLOUR))
    ]  # fmt: skip
    top_x = float(max(p0[ids].max(), p1[ids].max())) if ids else 1.0
    layout = dict(
        barmode="group", bargap=0.25, bargroupgap=0.05, height=int(np.clip(150 + 34 * len(ids), 320, 720)),
        xaxis=dict(title_text="probability", tickformat=".0%", range=[0, min(1.0, top_x * 1.18 + 0.02)]),
        yaxis=dict(tickmode="array", tickvals=y.tolist(), ticktext=[style.short_label(s, 18) for s in safe],
                   autorange="reversed", automargin=True),
        legend=dict(orientation="h", yref="container", y=0.0, yanchor="bottom", xanchor="center", x=0.5),
        margin=dict(style.MARGIN, l=110, t=90, b=80),
    )  # fmt: skip
    return style.figure(data=bars, layout=style.base_layout(_titled(title, subtitle), **layout))


def surprisal_figure(
    before_bits,
    after_bits,
    labels: Sequence[str],
    *,
    knocked: Sequence[int] = (),
    title: str = "Surprisal per token",
    note: str = "",
    x_title: str = "token (its surprisal when it came)",
) -> go.Figure:
    """−log₂ p of each actual token, unmodified and with parts off, as two lines over the tokens;
    the ``knocked`` positions are shaded and crossed. NaN (no prediction) leaves a gap."""
    b0, b1 = _bits(before_bits), _bits(after_bits)
    if not len(b0) == len(b1) == len(labels):
        raise ValueError(f"{len(b0)} and {len(b1)} values for {len(labels)} labels")
    x = np.arange(len(labels))
    safe = [style.safe_label(s) for s in labels]
    delta = b1 - b0
    customdata = [[s, _fmt(u), _fmt(v), _fmt(d, signed=True)] for s, u, v, d in zip(safe, b0, b1, delta)]
    hover = (f"%{{x}} ‘%{{customdata[0]}}’<br>{BEFORE}: %{{customdata[1]}} bits<br>{AFTER}: %{{customdata[2]}} bits"
             "<br>change: %{customdata[3]} bits<extra></extra>")  # fmt: skip
    lines = [
        dict(type="scatter", mode="lines+markers", name=name, x=x, y=b, customdata=customdata,
             line=dict(color=colour, width=2, dash=dash), marker=dict(size=6, color=colour), hovertemplate=hover)
        for name, b, colour, dash in ((BEFORE, b0, BEFORE_COLOUR, "dot"), (AFTER, b1, AFTER_COLOUR, "solid"))
    ]  # fmt: skip
    knocked = sorted({int(k) for k in knocked if 0 <= int(k) < len(labels)})
    lines.append(dict(
        type="scatter", mode="markers", name=KNOCKED, x=knocked, y=[0.0] * len(knocked),
        customdata=[safe[k] for k in knocked], marker=dict(symbol="x-thin", size=12, color=KNOCKED_COLOUR,
                                                           line=dict(width=2, color=KNOCKED_COLOUR)),
        hovertemplate="%{x} ‘%{customdata}’ knocked out<extra></extra>", showlegend=bool(knocked),
    ))  # fmt: skip
    shapes = [dict(type="rect", xref="x", yref="paper", x0=k - 0.45, x1=k + 0.45, y0=0, y1=1, line=dict(width=0),
                   fillcolor=KNOCKED_BAND, layer="below") for k in knocked]  # fmt: skip
    both = np.concatenate([b0, b1])
    shown = both[np.isfinite(both)]
    summary = _mean_line(b0, b1)
    ticks = tick_positions(len(labels), MAX_TICKS)
    layout = dict(
        height=380, shapes=shapes,
        xaxis=dict(title_text=x_title, tickmode="array", tickvals=ticks.tolist(), ticktext=tick_text(labels, ticks),
                   tickangle=-45 if len(ticks) > 10 else 0, range=[-0.5, len(labels) - 0.5], zeroline=False),
        yaxis=dict(title_text="bits", rangemode="tozero", range=[0, float(max(1.0, shown.max() * 1.08))]
                   if len(shown) else None),
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
        margin=dict(style.MARGIN, t=100, b=90),
    )  # fmt: skip
    if layout["yaxis"]["range"] is None:
        del layout["yaxis"]["range"]
    return style.figure(data=lines, layout=style.base_layout(_titled(title, summary, note), **layout))


def attribution_figure(
    grad_x_input,
    knock_out,
    labels: Sequence[str],
    *,
    title: str = "Attribution of the prediction to each input token",
    note: str = "",
) -> go.Figure:
    """Two aligned rows of bars over the input tokens: gradient × input (upper) and the knock-one-out
    difference in the prediction's log-probability (lower), each coloured on a diverging scale
    centred at 0 (blue: the token raises the prediction, red: lowers it); hover for exact values."""
    g, k = _bits(grad_x_input), _bits(knock_out)
    if not len(g) == len(k) == len(labels):
        raise ValueError(f"{len(g)} and {len(k)} values for {len(labels)} labels")
    x = np.arange(len(labels))
    safe = [style.safe_label(s) for s in labels]
    bars = []
    for name, values, axis, what in ((GRAD_X_INPUT, g, "", "Σ gradient · embedding"),
                                     (KNOCK_OUT, k, "2", "log p without it − log p")):  # fmt: skip
        finite = values[np.isfinite(values)]
        span = float(np.abs(finite).max()) if len(finite) and np.abs(finite).max() > 0 else 1.0
        bars.append(dict(
            type="bar", name=name, x=x, y=values, customdata=safe, xaxis=f"x{axis}", yaxis=f"y{axis}",
            marker=dict(color=values, colorscale=DIVERGING, cmin=-span, cmax=span, cmid=0.0, showscale=False,
                        line=dict(width=0.5, color="rgba(100,100,100,0.6)")),
            hovertemplate=f"%{{x}} ‘%{{customdata}}’<br>{name}: %{{y:.5g}}<br>({what})<extra></extra>",
            showlegend=False,
        ))  # fmt: skip
    ticks = tick_positions(len(labels), MAX_TICKS)
    angle = -45 if len(ticks) > 10 else 0
    shared_x = dict(tickmode="array", tickvals=ticks.tolist(), range=[-0.5, len(labels) - 0.5], zeroline=False)
    layout = dict(
        height=460,
        xaxis=dict(shared_x, anchor="y", ticktext=[""] * len(ticks), showticklabels=False),
        yaxis=dict(domain=[0.56, 1.0], title_text="gradient<br>× input", zeroline=True, zerolinewidth=1.5),
        xaxis2=dict(shared_x, anchor="y2", matches="x", ticktext=tick_text(labels, ticks), tickangle=angle,
                    title_text="input token"),
        yaxis2=dict(domain=[0.0, 0.44], title_text="knock-one-out<br>Δ log-prob", zeroline=True, zerolinewidth=1.5),
        margin=dict(style.MARGIN, l=90, t=90, b=90),
    )  # fmt: skip
    subtitle = "blue: the token raises the prediction, red: lowers it"
    return style.figure(data=bars, layout=style.base_layout(_titled(title, subtitle, note), **layout))


def _titled(title: str, *notes: str) -> str:
    """``title`` with each note as a smaller line under it."""
    return "<br>".join([title, *(f"<sup>{n}</sup>" for n in notes if n)])


def _mean_line(b0: np.ndarray, b1: np.ndarray) -> str:
    """``mean 2.10 → 2.90 bits (+0.80) over 11 tokens``, over the tokens both runs predicted."""
    both = np.isfinite(b0) & np.isfinite(b1)
    if not both.any():
        return "no token was predicted"
    m0, m1 = float(b0[both].mean()), float(b1[both].mean())
    return f"mean {m0:.2f} → {m1:.2f} bits ({m1 - m0:+.2f}) over {int(both.sum())} tokens"


def _fmt(v: float, signed: bool = False) -> str:
    if not np.isfinite(v):
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _vector(x) -> np.ndarray:
    v = style.to_numpy(x).astype(np.float64)
    if v.ndim != 1:
        raise ValueError(f"expected a 1-D distribution over the vocabulary, got shape {v.shape}")
    return v


def _bits(x) -> np.ndarray:
    v = style.to_numpy(x).astype(np.float64)
    return v.reshape(-1)


__all__ = ["AFTER", "BEFORE", "GRAD_X_INPUT", "KNOCKED", "KNOCK_OUT", "attribution_figure", "prediction_figure",
           "surprisal_figure"]  # fmt: skip
