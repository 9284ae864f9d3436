"""Embedding spaces: projected token vectors, one token's path through the layers, sentence similarity.

``embedding_scatter`` draws n projected points in 2-D or 3-D, one trace per group (e.g. part of
speech) so the legend names the groups and clicking one hides it. ``layer_paths`` draws every
token at every layer faintly, coloured by layer, and one chosen token's path as a line whose
markers are numbered by layer. ``similarity_heatmap`` draws a sentence × sentence cosine matrix.

Reading the figures back:

* scatter: each trace is named after its group (HTML-escaped) and holds that group's points in
  their original order; ``customdata`` holds the points' row indices into ``coords``,
  ``hovertext`` their escaped labels, ``text`` the labels written beside them (2-D: escaped, as
  SVG text is HTML; 3-D: as written, WebGL draws them verbatim), ``x``/``y`` (``z``) their
  coordinates as given.
* paths: the trace "all tokens" has the (L+1)·T points in layer-major order (point l·T + t is
  token t after layer l), ``customdata`` rows ``[label, token, layer name]``; the trace "path"
  has ``x``/``y`` (``z``) = ``coords[:, token]``, ``text`` = the layer numbers 0..L and
  ``customdata`` the layer names.
* similarity: the heatmap has ``z`` = the matrix as given and
  ``customdata[i][j] == "‘text i’ ↔ ‘text j’"`` (escaped, shortened).
"""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style
from archplay.viz.attention import tick_positions

# One colour per part of speech, so a tag keeps its colour from figure to figure.
GROUP_COLOURS = {
    "NAME": "#d62728", "PRON": "#ff9896", "POSS": "#e377c2", "DET": "#7f7f7f", "NUM": "#bcbd22",
    "ADJ": "#ff7f0e", "NOUN": "#1f77b4", "VERB": "#2ca02c", "PREP": "#9467bd", "CONJ": "#8c564b",
    "ADV": "#17becf", "INTJ": "#f7b6d2", "PUNCT": "#c7c7c7", "other": "#aec7e8", "special": "#393b79",
}  # fmt: skip
_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
LAYER_SCALE = "Viridis"
PATH = style.CHOSEN
SIMILARITY_SCALE = "RdBu"  # -1 red, 0 white, +1 blue

_POINT_HOVER = "‘%{hovertext}’ · position %{customdata}<br>GROUP<extra></extra>"
_ALL_HOVER = "‘%{customdata[0]}’ · position %{customdata[1]}<br>%{customdata[2]}<extra></extra>"
_PATH_HOVER = "‘LABEL’ · position TOKEN<br>%{customdata}<extra></extra>"
_SIM_HOVER = "%{customdata}<br>cosine %{z:.3f}<extra></extra>"
_GL_TAG = re.compile(r"<(?=/?(?:b|i|sub|sup|br)\s*/?>)", re.IGNORECASE)  # the tags WebGL text interprets

# Label room in a 2-D scatter (pixels): a plot area about this wide (the sentence plot's at 1024 px)
# and high (the figure's 620 less margins), one character of the 12-px point labels, a line of them,
# a marker's radius.
PLOT_PX = 300
PLOT_HEIGHT_PX = 470
LABEL_CHAR_PX = 6.5
LINE_PX = 18
MARKER_PX = 6


def group_colour(group: str, index: int) -> str:
    """A group's colour: the part-of-speech palette, else the ``index``-th of a cycle."""
    return GROUP_COLOURS.get(str(group), _CYCLE[index % len(_CYCLE)])


def axis_titles(k: int, explained=None, name: str = "PC") -> list[str]:
    """``["PC1 (41.2%)", "PC2 (17.0%)", ...]``, or ``["PC1", ...]`` without explained variance."""
    if explained is None:
        return [f"{name}{i + 1}" for i in range(k)]
    share = style.to_numpy(explained)
    return [f"{name}{i + 1} ({share[i]:.1%})" for i in range(k)]


def _points(coords, n: int | None = None) -> np.ndarray:
    xyz = style.to_numpy(coords).astype(np.float64)
    if xyz.ndim != 2 or xyz.shape[1] not in (2, 3):
        raise ValueError(f"expected (n, 2) or (n, 3) coordinates, got shape {xyz.shape}")
    if n is not None and xyz.shape[0] != n:
        raise ValueError(f"{xyz.shape[0]} points for {n} labels")
    return xyz


def _xyz(xyz: np.ndarray) -> dict:
    """A trace's coordinate fields (and its type) from (m, 2|3) points."""
    out = dict(type="scatter3d" if xyz.shape[1] == 3 else "scatter", x=xyz[:, 0], y=xyz[:, 1])
    if xyz.shape[1] == 3:
        out["z"] = xyz[:, 2]
    return out


def _axes_layout(titles: list[str]) -> dict:
    """2-D: equal scales so distances read true; 3-D: a scene with titled axes."""
    if len(titles) == 3:
        return dict(scene=dict(xaxis_title=titles[0], yaxis_title=titles[1], zaxis_title=titles[2],
                               aspectmode="data"))  # fmt: skip
    return dict(
        xaxis=dict(title_text=titles[0], zeroline=False),
        yaxis=dict(title_text=titles[1], zeroline=False, scaleanchor="x", scaleratio=1),
    )


def embedding_scatter(
    coords,
    labels,
    groups=None,
    *,
    title: str = "Embedding space",
    explained=None,
    axis_name: str = "PC",
    max_text: int = 60,
    text_limit: int | None = None,
) -> go.Figure:
    """Scatter of n projected points (n, 2) or (n, 3), one trace per group in order of first appearance.

    ``labels``: one display label per point (shown beside it when n <= ``max_text``, cut to
    ``text_limit`` characters when given, and whole on hover with its position); ``groups``: one
    group name per point (None: a single group "tokens"); ``explained``: the variance share per
    axis, for the axis titles. In 2-D the axis ranges leave room for the labels (``_label_room``).
    """
    xyz = _points(coords, len(labels))
    groups = ["tokens"] * len(labels) if groups is None else [str(g) for g in groups]
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    flat, shown = xyz.shape[1] == 2, len(labels) <= max_text
    written = [style.short_label(str(s), text_limit) if text_limit else str(s) for s in labels]
    text = np.array([style.safe_label(s) if flat else _gl_text(s) for s in written], dtype=object)
    hover = np.array([style.safe_label(s) for s in labels], dtype=object)
    where, ranges = _label_room(xyz, written) if flat and shown else (None, {})
    traces = []
    for n, group in enumerate(dict.fromkeys(groups)):
        idx = np.array([i for i, g in enumerate(groups) if g == group])
        name = style.safe_label(group)
        traces.append(dict(
            _xyz(xyz[idx]), name=name, text=text[idx], hovertext=hover[idx], customdata=idx,
            mode="markers+text" if shown else "markers",
            textposition="top center" if where is None else where[idx],
            marker=dict(size=9 if flat else 5, color=group_colour(group, n), opacity=0.85),
            hovertemplate=_POINT_HOVER.replace("GROUP", name),
        ))  # fmt: skip
    layout = dict(_axes_layout(axis_titles(xyz.shape[1], explained, axis_name)), legend_title_text="group")
    for axis, span in ranges.items():
        layout[axis]["range"] = span
    return style.figure(data=traces, layout=style.base_layout(title, height=620, **layout))


def _gl_text(label: str) -> str:
    """A label for a 3-D trace's ``text``: WebGL draws it verbatim (``&lt;`` would show as such), except
    for the tags ``<b> <i> <sub> <sup> <br>``, which a zero-width space after ``<`` makes plain text."""
    return _GL_TAG.sub("<\u200b", label)


def _label_room(xy: np.ndarray, labels: list[str]) -> tuple[np.ndarray, dict]:
    """Where each 2-D point's label goes and the axis ranges that keep the labels inside the plot.

    Labels of the left third start at their point and run right, those of the right third end at
    it, the rest are centred; the x range is widened until every label fits a plot ``PLOT_PX``
    wide, the y range by a line of text above the top points (the labels sit above their points).
    """
    x, y = xy[:, 0], xy[:, 1]
    span = float(np.ptp(x)) or 1.0
    third = np.floor(3 * (x - x.min()) / span).clip(0, 2).astype(int)  # 0 left, 1 middle, 2 right
    where = np.array(["top right", "top center", "top left"], dtype=object)[third]
    width = np.array([LABEL_CHAR_PX * len(s) for s in labels]) + 2 * MARKER_PX
    left = np.choose(third, [np.full_like(width, MARKER_PX), width / 2, width])  # pixels left of the point
    x_lo, x_hi = _pads(left / PLOT_PX, x - x.min(), (width - left) / PLOT_PX, x.max() - x)
    marker, line = np.full_like(width, MARKER_PX), np.full_like(width, MARKER_PX + LINE_PX)  # a label sits above
    y_lo, y_hi = _pads(marker / PLOT_HEIGHT_PX, y - y.min(), line / PLOT_HEIGHT_PX, y.max() - y)
    ranges = {"xaxis": [float(x.min()) - x_lo, float(x.max()) + x_hi],
              "yaxis": [float(y.min()) - y_lo, float(y.max()) + y_hi]}  # fmt: skip
    return where, ranges


def _pads(before: np.ndarray, room_before: np.ndarray, after: np.ndarray, room_after: np.ndarray,
          ) -> tuple[float, float]:  # fmt: skip
    """(low, high) data-unit paddings of one axis such that each point's label, reaching ``before``
    and ``after`` of the plot's size below and above it, fits: the point lies ``room_before`` /
    ``room_after`` data units inside the extremes, and the plot spans the data plus both paddings.

    A label reaching beyond 45% of the plot is let go there, so huge labels cannot squeeze the points.
    """
    span = float(room_before.max()) or 1.0
    a, b = np.minimum(before, 0.45), np.minimum(after, 0.45)
    lo = hi = floor = 0.02 * span
    for _ in range(100):  # a contraction (the shares add up to at most 0.9): converges
        total = span + lo + hi
        lo, hi = max(float((a * total - room_before).max()), floor), max(float((b * total - room_after).max()), floor)
    return lo, hi


def layer_names(n_layers_plus_one: int) -> list[str]:
    """``["embeddings", "layer 1", ..., "layer L"]``."""
    return ["embeddings"] + [f"layer {i}" for i in range(1, n_layers_plus_one)]


def layer_paths(
    coords,
    labels,
    highlight: int | None = None,
    *,
    title: str = "Tokens through the layers",
    explained=None,
    names: list[str] | None = None,
    axis_name: str = "PC",
) -> go.Figure:
    """Every token at every layer, faint and coloured by layer, and token ``highlight``'s path as a line.

    ``coords`` (L+1, T, 2|3): token t after layer l (l = 0: the embeddings), all in one basis
    (``archplay.models.analysis.embeddings.layer_projection``); ``labels``: T token labels; ``names``: L+1 layer
    names (default ``layer_names``).
    """
    c = style.to_numpy(coords).astype(np.float64)
    if c.ndim != 3 or c.shape[1] != len(labels) or c.shape[2] not in (2, 3):
        raise ValueError(f"expected (layers, {len(labels)} tokens, 2 or 3) coordinates, got shape {c.shape}")
    L1, T, k = c.shape
    names = list(names) if names is not None else layer_names(L1)
    if len(names) != L1:
        raise ValueError(f"{len(names)} layer names for {L1} layers")
    if highlight is not None and not 0 <= highlight < T:
        raise ValueError(f"token {highlight} is outside 0..{T - 1}")
    safe = [style.safe_label(s) for s in labels]
    layer_of = np.repeat(np.arange(L1), T)  # (L1*T,) layer-major
    token_of = np.tile(np.arange(T), L1)
    customdata = np.empty((L1 * T, 3), dtype=object)
    customdata[:, 0] = [safe[t] for t in token_of]
    customdata[:, 1] = token_of
    customdata[:, 2] = [style.safe_label(names[l]) for l in layer_of]
    faint = dict(
        _xyz(c.reshape(L1 * T, k)), name="all tokens", mode="markers", customdata=customdata,
        hovertemplate=_ALL_HOVER,
        marker=dict(size=4 if k == 3 else 7, color=layer_of, colorscale=LAYER_SCALE, cmin=0, cmax=max(L1 - 1, 1),
                    opacity=0.35, colorbar=dict(title=dict(text="layer"), thickness=14, len=0.6)),
    )  # fmt: skip
    traces = [faint]
    if highlight is not None:
        traces.append(dict(
            _xyz(c[:, highlight]), name="path", mode="lines+markers+text",
            text=[str(l) for l in range(L1)], textposition="top center",
            customdata=[style.safe_label(n) for n in names],
            hovertemplate=_PATH_HOVER.replace("LABEL", safe[highlight]).replace("TOKEN", str(highlight)),
            line=dict(color=PATH, width=3), marker=dict(size=6 if k == 3 else 10, color=PATH),
        ))  # fmt: skip
    if highlight is not None:
        title = f"{title}: ‘{safe[highlight]}’ (position {highlight})"
    layout = dict(_axes_layout(axis_titles(k, explained, axis_name)), showlegend=False)
    return style.figure(data=traces, layout=style.base_layout(title, height=620, **layout))


def similarity_heatmap(matrix, texts, *, title: str = "Sentence similarity (cosine)", max_ticks: int = 32) -> go.Figure:
    """Heatmap of an (n, n) cosine-similarity matrix between ``texts``; row i and column j are text i and j.

    The colour runs from -1 (red) through 0 (white) to +1 (blue); up to 12 texts the values are
    written in the cells.
    """
    z = style.to_numpy(matrix).astype(np.float64)
    n = len(texts)
    if z.shape != (n, n):
        raise ValueError(f"expected an ({n}, {n}) matrix for {n} texts, got shape {z.shape}")
    short = [f"‘{style.safe_label(style.short_label(str(t), 40))}’" for t in texts]
    customdata = np.array([[f"{a} ↔ {b}" for b in short] for a in short], dtype=object).reshape(n, n)
    heatmap = dict(
        type="heatmap", z=z, x=np.arange(n), y=np.arange(n), customdata=customdata, hovertemplate=_SIM_HOVER,
        colorscale=SIMILARITY_SCALE, zmin=-1.0, zmax=1.0, zmid=0.0, xgap=1, ygap=1,
        colorbar=dict(title=dict(text="cosine"), thickness=14),
    )  # fmt: skip
    if n <= 12:
        heatmap.update(texttemplate="%{z:.2f}", textfont=dict(size=11))
    ticks = tick_positions(n, max_ticks)
    ticktext = [style.safe_label(style.short_label(str(texts[i]), 24)) for i in ticks]
    axis = dict(tickmode="array", tickvals=ticks.tolist(), ticktext=ticktext, showgrid=False, zeroline=False)
    layout = dict(
        xaxis=dict(axis, tickangle=-45 if n > 4 else 0, constrain="domain"),
        yaxis=dict(axis, autorange="reversed", scaleanchor="x", scaleratio=1, constrain="domain"),
    )
    return style.figure(data=[heatmap], layout=style.base_layout(title, height=560, **layout))
