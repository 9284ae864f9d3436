"""Where a model's parameters sit: one horizontal bar per component.

``parameter_figure`` takes the (component, count) rows of ``archplay.models.analysis.card.parameter_breakdown``
(any list of pairs will do) and draws them top to bottom in the order given, each bar labelled
with its count and share of the total. For a mixture of experts, pass ``active`` to note how
many parameters one token actually uses.

Reading the figure back: the bar trace "parameters" has ``x`` = the counts as given, ``y`` =
0..n-1 (row i is the i-th component; the axis tick text holds the HTML-escaped names) and
``customdata`` rows ``[name, count with separators, share of the total]``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style


def compact_count(n: int) -> str:
    """``124439808`` as ``"124.4M"``; below a thousand, the number itself."""
    n = int(n)
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def parameter_figure(
    breakdown, active: int | None = None, total: int | None = None, *, title: str = "Parameters by component"
) -> go.Figure:
    """Horizontal bars of parameter counts per component, with each one's share of ``total``.

    breakdown: (name, count) pairs. total: the denominator of the shares (default: their sum).
    active: the parameters one token uses (MoE); when given, a note compares it with the total.
    """
    names = [str(name) for name, _ in breakdown]
    counts = np.array([int(n) for _, n in breakdown], dtype=np.int64)
    total = int(counts.sum()) if total is None else int(total)
    shares = counts / total if total > 0 else np.zeros(len(counts))
    customdata = np.empty((len(names), 3), dtype=object)
    customdata[:, 0] = [style.safe_label(s) for s in names]
    customdata[:, 1] = [f"{n:,}" for n in counts.tolist()]
    customdata[:, 2] = shares.astype(np.float64)
    bars = dict(
        type="bar",
        name="parameters",
        orientation="h",
        x=counts,
        y=np.arange(len(names)),
        text=[f"{compact_count(n)} · {s:.1%}" for n, s in zip(counts.tolist(), shares.tolist())],
        textposition="outside",
        cliponaxis=False,
        marker=dict(color=style.FINAL, line=dict(width=0)),
        customdata=customdata,
        hovertemplate="%{customdata[0]}<br>%{customdata[1]} parameters · %{customdata[2]:.1%}<extra></extra>",
    )
    top = int(counts.max()) if len(counts) else 0
    layout = dict(
        xaxis=dict(title_text="parameters", range=[0, top * 1.3 or 1], rangemode="tozero"),
        yaxis=dict(tickmode="array", tickvals=list(range(len(names))), autorange="reversed",
                   ticktext=[style.safe_label(s) for s in names]),
        showlegend=False,
        bargap=0.3,
        annotations=[_total_note(total, active)],
    )  # fmt: skip
    height = int(np.clip(140 + 32 * len(names), 260, 900))
    return style.figure(data=[bars],
        layout=style.base_layout(title, height=height, margin=dict(l=230, r=40, t=90, b=60), **layout),
    )


def _total_note(total: int, active: int | None) -> dict:
    """The line above the bars: the total, and for a mixture of experts the active share."""
    text = f"total {total:,} ({compact_count(total)})"
    if active is not None:
        share = f" = {active / total:.0%}" if total > 0 else ""
        text += f" · active per token {active:,} ({compact_count(active)}{share})"
    return dict(xref="paper", yref="paper", x=0, y=1.02, xanchor="left", yanchor="bottom", showarrow=False,
                text=text, font=dict(size=12, color=style.BALANCED))  # fmt: skip


__all__ = ["compact_count", "parameter_figure"]
