"""Figures of the Compare view: surprisal per token, and forward latency against input length."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style
from archplay.viz.attention import tick_positions

SURPRISAL = "#c0392b"
SERIES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")


def surprisal_bars(bits, labels, *, title: str = "Surprisal per token", max_ticks: int = 48) -> go.Figure:
    """Bars of −log₂ p for each token (``bits`` (T,), NaN where the model made no prediction).

    Tall bars are the tokens the model did not see coming. The subtitle gives the mean over the
    predicted tokens. ``y`` is ``bits`` as given (NaN stays a gap).
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
    return style.figure(data=[bars], layout=style.base_layout(
        f"{title}<br><sup>{mean}</sup>", height=300, margin=dict(l=60, r=20, t=80, b=80),
        xaxis=dict(tickvals=ticks, ticktext=[style.safe_label(style.short_label(labels[i])) for i in ticks],
                   tickangle=-60),
        yaxis=dict(title="bits", rangemode="tozero"),
    ))  # fmt: skip


def latency_chart(series: dict, *, title: str = "Forward latency against input length") -> go.Figure:
    """One line per model, log-log: ``series[name] = (lengths, ms, stretched flags)``.

    On log-log axes a straight line's slope is the growth exponent: 1 linear (an SSM), 2 quadratic
    (attention, once the T × T scores dominate). Hollow markers: timed beyond the model's own context
    on a same-shaped copy. Guides for slopes 1 and 2 start from the first series' first point.
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
