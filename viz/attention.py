"""Attention heatmaps: one layer and head's weights, and the mask that says who may attend to whom.

Both figures use numeric axes (query i is row i, key j is column j) so repeated token labels
stay separate. The labels are carried as tick text and in each cell's hover ``customdata``:
``customdata[i][j] == "‘<query label i>’ → ‘<key label j>’"`` (the mask adds
``" · may attend"`` or ``" · masked"``), labels HTML-escaped (see ``viz.style.safe_label``).
One string per cell rather than a ``[query, key]`` pair keeps a 512 x 512 figure's JSON
several times cheaper to build and serialise.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style

# ``%{x:d}`` formats the raw index; a bare ``%{x}`` would show the axis tick text where there is one.
_ATTN_HOVER = "QUERY %{y:d} → KEY %{x:d}<br>%{customdata}<br>VALUE %{z:.4f}<extra></extra>"
_MASK_HOVER = "query %{y:d} → key %{x:d}: %{z}<br>(1 = may attend, 0 = masked)<extra></extra>"

# Per-cell hover labels up to 256 × 256 cells; beyond, the hover gives positions only (the tick
# labels name the tokens): 512 × 512 label strings alone would be ~6 MB of JSON per redraw.
LABELLED_CELLS = 256 * 256
_ATTN_HOVER_POSITIONS = "QUERY %{y:d} → KEY %{x:d}<br>VALUE %{z:.4f}<extra></extra>"

# Long inputs: one large weight (query 0 can only attend to itself, a first-token "sink") would
# set the top of the colour scale and leave every other cell near white. The colour scale tops out
# at the 99th percentile of the positive weights outside the first key column instead (when there
# are at least CAP_MIN_CELLS of them); heavier cells take the darkest colour, the colour bar says so
# and the hover gives every exact value.
CAP_QUANTILE = 0.99
CAP_MIN_CELLS = 100

GRID_GAP = 0.012  # between the thumbnails of ``attention_grid``, as a fraction of the figure

QUERY_TITLE = "query (attending token)"
KEY_TITLE = "key (attended-to token)"


def attention_heatmap(
    weights,
    query_labels,
    key_labels,
    *,
    title: str = "Attention",
    max_ticks: int = 48,
    value_name: str = "weight",
    query_title: str = QUERY_TITLE,
    key_title: str = KEY_TITLE,
    query_word: str = "query",
    key_word: str = "key",
    cells: bool = True,
) -> go.Figure:
    """Heatmap of attention probabilities: row i is query token i, column j is key token j.

    ``weights`` is a (Tq, Tk) array or tensor for one layer and head; ``z`` holds it unchanged.
    The colour runs from 0 (white; masked future positions are exactly 0) to the largest weight,
    or on a long input to a cap (``colour_top``), which the colour bar states. Hovering a cell
    names the query token, the key token and the weight (beyond ``LABELLED_CELLS`` cells, their
    positions: the tick labels name the tokens). ``value_name`` names
    the value in the hover and on the colour bar; ``query_title``/``key_title`` title the axes
    and ``query_word``/``key_word`` name the row and column in the hover (cross-attention:
    target rows, source columns). ``cells=False`` leaves out the per-cell hover labels (the page
    makes them itself).
    """
    z = _matrix(weights, query_labels, key_labels)
    zmax, capped = colour_top(z)
    labelled = z.size <= LABELLED_CELLS
    heatmap = dict(
        type="heatmap",
        z=z,
        x=np.arange(z.shape[1]),
        y=np.arange(z.shape[0]),
        customdata=pair_labels(query_labels, key_labels) if labelled and cells else None,
        hovertemplate=(
            (_ATTN_HOVER if labelled else _ATTN_HOVER_POSITIONS).replace("QUERY", style.safe_label(query_word))
            .replace("KEY", style.safe_label(key_word))
            .replace("VALUE", style.safe_label(value_name))
        ),
        colorscale=style.ATTENTION_SCALE,
        zmin=0.0,
        zmax=zmax if zmax > 0 else 1.0,
        colorbar=dict(title=dict(text=colour_title(style.safe_label(value_name), zmax, capped)), thickness=14),
    )
    return _token_figure(heatmap, query_labels, key_labels, title, max_ticks, query_title, key_title)


def mark_cells(fig: go.Figure, cells, *, name: str = "gold antecedent") -> go.Figure:
    """Frame each (row, column) cell of a token heatmap (``attention_heatmap``'s numeric axes), e.g. each
    pronoun's gold antecedent, with a key above the plot naming the frames; ``fig`` unchanged without cells."""
    cells = [(int(q), int(k)) for q, k in cells]
    if not cells:
        return fig
    frames = [dict(type="rect", xref="x", yref="y", x0=k - 0.5, x1=k + 0.5, y0=q - 0.5, y1=q + 0.5,
                   line=dict(color=style.GOLD, width=2.5), fillcolor="rgba(0,0,0,0)", layer="above")
              for q, k in cells]  # fmt: skip
    key = dict(text=f"<span style='color:{style.GOLD}'>▢</span> {style.safe_label(name)}", xref="paper",
               yref="paper", x=1.0, y=1.0, xanchor="right", yanchor="bottom", showarrow=False, font=dict(size=12))
    fig.update_layout(shapes=[*(fig.layout.shapes or ()), *frames], annotations=[*(fig.layout.annotations or ()), key])
    return fig


def colour_top(z: np.ndarray) -> tuple[float, bool]:
    """(the top of the colour scale, whether it is a cap below the largest value) for the map ``z``.

    The largest finite value; or, when at least ``CAP_MIN_CELLS`` positive values lie outside the
    first column, their ``CAP_QUANTILE`` quantile (numpy's linear interpolation) if that is lower.
    The page's script computes the same (``app/explore/page.js``: ``colourTop``).
    """
    finite = z[np.isfinite(z)]
    top = float(finite.max()) if finite.size else 0.0
    rest = z[:, 1:] if z.ndim == 2 else z
    positive = rest[np.isfinite(rest) & (rest > 0)]
    if positive.size < CAP_MIN_CELLS:
        return top, False
    cap = float(np.quantile(positive.astype(np.float64), CAP_QUANTILE))
    return (cap, True) if 0 < cap < top else (top, False)


def colour_title(name: str, top: float, capped: bool) -> str:
    """The colour bar's title: the value's name, and the cap when there is one."""
    return f"{name}<br><sub>colour capped<br>at {top:.3g} (99th<br>percentile)</sub>" if capped else name


def attention_mask_heatmap(
    allowed, query_labels, key_labels, *, title: str = "Attention mask", max_ticks: int = 48
) -> go.Figure:
    """Two-colour map of a boolean (Tq, Tk) mask: 1 where query i may attend to key j, 0 where masked.

    ``z`` holds the mask as 0/1 integers; hover gives the query and key positions and the verdict
    (no per-cell label strings: a mask is a rule about positions, and at 512 tokens those strings
    would make it the page's heaviest figure).
    """
    mask = _matrix(allowed, query_labels, key_labels).astype(bool)
    z = mask.astype(np.int8)
    heatmap = dict(
        type="heatmap",
        z=z,
        x=np.arange(z.shape[1]),
        y=np.arange(z.shape[0]),
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
    return _token_figure(heatmap, query_labels, key_labels, title, max_ticks, QUERY_TITLE, KEY_TITLE)


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


def pair_labels(query_labels, key_labels, suffix=None) -> np.ndarray:
    """Per-cell hover text ``‘query’ → ‘key’`` (plus ``suffix[i, j]`` when given), (Tq, Tk).

    Vectorised string arrays: 512 x 512 cells take milliseconds, not a Python loop's ~0.2 s.
    """
    q = np.array([f"‘{style.safe_label(s)}’ → " for s in query_labels], dtype=str)
    k = np.array([f"‘{style.safe_label(s)}’" for s in key_labels], dtype=str)
    text = np.strings.add(q[:, None], k[None, :])
    return text if suffix is None else np.strings.add(text, suffix)


def _token_figure(
    heatmap: dict, query_labels, key_labels, title: str, max_ticks: int, query_title: str, key_title: str
) -> go.Figure:
    """A figure of ``heatmap`` with token-labelled numeric axes, query 0 at the top, square cells.

    The trace is passed as a dict: plotly validates it once instead of deep-copying a ready
    ``go.Heatmap`` (which costs ~0.5 s for 512 x 512 per-cell hover strings).
    """
    xt = tick_positions(len(key_labels), max_ticks)
    yt = tick_positions(len(query_labels), max_ticks)
    crowded = max(len(xt), len(yt)) > 24
    axis = dict(
        tickmode="array",
        tickfont=dict(size=9 if crowded else 12),
        showgrid=False,
        zeroline=False,
        constrain="domain",
    )
    layout = dict(
        xaxis=dict(
            axis,
            title_text=key_title,
            tickvals=xt.tolist(),
            ticktext=tick_text(key_labels, xt),
            tickangle=-90 if crowded else (-45 if len(xt) > 12 else 0),
        ),
        yaxis=dict(
            axis,
            title_text=query_title,
            tickvals=yt.tolist(),
            ticktext=tick_text(query_labels, yt),
            autorange="reversed",
            scaleanchor="x",
            scaleratio=1,
        ),
    )
    return style.figure(data=[heatmap], layout=style.base_layout(title, height=620, plot_bgcolor="white", **layout))


def tick_text(labels, positions) -> list[str]:
    """Escaped, shortened labels at the tick positions."""
    return [style.safe_label(style.short_label(str(labels[i]))) for i in positions]


def downsample(z: np.ndarray, max_cells: int) -> np.ndarray:
    """``z`` (R, C) averaged over blocks so neither side exceeds ``max_cells`` (unchanged if it fits).

    Blocks are contiguous runs of rows (columns), as even as the sizes allow; averaging keeps a
    thumbnail's rows summing to one like the attention rows they stand for.
    """
    for axis in (0, 1):
        n = z.shape[axis]
        if n > max_cells:
            edges = np.linspace(0, n, max_cells + 1).round().astype(int)
            sums = np.add.reduceat(z, edges[:-1], axis=axis)
            sizes = np.diff(edges).reshape((-1, 1) if axis == 0 else (1, -1))
            z = sums / sizes
    return z


def attention_grid(
    maps, *, selected: tuple[int, int] | None = None, max_cells: int = 32, title: str = "Every layer and head",
    row_name: str = "layer", col_name: str = "head",
) -> go.Figure:  # fmt: skip
    """Small heatmaps of every layer (rows, layer 0 at the top) and head (columns).

    ``maps`` (L, H, Tq, Tk). Each thumbnail is downsampled to at most ``max_cells`` a side
    (``downsample``); all share one colour scale. The ``selected`` (layer, head) gets a frame.
    Trace ``i`` is layer ``i // H``, head ``i % H``; its ``name`` says so.
    """
    maps = style.to_numpy(maps)
    if maps.ndim != 4:
        raise ValueError(f"expected (layers, heads, queries, keys) maps, got shape {maps.shape}")
    L, H = maps.shape[:2]
    gap = GRID_GAP
    w, h = (1 - gap * (H - 1)) / H, (1 - gap * (L - 1)) / L
    traces, layout, shapes = [], {}, []
    zmax = float(maps.max()) if maps.size else 1.0
    for i in range(L * H):
        layer, head = divmod(i, H)
        n = "" if i == 0 else i + 1  # plotly names the first axes "x" / "xaxis", then "x2" / "xaxis2", …
        x0, y1 = head * (w + gap), 1 - layer * (h + gap)
        z = downsample(maps[layer, head], max_cells).astype(np.float32)  # half the JSON of float64
        traces.append(dict(
            type="heatmap", z=z, xaxis=f"x{n}", yaxis=f"y{n}", name=f"{row_name} {layer}, {col_name} {head}",
            coloraxis="coloraxis", hovertemplate=f"{row_name} {layer}, {col_name} {head}<br>"
            "row %{y} → col %{x}: %{z:.3f}<extra></extra>",
        ))  # fmt: skip
        common = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="")
        layout[f"xaxis{n}"] = dict(common, domain=[x0, x0 + w], anchor=f"y{n}")
        layout[f"yaxis{n}"] = dict(common, domain=[y1 - h, y1], anchor=f"x{n}", autorange="reversed")
        if (layer, head) == selected:
            shapes.append(dict(type="rect", xref="paper", yref="paper", x0=x0 - gap / 2, x1=x0 + w + gap / 2,
                               y0=y1 - h - gap / 2, y1=y1 + gap / 2, line=dict(color=style.CHOSEN, width=3)))  # fmt: skip
    cell = max(34, min(90, 720 // max(H, 1)))
    return style.figure(data=traces, layout=style.base_layout(
        title, height=min(1400, 120 + L * cell), margin=dict(l=30, r=30, t=70, b=20), shapes=shapes,
        coloraxis=dict(colorscale=style.ATTENTION_SCALE, cmin=0, cmax=zmax if zmax > 0 else 1, showscale=False),
        plot_bgcolor="white", **layout,
    ))  # fmt: skip
