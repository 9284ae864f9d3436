"""The next-token distribution through each sampling stage, as grouped bars over the top tokens.

``distribution_figure`` reads an object duck-typed like ``archplay.models.sampling.StagedDistribution``
(1-D ``raw``, ``tempered``, ``final``, ``kept`` over the vocabulary, and the settings) and keeps
only the shown tokens in the figure, so it stays small and fast at a 50 257-token vocabulary.

Reading the figure back: the x axis is the rank 0..n-1 (by raw probability); the bar traces
"raw", "after temperature" and "final" carry ``customdata`` rows ``[label, token id, "kept" |
"removed"]``; the scatter traces "kept" and "removed" have the ranks of those tokens as ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style

_BAR_HOVER = (
    "<b>‘%{customdata[0]}’</b> · id %{customdata[1]}<br>STAGE: %{y:.4f}<br>%{customdata[2]}<extra></extra>"
)


@dataclass
class _Shown:
    """The top tokens picked for display, with every per-token value the figure needs."""

    ids: np.ndarray  # (n,) token ids ranked by raw probability
    labels: list[str]  # (n,) display labels as labels_for returned them
    raw: np.ndarray
    tempered: np.ndarray
    final: np.ndarray
    kept: np.ndarray  # (n,) bool
    cumulative: np.ndarray  # (n,) cumsum of the sorted tempered vector over the full vocabulary


def distribution_figure(staged, labels_for, *, top_n: int = 20, title: str = "Next-token distribution") -> go.Figure:
    """Grouped bars of the ``top_n`` most likely tokens (by raw probability) at each stage.

    Bars show the raw, temperature-scaled and final (top-k / top-p filtered, renormalised)
    probability of each token; tokens the filters removed are faded and crossed, kept tokens get
    a green dot. A line on the right axis shows the cumulative tempered probability of the
    most likely tokens, with the top-p threshold dashed. The subtitle gives the settings, how
    many tokens stay sampleable and the entropy before and after.

    ``staged`` is duck-typed like ``archplay.models.sampling.StagedDistribution``: ``raw``, ``tempered``,
    ``final``, ``kept`` (tensors or arrays), ``temperature``, ``top_k``, ``top_p``, ``entropy`` and
    ``raw_entropy``. ``labels_for`` is called once, with the shown token ids, and returns their
    display strings.
    """
    raw, tempered, final, kept = (style.to_numpy(getattr(staged, f)) for f in ("raw", "tempered", "final", "kept"))
    if raw.ndim != 1:
        raise ValueError(f"expected 1-D distributions over the vocabulary, got shape {raw.shape}")
    shown = _pick(raw, tempered, final, kept.astype(bool), labels_for, top_n)
    traces = [
        _bar("raw", shown.raw, style.RAW, shown),
        _bar("after temperature", shown.tempered, style.TEMPERED, shown),
        _bar("final", shown.final, style.FINAL, shown),
        *_kept_markers(shown),
        *_cumulative(shown, float(staged.top_p)),
    ]
    subtitle = _summary(staged, raw.shape[0], int(kept.sum()))
    layout = style.base_layout(
        f"{title}<br><sup>{subtitle}</sup>",
        height=500,
        margin=dict(l=70, r=80, t=80, b=150),
        **_layout(shown, float(staged.top_p)),
    )
    # Traces and layout go in as dicts so plotly validates everything once.
    return style.figure(data=traces, layout=layout)


def _layout(shown: _Shown, top_p: float) -> dict:
    """Grouped bars, a probability axis on the left, a 0..1 cumulative axis on the right."""
    n = len(shown.ids)
    bar_top = float(max(shown.raw.max(), shown.tempered.max(), shown.final.max())) if n else 0.0
    label = "top-p off" if top_p >= 1 else f"top-p = {top_p:.2f}"
    return dict(
        barmode="group",
        bargap=0.25,
        bargroupgap=0.05,
        # below the axis, in the figure's own coordinates: on a narrow page the legend takes two
        # rows, and above the plot it would run into the title's settings line
        legend=dict(orientation="h", yref="container", y=0.0, yanchor="bottom", xanchor="center", x=0.5),
        yaxis=dict(title_text="probability", range=[0, bar_top * 1.15 or 1.0]),
        yaxis2=dict(
            title_text="cumulative (after temperature)",
            overlaying="y",
            side="right",
            range=[0, 1.05],
            tickmode="array",
            tickvals=[0, 0.25, 0.5, 0.75, 1],
            showgrid=False,
            tickformat=".0%",
        ),
        xaxis=dict(
            title_text=f"top {n} tokens, ranked by raw probability",
            tickmode="array",
            tickvals=list(range(n)),
            ticktext=[style.safe_label(style.short_label(s, 16)) for s in shown.labels],
            tickangle=-45 if n > 10 else 0,
            range=[-0.6, n - 0.4],
        ),
        annotations=[
            dict(
                x=n - 0.5, y=top_p, xref="x", yref="y2", text=label, showarrow=False,
                xanchor="right", yanchor="bottom", font=dict(color=style.THRESHOLD, size=12),
            )
        ],
    )


def _pick(raw, tempered, final, kept, labels_for, top_n: int) -> _Shown:
    """The ``top_n`` ids by raw probability (ties: smaller id first) and their values and labels."""
    ids = top_ids(raw, top_n)
    labels = [str(s) for s in labels_for(ids.tolist())]
    if len(labels) != len(ids):
        raise ValueError(f"labels_for returned {len(labels)} labels for {len(ids)} ids")
    return _Shown(
        ids=ids,
        labels=labels,
        raw=raw[ids],
        tempered=tempered[ids],
        final=final[ids],
        kept=kept[ids],
        cumulative=_sorted_cumsum(tempered, len(ids)),
    )


def top_ids(p: np.ndarray, n: int) -> np.ndarray:
    """Ids of the ``n`` largest entries of ``p``, descending, ties broken by smaller id; O(V)."""
    n = max(0, min(int(n), p.shape[0]))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    nth = np.partition(p, p.shape[0] - n)[p.shape[0] - n]  # the n-th largest value
    candidates = np.flatnonzero(p >= nth)  # ascending ids, so a stable sort keeps small ids first
    order = np.argsort(-p[candidates], kind="stable")
    return candidates[order[:n]].astype(np.int64)


def _sorted_cumsum(p: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` entries of cumsum(sort(p, descending)), computed from the n largest only."""
    if n == 0:
        return np.zeros(0)
    largest = np.partition(p, p.shape[0] - n)[p.shape[0] - n :]
    return np.cumsum(np.sort(largest)[::-1], dtype=np.float64)


def _bar(name: str, values: np.ndarray, colour: str, shown: _Shown) -> dict:
    """One stage's bars; the bars of removed tokens are faded."""
    colours = np.where(shown.kept, colour, style.rgba(colour, style.FADED_ALPHA)).tolist()
    customdata = np.empty((len(shown.ids), 3), dtype=object)
    customdata[:, 0] = [style.safe_label(s) for s in shown.labels]
    customdata[:, 1] = shown.ids
    customdata[:, 2] = np.where(shown.kept, "kept", "removed")
    return dict(
        type="bar",
        name=name,
        x=np.arange(len(shown.ids)),
        y=values,
        marker=dict(color=colours, line=dict(width=0)),
        customdata=customdata,
        hovertemplate=_BAR_HOVER.replace("STAGE", name),
    )


def _kept_markers(shown: _Shown) -> list[dict]:
    """A green dot above each kept token's bars and a red ✗ above each removed one."""
    ranks = np.arange(len(shown.ids))
    top = np.maximum(np.maximum(shown.raw, shown.tempered), shown.final).astype(np.float64)
    height = top + 0.04 * (float(top.max()) if len(top) else 1.0)
    labels = np.array([style.safe_label(s) for s in shown.labels], dtype=object)
    return [
        dict(
            type="scatter",
            name=name,
            x=ranks[flag],
            y=height[flag],
            mode="markers",
            marker=dict(symbol=symbol, size=8, color=colour, line=dict(width=2, color=colour)),
            customdata=labels[flag],
            hovertemplate=f"‘%{{customdata}}’ {name}<extra></extra>",
        )
        for name, flag, symbol, colour in (
            ("kept", shown.kept, "circle", style.KEPT),
            ("removed", ~shown.kept, "x-thin-open", style.REMOVED),
        )
    ]


def _cumulative(shown: _Shown, top_p: float) -> list[dict]:
    """The cumulative tempered probability line and the dashed top-p threshold, on the right axis."""
    n = len(shown.ids)
    label = "top-p off" if top_p >= 1 else f"top-p = {top_p:.2f}"
    line = dict(
        type="scatter",
        name="cumulative",
        x=np.arange(n),
        y=shown.cumulative,
        yaxis="y2",
        mode="lines+markers",
        line=dict(color=style.THRESHOLD, width=2),
        marker=dict(size=4),
        customdata=np.arange(1, n + 1),
        hovertemplate="top %{customdata} tokens hold %{y:.4f}<extra>cumulative</extra>",
    )
    threshold = dict(
        type="scatter",
        name="top-p threshold",
        x=[-0.5, n - 0.5],
        y=[top_p, top_p],
        yaxis="y2",
        mode="lines",
        line=dict(color=style.THRESHOLD, width=1.5, dash="dash"),
        hovertemplate=f"{label}<extra></extra>",
    )
    return [line, threshold]


def _summary(staged, vocab: int, n_kept: int) -> str:
    """Settings, kept count and entropies in one line, e.g.

    "T=0.80 · top-k 50 · top-p 0.90 · 37 of 50 257 tokens kept · entropy 3.21 → 1.05 nats".
    """
    t, k, p = float(staged.temperature), int(staged.top_k), float(staged.top_p)
    parts = [
        "T=0 (greedy)" if t == 0 else f"T={t:.2f}",
        f"top-k {k}" if k > 0 else "top-k off",
        f"top-p {p:.2f}" if p < 1 else "top-p off",
        f"{_thousands(n_kept)} of {_thousands(vocab)} tokens kept",
        f"entropy {float(staged.raw_entropy):.2f} → {float(staged.entropy):.2f} nats",
    ]
    return " · ".join(parts)


def _thousands(n: int) -> str:
    """``50257`` as ``"50 257"``."""
    return f"{n:,}".replace(",", " ")


def sample_histogram(draws, final, labels_for, *, top_n: int = 20, title: str = "Samples") -> go.Figure:
    """What ``len(draws)`` draws actually picked, beside what the final distribution promised.

    ``draws`` (n,) token ids; ``final`` (V,) the distribution they were drawn from. Bars: the
    share of draws per token (the ``top_n`` most drawn, most first; ``customdata`` rows
    ``[label, token id, count]``); diamonds: each token's final probability, the share the
    bars approach as n grows.
    """
    draws = style.to_numpy(draws).astype(np.int64).reshape(-1)
    final = style.to_numpy(final).astype(np.float64)
    if draws.size == 0:
        raise ValueError("no draws to show")
    ids, counts = np.unique(draws, return_counts=True)
    order = np.lexsort((ids, -counts))[:top_n]  # most drawn first, ties by smaller id
    ids, counts = ids[order], counts[order]
    labels = [style.safe_label(s) for s in labels_for(ids.tolist())]
    n = int(draws.size)
    customdata = np.empty((len(ids), 3), dtype=object)
    customdata[:, 0], customdata[:, 1], customdata[:, 2] = labels, ids, counts
    ticks = [style.short_label(s) for s in labels]
    bars = dict(
        type="bar", name=f"share of {n} draws", x=np.arange(len(ids)), y=counts / n, customdata=customdata,
        marker=dict(color=style.FINAL), hovertemplate="<b>‘%{customdata[0]}’</b> · id %{customdata[1]}<br>"
        "drawn %{customdata[2]} times (%{y:.1%})<extra></extra>",
    )  # fmt: skip
    expected = dict(
        type="scatter", mode="markers", name="final probability", x=np.arange(len(ids)), y=final[ids],
        marker=dict(symbol="diamond", size=10, color=style.THRESHOLD),
        hovertemplate="expected %{y:.1%}<extra></extra>",
    )  # fmt: skip
    distinct = len(np.unique(draws))
    subtitle = f"{n} draw{'s' if n != 1 else ''}, {distinct} distinct token{'s' if distinct != 1 else ''}"
    layout = style.base_layout(
        f"{title}<br><sup>{subtitle}</sup>", height=380, margin=dict(l=70, r=30, t=90, b=90),
        xaxis=dict(tickvals=list(range(len(ids))), ticktext=ticks, tickangle=-45, title="token"),
        yaxis=dict(title="share", tickformat=".0%", rangemode="tozero"),
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
    )  # fmt: skip
    return style.figure(data=[bars, expected], layout=layout)
