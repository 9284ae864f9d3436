"""Attention heatmaps: one layer and head's weights, and the mask that says who may attend to whom.

Both figures use numeric axes (query i is row i, key j is column j) so repeated token labels
stay separate, with the labels carried as tick text and in each cell's hover ``customdata``
as ``[query label, key label]`` (HTML-escaped, see ``viz.style.safe_label``).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from viz import style

_ATTN_HOVER = (
    "query %{y} ‘%{customdata[0]}’ → key %{x} ‘%{customdata[1]}’"
    "<br>weight %{z:.3f}<extra></extra>"
)
_MASK_HOVER = (
    "query %{y} ‘%{customdata[0]}’ → key %{x} ‘%{customdata[1]}’"
    "<br>%{customdata[2]}<extra></extra>"
)


def attention_heatmap(
    weights, query_labels, key_labels, *, title: str = "Attention", max_ticks: int = 48
) -> go.Figure:
    """Heatmap of attention probabilities: row i is query token i, column j is key token j.

    ``weights`` is a (Tq, Tk) array or tensor for one layer and head; ``z`` holds it unchanged.
    The colour runs from 0 (white; masked future positions are exactly 0) to the largest weight.
    Hovering a cell names the query token, the key token and the weight.
    """
    z = _matrix(weights, query_labels, key_labels)
    zmax = float(z.max()) if z.size else 0.0
    heatmap = go.Heatmap(
        z=z,
        x=np.arange(z.shape[1]),
        y=np.arange(z.shape[0]),
        customdata=_pair_labels(query_labels, key_labels),
        hovertemplate=_ATTN_HOVER,
        colorscale=style.ATTENTION_SCALE,
        zmin=0.0,
        zmax=zmax if zmax > 0 else 1.0,
        colorbar=dict(title=dict(text="weight"), thickness=14),
    )
    fig = go.Figure(heatmap)
    return _token_axes(fig, query_labels, key_labels, title, max_ticks)


def attention_mask_heatmap(
    allowed, query_labels, key_labels, *, title: str = "Attention mask", max_ticks: int = 48
) -> go.Figure:
    """Two-colour map of a boolean (Tq, Tk) mask: 1 where query i may attend to key j, 0 where masked.

    ``z`` holds the mask as 0/1 integers; hover says "may attend" or "masked".
    """
    mask = _matrix(allowed, query_labels, key_labels).astype(bool)
    z = mask.astype(np.int8)
    customdata = _pair_labels(query_labels, key_labels, extra=np.where(mask, "may attend", "masked"))
    heatmap = go.Heatmap(
        z=z,
        x=np.arange(z.shape[1]),
        y=np.arange(z.shape[0]),
        customdata=customdata,
        hovertemplate=_MASK_HOVER,
        colorscale=[[0.0, style.MASK_OFF], [0.5, style.MASK_OFF], [0.5, style.MASK_ON], [1.0, style.MASK_ON]],
        zmin=0,
        zmax=1,
        xgap=1 if max(z.shape) <= 64 else 0,
        ygap=1 if max(z.shape) <= 64 else 0,
        colorbar=dict(
            tickvals=[0.25, 0.75], ticktext=["masked", "may attend"], thickness=14, len=0.4
        ),
    )
    fig = go.Figure(heatmap)
    return _token_axes(fig, query_labels, key_labels, title, max_ticks)


def tick_positions(n: int, max_ticks: int) -> np.ndarray:
    """Indices of the ticks to label on an axis of ``n`` tokens: all, or ``max_ticks`` evenly spaced."""
    if n <= max_ticks:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max(max_ticks, 2)).round().astype(int))


def _matrix(values, query_labels, key_labels) -> np.ndarray:
    """``values`` as a 2-D numpy array, checked against the number of query and key labels."""
    z = style.to_numpy(values)
    if z.ndim != 2:
        raise ValueError(f"expected a 2-D (queries, keys) matrix, got shape {z.shape}")
    if z.shape != (len(query_labels), len(key_labels)):
        raise ValueError(
            f"matrix shape {z.shape} does not match {len(query_labels)} query and {len(key_labels)} key labels"
        )
    return z


def _pair_labels(query_labels, key_labels, extra=None) -> np.ndarray:
    """Per-cell hover data: ``[query label, key label]`` (plus ``extra[i, j]`` when given)."""
    q = np.array([style.safe_label(s) for s in query_labels], dtype=object)
    k = np.array([style.safe_label(s) for s in key_labels], dtype=object)
    depth = 2 if extra is None else 3
    data = np.empty((len(q), len(k), depth), dtype=object)
    data[:, :, 0] = q[:, None]
    data[:, :, 1] = k[None, :]
    if extra is not None:
        data[:, :, 2] = extra
    return data


def _token_axes(fig: go.Figure, query_labels, key_labels, title: str, max_ticks: int) -> go.Figure:
    """Label the numeric axes with tokens, put query 0 at the top and keep cells square."""
    xt = tick_positions(len(key_labels), max_ticks)
    yt = tick_positions(len(query_labels), max_ticks)
    fig.update_xaxes(
        title_text="key (attended-to token)",
        tickmode="array",
        tickvals=xt.tolist(),
        ticktext=[style.safe_label(style.short_label(str(key_labels[i]))) for i in xt],
        tickangle=-45 if len(xt) > 12 else 0,
        showgrid=False,
        zeroline=False,
        constrain="domain",
    )
    fig.update_yaxes(
        title_text="query (attending token)",
        tickmode="array",
        tickvals=yt.tolist(),
        ticktext=[style.safe_label(style.short_label(str(query_labels[i]))) for i in yt],
        autorange="reversed",
        scaleanchor="x",
        scaleratio=1,
        showgrid=False,
        zeroline=False,
        constrain="domain",
    )
    return style.polish(fig, title, height=620, plot_bgcolor="white")
