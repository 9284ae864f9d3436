"""State-space models (Mamba): the hidden attention of one layer and the step size Δ per token.

``hidden_attention_heatmap`` draws the (T, T) matrix mean_d |α[d, r, c]|: how much input c
contributes to output r once the selective scan's recurrence is unrolled (lower triangular,
since the scan only runs forward). It is ``viz.attention.attention_heatmap`` with the axes and
value named for a state-space model: ``z`` holds the matrix unchanged and ``customdata`` the
``"‘<row label>’ → ‘<column label>’"`` pairs.

``delta_bars`` draws one bar per token: the trace "mean Δ" has ``x`` = 0..T-1, ``y`` = the
values given and ``customdata`` = the HTML-escaped token labels.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style
from archplay.viz.attention import attention_heatmap, tick_positions, tick_text


def hidden_attention_heatmap(
    weights, labels, *, title: str = "Hidden attention", max_ticks: int = 48, cells: bool = True
) -> go.Figure:
    """Heatmap of a state-space layer's hidden attention: row r = output token, column c = input token."""
    fig = attention_heatmap(
        weights, labels, labels, title=title, max_ticks=max_ticks, value_name="mean |α|",
        query_title="output token r (being computed)", key_title="input token c (contributing)",
        query_word="output", key_word="input", cells=cells,
    )  # fmt: skip
    fig.update_traces(colorbar_tickformat=".2g")  # |α| is no probability: it may be tiny or above 1
    return fig


def delta_bars(delta, labels, *, title: str = "Step size Δ per token", max_ticks: int = 48) -> go.Figure:
    """Bars of one value of Δ per token (e.g. its mean over the channels), in the token order."""
    y = style.to_numpy(delta)
    if y.ndim != 1 or y.shape[0] != len(labels):
        raise ValueError(f"expected one value per token for {len(labels)} tokens, got shape {y.shape}")
    n = y.shape[0]
    bars = dict(
        type="bar",
        name="mean Δ",
        x=np.arange(n),
        y=y,
        marker=dict(color=style.DELTA, line=dict(width=0)),
        customdata=np.array([style.safe_label(s) for s in labels], dtype=object),
        hovertemplate="token %{x:d} ‘%{customdata}’<br>mean Δ %{y:.4f}<extra></extra>",
    )
    xt = tick_positions(n, max_ticks)
    crowded = len(xt) > 24
    layout = dict(
        xaxis=dict(
            title_text="token", tickmode="array", tickvals=xt.tolist(), ticktext=tick_text(labels, xt),
            tickangle=-90 if crowded else (-45 if len(xt) > 12 else 0), tickfont=dict(size=9 if crowded else 12),
            range=[-0.6, n - 0.4],
        ),
        yaxis=dict(title_text="mean Δ over channels", rangemode="tozero"),
        showlegend=False,
        bargap=0.15,
    )  # fmt: skip
    return style.figure(data=[bars], layout=style.base_layout(title, height=300, margin=dict(l=70, r=20, t=60, b=70),
                                                         **layout))  # fmt: skip
