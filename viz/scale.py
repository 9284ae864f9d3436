"""Figures of the Scale tab: memory per GPU as stacked bars, and where the parameters sit.

Both take plain numbers (the dicts ``archplay.models.analysis.estimate`` returns, or any with the same
keys) and draw one horizontal bar per configuration, the first on top.

Reading ``memory_figure`` back: one bar trace per part (``PARTS``: weights, gradients, optimizer,
activations, KV cache), ``y`` = 0..n-1 (configuration i), ``x`` = the part in GiB (2³⁰ bytes, the unit
GPUs are sold in: an "80 GB" card holds 80 GiB), ``customdata`` rows ``[label, exact bytes (int), bytes
with separators, share of the total]``; the "total" trace (invisible markers at the bars' ends, labelled
by annotations) has ``x`` = the totals in GiB and ``customdata`` = the exact totals. GPU capacities are dashed vertical lines (layout shapes), named by
the annotations above them.

Reading ``components_figure`` back: one bar trace per component (``COMPONENT_LABELS``), ``x`` = its
share of the configuration's total, ``customdata`` rows ``[label, exact count (int), count with
separators]``; the "active per token" marker trace has ``x`` = active / total and ``customdata`` the
exact active counts, only for configurations whose active count is below the total (a mixture of
experts).
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

from archplay.viz import style

GIB = 1 << 30
# The parts of memory, in stacking order: (the estimate's key, the legend's name, colour).
PARTS = (
    ("weights", "weights", "#2e86de"),
    ("gradients", "gradients", "#f5a623"),
    ("optimizer", "optimizer state", "#8e44ad"),
    ("activations", "activations", "#27ae60"),
    ("kv_cache", "KV cache / state", "#17becf"),
)
# ``estimate``'s components, as the legend names them, with their colours.
COMPONENT_LABELS = {
    "embeddings": ("embeddings", "#7f8fa6"),
    "attention": ("attention", "#2e86de"),
    "mixer": ("SSM mixer", "#e67e22"),
    "feed_forward": ("feed-forward", "#27ae60"),
    "experts": ("experts + routers", "#8e44ad"),
    "norms": ("norms", "#f5a623"),
    "head": ("output head", "#c0392b"),
    "other": ("other", "#bcbd22"),
}
ACTIVE = "#1f2937"
CAPACITY = "#6b7280"
ROW_PX = 62  # one configuration's bar with its gap
TOP, BOTTOM = 96, 80  # margins: the title and the GPU labels above the bars, the ticks and the legend below
LABEL_PX, PLOT_PX = 6.5, 560  # a GPU label's characters and the narrowest plot (1024 px page): labels never meet


def _legend(height: int, top: int, bottom: int) -> dict:
    """A horizontal legend under the tick labels (its position is in units of the plot's height)."""
    plot = max(height - top - bottom, 1)
    return dict(orientation="h", x=0, xanchor="left", y=-30 / plot, yanchor="top", traceorder="normal")


def _crowds(lines, span: float) -> list[list[tuple[int, str]]]:
    """The lines in groups that share one label: a line joins the group before it while that group's
    label (estimated at ``LABEL_PX`` a character on a ``PLOT_PX`` wide plot, in bytes of an axis of
    ``span`` bytes) would reach it."""
    groups: list[list] = []
    for line in lines:
        if groups:
            start = groups[-1][0][0]
            reach = len(_capacity_note(groups[-1])["text"]) * LABEL_PX / PLOT_PX * span
            if line[0] < start + reach:
                groups[-1].append(line)
                continue
        groups.append([line])
    return groups


def _capacity_note(group, row: int = 0) -> dict:
    """One label over a group of GPU lines: their sizes (the names on hover), or a lone line's names."""
    sizes = " · ".join(f"{cap / GIB:g}" for cap, _ in group)
    names = "<br>".join(f"{cap / GIB:g} GiB: {style.safe_label(n)}" for cap, n in group)
    text = f"{sizes} GiB" if len(group) > 1 else f"{style.safe_label(group[0][1])} · {sizes} GiB"
    return dict(xref="x", yref="paper", x=group[0][0] / GIB, y=1.0, yshift=14 * row, xanchor="left",
                yanchor="bottom", showarrow=False, text=text, hovertext=names,
                font=dict(size=10, color=CAPACITY))  # fmt: skip


def gib(n: float) -> str:
    """Bytes as GiB with a sensible number of digits: ``0.23 GiB``, ``14.7 GiB``, ``717 GiB``."""
    g = n / GIB
    if g == 0:
        return "0 GiB"
    if g < 0.01:
        return f"{n / (1 << 20):.2g} MiB" if n >= 1 << 20 else f"{n / 1024:.2g} KiB"
    return f"{g:.3g} GiB" if g < 1000 else f"{g:,.0f} GiB"


def count(n: float) -> str:
    """A parameter or token count: ``124 M``, ``6.74 B``, ``1.4 T``."""
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.3g} {suffix}"
    return f"{n:g}"


def _ticks(labels: list[str], limit: int = 26) -> dict:
    text = [style.safe_label(style.short_label(s, limit)) for s in labels]
    return dict(tickmode="array", tickvals=list(range(len(labels))), ticktext=text, autorange="reversed")


def _height(n: int) -> int:
    return 190 + ROW_PX * max(n, 1)


def memory_figure(labels: list[str], memories: list[dict], capacities=(), *,
                  title: str = "Memory per GPU") -> go.Figure:  # fmt: skip
    """Stacked horizontal bars of memory per GPU, one per configuration.

    labels: the configurations' names. memories: per configuration a dict of bytes with the keys of
    ``PARTS`` (``estimate(...)["memory"]``). capacities: (name, bytes) of the GPUs whose memory is drawn
    as a dashed line; cards of one size share a line. Lines far beyond the largest bar are left out (all
    but the first above it), so a small model's bars stay readable.
    """
    n = len(labels)
    totals = [sum(int(m.get(key, 0)) for key, _, _ in PARTS) for m in memories]
    data = []
    for key, name, colour in PARTS:
        values = [int(m.get(key, 0)) for m in memories]
        custom = [[style.safe_label(lab), v, f"{v:,}", (v / t if t else 0.0)] for lab, v, t in
                  zip(labels, values, totals)]  # fmt: skip
        data.append(dict(
            type="bar", orientation="h", name=name, x=[v / GIB for v in values], y=list(range(n)),
            marker=dict(color=colour, line=dict(width=0)), customdata=custom, showlegend=any(values),
            hovertemplate=(f"%{{customdata[0]}}<br><b>{name}</b>: %{{x:.3f}} GiB<br>%{{customdata[2]}} bytes"
                           " · %{customdata[3]:.1%} of the total<extra></extra>"),
        ))  # fmt: skip
    # The totals: an invisible marker at each bar's end carries the hover; the label is an annotation,
    # on a white ground so that a GPU line behind it does not cross the digits.
    data.append(dict(
        type="scatter", mode="markers", name="total", x=[t / GIB for t in totals], y=list(range(n)),
        marker=dict(size=14, opacity=0), cliponaxis=False, showlegend=False, customdata=totals,
        hovertemplate="total: %{x:.3f} GiB<br>%{customdata:,} bytes<extra></extra>",
    ))  # fmt: skip
    labels_at_ends = [dict(xref="x", yref="y", x=t / GIB, y=i, xanchor="left", xshift=4, showarrow=False,
                           text=gib(t), bgcolor="rgba(255,255,255,0.85)", font=dict(size=12))
                      for i, t in enumerate(totals)]  # fmt: skip
    top = max(totals, default=0)
    lines = _capacity_lines(capacities, top)
    right = max([top, *(c for c, _ in lines)]) or GIB
    span = right / GIB * 1.18
    shapes = [dict(type="line", xref="x", yref="paper", x0=cap / GIB, x1=cap / GIB, y0=0, y1=1,
                   line=dict(color=CAPACITY, width=1.5, dash="dash")) for cap, _ in lines]  # fmt: skip
    notes = [_capacity_note(g, i % 2) for i, g in enumerate(_crowds(lines, span * GIB))] + labels_at_ends
    if capacities and not lines:
        smallest = min(int(c) for _, c in capacities)
        notes.append(dict(xref="paper", yref="paper", x=1, y=1.0, xanchor="right", yanchor="bottom", showarrow=False,
                          text=f"the smallest GPU here holds {gib(smallest)}: {smallest / max(top, 1):,.0f}× the "
                               "largest bar", font=dict(size=11, color=CAPACITY)))  # fmt: skip
    height = _height(n)
    layout = dict(
        barmode="stack", bargap=0.35, shapes=shapes, annotations=notes,
        xaxis=dict(range=[0, span], rangemode="tozero", ticksuffix=" GiB"),
        yaxis=_ticks(labels), legend=_legend(height, TOP, BOTTOM),
        height=height, margin=dict(l=190, r=30, t=TOP, b=BOTTOM),
    )  # fmt: skip
    return style.figure(data=data, layout=style.base_layout(title, **layout))


def _capacity_lines(capacities, top: int) -> list[tuple[int, str]]:
    """(bytes, "names") of the lines to draw: every size up to the first that holds ``top``."""
    sizes: dict[int, list[str]] = {}
    for name, cap in capacities:
        sizes.setdefault(int(cap), []).append(str(name))
    shown = []
    for cap in sorted(sizes):
        if cap > top and shown and shown[-1][0] > top:
            break
        if cap > 8 * max(top, 1) and not shown:  # a tiny model: no line would leave its bars visible
            break
        shown.append((cap, ", ".join(_short_gpu(s) for s in sizes[cap])))
    return shown


def _short_gpu(name: str) -> str:
    """``"H100 80GB"`` -> ``"H100"``: the line's position already says the size."""
    head, _, tail = name.rpartition(" ")
    return head if head and tail.upper().endswith("GB") else name


def components_figure(labels: list[str], by_component: list[dict], totals: list[int], actives: list[int], *,
                      title: str = "Where the parameters are: shares of each total") -> go.Figure:  # fmt: skip
    """Each configuration's parameters by component as shares of its total (stacked to 100%), the
    totals in the row labels; a black tick marks the share one token runs (active), where it is less.

    by_component: per configuration {component: count} (``estimate(...)["params_by_component"]``)."""
    n = len(labels)
    data = []
    for key, (name, colour) in COMPONENT_LABELS.items():
        values = [int(c.get(key, 0)) for c in by_component]
        if not any(values):
            continue
        custom = [[style.safe_label(lab), v, f"{v:,}"] for lab, v in zip(labels, values)]
        data.append(dict(
            type="bar", orientation="h", name=name, x=[v / t if t else 0.0 for v, t in zip(values, totals)],
            y=list(range(n)), marker=dict(color=colour, line=dict(width=0)), customdata=custom,
            hovertemplate=f"%{{customdata[0]}}<br><b>{name}</b>: %{{customdata[2]}} parameters · %{{x:.1%}}"
                          "<extra></extra>",
        ))  # fmt: skip
    moe = [i for i, (a, t) in enumerate(zip(actives, totals)) if a < t]
    data.append(dict(
        type="scatter", mode="markers", name="active per token", x=[actives[i] / totals[i] for i in moe], y=moe,
        customdata=[[style.safe_label(labels[i]), int(actives[i]), f"{int(actives[i]):,}"] for i in moe],
        marker=dict(symbol="line-ns", size=34, line=dict(width=4, color=ACTIVE), color=ACTIVE),
        showlegend=bool(moe),
        hovertemplate="%{customdata[0]}<br><b>active per token</b>: %{customdata[2]} · %{x:.1%} of the total"
                      "<extra></extra>",
    ))  # fmt: skip
    ticks = [f"{style.safe_label(style.short_label(lab, 26))}<br><span style='font-size:11px'>{count(t)}"
             + (f" · {count(a)} active" if a < t else "") + "</span>" for lab, t, a in zip(labels, totals, actives)]
    height = _height(n)
    layout = dict(
        barmode="stack", bargap=0.35,
        xaxis=dict(tickformat=".0%", range=[0, 1.0001]),
        yaxis=dict(tickmode="array", tickvals=list(range(n)), ticktext=ticks, autorange="reversed"),
        legend=_legend(height, 70, BOTTOM), height=height, margin=dict(l=190, r=30, t=70, b=BOTTOM),
    )  # fmt: skip
    return style.figure(data=data, layout=style.base_layout(title, **layout))


def duration(seconds: float) -> str:
    """``3.2 hours``, ``12 days``, ``2.1 years``."""
    if not math.isfinite(seconds):
        return "—"
    for size, unit in ((365.25 * 86400, "years"), (86400, "days"), (3600, "hours"), (60, "minutes")):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.2g} seconds"


__all__ = ["COMPONENT_LABELS", "GIB", "PARTS", "components_figure", "count", "duration", "gib", "memory_figure"]
