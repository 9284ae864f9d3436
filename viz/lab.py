"""Figures of the Architecture Lab: live loss curves, runs side by side, and a scaling experiment.

Every builder takes plain data (lists of numbers, dicts of names), never a model or a job:

* ``loss_curves`` — each run's training loss per step (faded) and its moving average (solid),
  against the story world's entropy floor (no model can go below it) and, dotted, a reference
  curve (the built-in the recipe started from).
* ``final_losses`` — the runs' last smoothed loss and gap to the floor as bars, one per run.
* ``scaling_chart`` — final loss against parameters (or training compute) on log-log axes, with a
  fitted power law ``L = floor + a · x^(−α)`` drawn through the points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style

SERIES = ("#2e86de", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085")
FLOOR = "#374151"
REFERENCE = "#9ca3af"
SMOOTH = 0.9  # the moving average's weight on the past (an exponential moving average)


def _or_empty(values):
    return [] if values is None else values


def series_colour(i: int) -> str:
    return SERIES[i % len(SERIES)]


def smooth(values: Sequence[float], weight: float = SMOOTH) -> np.ndarray:
    """Exponential moving average, debiased (like TensorBoard's): the first points are not pulled to 0."""
    v = np.asarray(values, dtype=np.float64)
    out = np.empty_like(v)
    acc, norm = 0.0, 0.0
    for i, x in enumerate(v):
        acc = weight * acc + (1 - weight) * x
        norm = weight * norm + (1 - weight)
        out[i] = acc / norm
    return out


def _thin(n: int, most: int = 2000) -> np.ndarray:
    """At most ``most`` indices of ``n`` steps, evenly spread, the last one kept (a long run stays light)."""
    if n <= most:
        return np.arange(n)
    idx = np.unique(np.linspace(0, n - 1, most).round().astype(int))
    return idx


def loss_curves(
    runs: Sequence[Mapping],
    *,
    floor: float | None = None,
    reference: Mapping | None = None,
    title: str = "Training loss",
    note: str = "",
    x_max: int | None = None,
) -> go.Figure:
    """Loss per step of each run in ``runs`` ({"name", "losses"[, "validation": [[step, loss], …]]}).

    ``floor``: the entropy floor in nats per token (a dashed line). ``reference``: {"name", "losses"},
    drawn dotted and grey (the built-in's own curve). ``note`` goes under the title. ``x_max``: the
    last step the axis shows (a run's planned steps: a longer reference is cut there).
    """
    traces: list[dict] = []
    top = 0.0
    longest = 0
    if reference and len(_or_empty(reference.get("losses"))):
        ref = np.asarray(reference["losses"], dtype=np.float64)
        idx = _thin(len(ref))
        traces.append(dict(
            type="scatter", mode="lines", name=style.safe_label(reference.get("name", "reference")),
            x=(idx + 1).tolist(), y=smooth(ref)[idx].tolist(), line=dict(color=REFERENCE, width=2, dash="dot"),
            hovertemplate="step %{x}: %{y:.3f} nats<extra>%{fullData.name}</extra>",
        ))  # fmt: skip
        top = max(top, float(np.percentile(ref, 99)))
        longest = max(longest, len(ref))
    for i, run in enumerate(runs):
        losses = np.asarray(_or_empty(run.get("losses")), dtype=np.float64)
        if not len(losses):
            continue
        colour, name = series_colour(i), style.safe_label(run.get("name", f"run {i + 1}"))
        idx = _thin(len(losses))
        steps = (idx + 1).tolist()
        traces.append(dict(
            type="scatter", mode="lines", name=f"{name} (each step)", x=steps, y=losses[idx].tolist(),
            line=dict(color=style.rgba(colour, 0.3), width=1), showlegend=False, hoverinfo="skip",
        ))  # fmt: skip
        traces.append(dict(
            type="scatter", mode="lines", name=name, x=steps, y=smooth(losses)[idx].tolist(),
            line=dict(color=colour, width=2.5),
            hovertemplate="step %{x}: %{y:.3f} nats (moving average)<extra>%{fullData.name}</extra>",
        ))  # fmt: skip
        if run.get("validation"):
            vs, vl = zip(*run["validation"])
            traces.append(dict(
                type="scatter", mode="markers", name=f"{name} (validation)", x=list(vs), y=list(vl),
                marker=dict(color=colour, size=8, symbol="diamond", line=dict(color="white", width=1)),
                hovertemplate="step %{x}: validation %{y:.3f} nats<extra></extra>",
            ))  # fmt: skip
        top = max(top, float(np.percentile(losses, 99)))
        longest = max(longest, len(losses))
    shapes, annotations = [], []
    if floor is not None and math.isfinite(floor):
        shapes.append(dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=floor, y1=floor,
                           line=dict(color=FLOOR, width=1.5, dash="dash")))  # fmt: skip
        annotations.append(dict(xref="paper", x=1, xanchor="right", yref="y", y=floor, yanchor="top", showarrow=False,
                                text=f"entropy floor {floor:.3f} nats/token: no model can go below",
                                font=dict(size=11, color=FLOOR)))  # fmt: skip
    low = min(floor if floor is not None and math.isfinite(floor) else top, top) * 0.9 if top else 0
    text = title + (f"<br><sup>{style.safe_label(note)}</sup>" if note else "")
    layout = style.base_layout(
        text, height=380, margin=dict(l=60, r=20, t=70, b=50),
        xaxis=dict(title_text="step", range=[0, max(x_max or longest, 1) * 1.02]),
        yaxis=dict(title_text="loss (nats per token)", range=[low, top * 1.05] if top else None),
        legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1, xanchor="right", font=dict(size=11)),
        shapes=shapes, annotations=annotations,
    )  # fmt: skip
    return style.figure(data=traces, layout=layout)


def final_losses(runs: Sequence[Mapping], *, floor: float | None = None, title: str = "Where each run ended") -> go.Figure:
    """One bar per run: its last smoothed training loss (or its evaluation's cross-entropy when the run
    has ``"cross_entropy"``), with the gap to the floor in the hover and on the bar."""
    names, values, colours = [], [], []
    for i, run in enumerate(runs):
        value = run.get("cross_entropy")
        if value is None and len(_or_empty(run.get("losses"))):
            value = float(smooth(run["losses"])[-1])
        if value is None:
            continue
        names.append(style.safe_label(run.get("name", f"run {i + 1}")))
        values.append(float(value))
        colours.append(series_colour(i))
    has_floor = floor is not None and math.isfinite(floor)
    text = [f"{v:.3f}" + (f" (gap {v - floor:+.3f})" if has_floor else "") for v in values]
    traces = [dict(type="bar", x=names, y=values, marker=dict(color=colours), text=text, textposition="outside",
                   cliponaxis=False, hovertemplate="%{x}: %{y:.3f} nats<extra></extra>", showlegend=False)]  # fmt: skip
    shapes = []
    if has_floor:
        shapes.append(dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=floor, y1=floor,
                           line=dict(color=FLOOR, width=1.5, dash="dash")))  # fmt: skip
    top = max(values + [floor if has_floor else 0.0] or [1.0])
    layout = style.base_layout(
        title, height=320, margin=dict(l=60, r=20, t=60, b=60),
        yaxis=dict(title_text="loss (nats per token)", range=[0, top * 1.2 or 1.0]), shapes=shapes,
    )  # fmt: skip
    return style.figure(data=traces, layout=layout)


def scaling_chart(points: Sequence[Mapping], fit: Mapping | None = None, *, x: str = "params",
                  title: str = "Final loss against size") -> go.Figure:  # fmt: skip
    """Each point {"name", "params", "compute", "loss"} on log-log axes; ``x`` is "params" or "compute"
    (training FLOPs). ``fit`` ({"a", "alpha", "floor"} for ``x``): the power law drawn through them."""
    if x not in ("params", "compute"):
        raise ValueError(f"x must be 'params' or 'compute', got {x!r}")
    xs = [float(p[x]) for p in points]
    ys = [float(p["loss"]) for p in points]
    traces = [dict(
        type="scatter", mode="markers+text", name="runs", x=xs, y=ys,
        text=[style.safe_label(p.get("name", "")) for p in points], textposition="top center",
        marker=dict(size=10, color=SERIES[0]),
        hovertemplate="%{text}: %{x:.3s} → %{y:.3f} nats<extra></extra>",
    )]  # fmt: skip
    sub = ""
    if fit and xs:
        grid = np.geomspace(min(xs) / 1.5, max(xs) * 1.5, 50)
        line = fit["floor"] + fit["a"] * grid ** (-fit["alpha"])
        traces.append(dict(type="scatter", mode="lines", name="power law", x=grid.tolist(), y=line.tolist(),
                           line=dict(color=SERIES[1], dash="dash"), hoverinfo="skip"))  # fmt: skip
        sub = f"<br><sup>fit: L = {fit['floor']:.3f} + {fit['a']:.3g} · {'N' if x == 'params' else 'C'}^(−{fit['alpha']:.3f})</sup>"
    layout = style.base_layout(
        title + sub, height=360, margin=dict(l=60, r=20, t=70, b=60), showlegend=False,
        xaxis=dict(type="log", title_text="parameters" if x == "params" else "training compute (FLOPs)"),
        yaxis=dict(type="log", title_text="final loss (nats per token)"),
    )  # fmt: skip
    return style.figure(data=traces, layout=layout)


def experiment_curves(runs: Sequence[Mapping], *, floor: float | None = None, title: str = "Training loss",
                      note: str = "") -> go.Figure:  # fmt: skip
    """``loss_curves`` of an experiment's runs side by side: the legend (one entry per run) under the
    plot, so it never covers the title, and the y axis zoomed to where the runs end (up to 1 nat above
    the highest end; double-click shows the whole curve)."""
    fig = loss_curves(runs, floor=floor, title=title, note=note)
    for trace in fig.data:
        if trace.name and trace.name.endswith("(validation)"):
            trace.showlegend = False  # the markers share their run's colour
    ends = [float(smooth(r["losses"])[-1]) for r in runs if len(_or_empty(r.get("losses")))]
    layout: dict = dict(height=420, margin=dict(l=60, r=20, t=70, b=100),
                        legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.2, yanchor="top"))  # fmt: skip
    low, high = fig.layout.yaxis.range or (None, None)
    if ends and low is not None and high is not None:
        layout["yaxis_range"] = [low, min(high, max(ends) + 1.0)]
    fig.update_layout(**layout)
    return fig


def gap_bars(runs: Sequence[Mapping], floor: float, *, title: str = "How far above the floor each run ended") -> go.Figure:
    """One bar per run ({"name", "cross_entropy"}): its held-out loss minus the entropy floor, the part
    still to learn (the bars start at the floor, so small differences show)."""
    names, gaps, colours, text = [], [], [], []
    for i, run in enumerate(runs):
        value = run.get("cross_entropy")
        if value is None or not math.isfinite(float(value)):
            continue
        names.append(style.safe_label(run.get("name", f"run {i + 1}")))
        gaps.append(float(value) - floor)
        colours.append(series_colour(i))
        text.append(f"{float(value):.3f} (gap {float(value) - floor:+.3f})")
    traces = [dict(type="bar", x=names, y=gaps, marker=dict(color=colours), text=text, textposition="outside",
                   cliponaxis=False, customdata=[g + floor for g in gaps], showlegend=False,
                   hovertemplate="%{x}: %{customdata:.3f} nats, %{y:.3f} above the floor<extra></extra>")]  # fmt: skip
    top = max(gaps + [0.0])
    layout = style.base_layout(
        f"{title}<br><sup>held-out loss minus the entropy floor ({floor:.3f} nats/token)</sup>", height=420,
        margin=dict(l=60, r=20, t=70, b=60), yaxis=dict(title_text="gap to the floor (nats per token)",
                                                         range=[min(gaps + [0.0]) * 1.2, top * 1.2 or 1.0]),
    )  # fmt: skip
    return style.figure(data=traces, layout=layout)


__all__ = ["experiment_curves", "final_losses", "gap_bars", "loss_curves", "scaling_chart", "series_colour",
           "smooth"]
