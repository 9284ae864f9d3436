"""Block anatomy: a diagram of a model's blocks with this input's tensor shapes, and the residual stream.

``block_diagram(stacks)`` draws each stack (``archplay.models.analysis.anatomy.Stack``, or anything
with its attributes: ``name``, ``layers``, ``embed``/``block``/``out`` lists of parts with ``name``,
``kind``, ``shape_in``, ``shape_out``, ``detail``, ``view``) as a column of boxes from the embeddings
down to the output: the block's parts inside a dashed bracket marked "× N layers", arrows between the
parts, and the residual connection as a line that leaves the stream before each sublayer and joins
it again at the add. An encoder-decoder's two stacks stand side by side, the encoder's output led
into the decoder's cross-attention. Box colours are fixed light tints with dark ink, so the boxes
read the same in the page's light and dark themes.

``residual_figure(stacks, token_labels)`` draws, per stack, how much each layer writes into each
token's residual stream (‖h_l − h_(l−1)‖, a heatmap of layers × tokens) and, below it, the length of
the stream itself layer by layer (mean over tokens, the band from the shortest to the longest).

Reading the figures back:

- diagram: one marker trace per stack, named by ``DIAGRAM`` and the stack's index (``"parts 0"``),
  one invisible point per part at its box's centre, in order embed, block, out; ``customdata[i]`` =
  ``[part name (escaped), shape_in, shape_out, view or ""]`` and ``hovertext`` the part's full
  description. Each box's label is a layout annotation with ``name`` ``"part s.i"``; its text has
  the escaped name and the output shape, e.g. ``"(1, 7, 128)"``. The bracket's label is the
  annotation named ``"layers s"`` ("× 4 layers").
- residual: per stack s, a heatmap ``"contribution s"`` with ``z`` (layers, T) = ``contribution``,
  ``y`` = 1..layers, ``x`` = 0..T-1 and ``customdata[l][t]`` the hover text; a line
  ``"stream s"`` with ``x`` = 0..layers and ``y`` = the mean over tokens of ``stream`` (layers + 1,
  T); a line ``"mean contribution s"`` with ``x`` = 1..layers, the mean over tokens of
  ``contribution``; and the band ``"stream s range"`` (two traces: ``y`` the minimum, then the
  maximum, over tokens).
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style
from archplay.viz.attention import tick_positions, tick_text

DIAGRAM = "parts"
CONTRIBUTION = "contribution"
STREAM = "stream"
MEAN_CONTRIBUTION = "mean contribution"

FILLS = {  # light tints: dark ink reads on them in either theme
    "embed": "#dbeafe", "positions": "#ede9fe", "norm": "#f3f4f6", "attention": "#fef3c7",
    "cross-attention": "#ffedd5", "mlp": "#dcfce7", "experts": "#f3e8ff", "scan": "#cffafe",
    "add": "#ffffff", "head": "#e0e7ff",
}  # fmt: skip
EDGES = {"attention": "#d97706", "cross-attention": "#ea580c", "experts": "#9333ea", "scan": "#0891b2",
         "positions": "#7c3aed"}  # fmt: skip
EDGE = "#6b7280"
INK = "#111827"  # text inside the boxes
MUTED = "#4b5563"
LINE = "#6b7280"  # arrows and the residual line: mid grey, visible on white and on dark grey
RESIDUAL = "#2563eb"
BRACKET = "#9ca3af"
STREAM_COLOUR = style.FINAL
CONTRIBUTION_COLOUR = style.TEMPERED
HEAT_SCALE = "YlGnBu"
MAX_TICKS = 40  # token labels on a heatmap's axis
STREAM_PX, GAP_OUT = 150, 90  # the stream's line panel; between two stacks' panels

COLUMN = 1.6  # data units between two stacks' centres
BOX_W, ADD_W = 1.0, 0.46  # box widths (data units)
SKIP_X = 0.64  # the residual line's offset right of a column's centre
NAME_CHARS = (64, 36)  # characters of a part's name on one line: one stack, more stacks
DETAIL_CHARS = 78  # the detail line (shown in the box for a single stack; always in the hover)
OPENS = "↗"  # marks a part that has its own view
# Heights in pixels: the y axis counts pixels downward from the stacks' names (1 unit = 1 px).
LINE_PX, BOX_PAD = 15, 12  # a line of a box's text; above and below the text together
GAP = 24  # between two boxes
BRACKET_GAP = 44  # between a box and the next across the bracket's edge (room for the edge and its label)
HEADER_PX = 30  # the stack's name


def block_diagram(stacks: Sequence, *, title: str = "Block anatomy") -> go.Figure:
    """The stacks' parts as boxes with their shapes, arrows, the residual line and "× N layers"."""
    if not stacks:
        raise ValueError("no stacks to draw")
    wide = len(stacks) == 1
    columns = [_column(s, i, wide) for i, s in enumerate(stacks)]
    shapes, annotations, data = [], [], []
    for i, (stack, col) in enumerate(zip(stacks, columns)):
        _draw_column(stack, col, i, shapes, annotations, data)
    for i in range(1, len(columns)):
        _cross_link(columns[i - 1], columns[i], shapes, annotations)
    bottom = min(col["bottom"] for col in columns) - 8
    x0, x1 = -BOX_W / 2 - 0.22, (len(stacks) - 1) * COLUMN + SKIP_X + 0.2
    hidden = dict(visible=False, fixedrange=True, zeroline=False, showgrid=False)
    top_margin, bottom_margin = 74, 10
    layout = dict(
        xaxis=dict(hidden, range=[x0, x1]), yaxis=dict(hidden, range=[bottom, 0]),
        shapes=shapes, annotations=annotations, showlegend=False, hovermode="closest", hoverdistance=60,
        margin=dict(l=10, r=10, t=top_margin, b=bottom_margin), dragmode=False,
    )  # fmt: skip
    subtitle = "shapes for this input · the blue line is the residual stream · click a box marked ↗ for its view"
    return style.figure(data=data, layout=style.base_layout(f"{title}<br><sup>{subtitle}</sup>",
                                                            height=int(-bottom) + top_margin + bottom_margin,
                                                            **layout))  # fmt: skip


def _parts(stack) -> list[tuple[str, object]]:
    return [("embed", p) for p in stack.embed] + [("block", p) for p in stack.block] + [("out", p) for p in stack.out]


def _column(stack, index: int, wide: bool) -> dict:
    """Where each of the stack's boxes goes (y in pixels, going down from the stack's name) and its text."""
    cx = index * COLUMN
    boxes, y, section_before = [], -HEADER_PX, None
    bracket = [None, None]
    for section, part in _parts(stack):
        crossing = section_before is not None and section != section_before and "block" in (section, section_before)
        y -= (BRACKET_GAP if crossing else GAP) if boxes else 0
        if crossing and section == "block":
            bracket[0] = y + BRACKET_GAP - 12  # just under the box above
        if crossing and section_before == "block":
            bracket[1] = y + BRACKET_GAP - 14  # just under the block's last box
        text, n_lines = _label(part, wide)
        h = BOX_PAD + LINE_PX * n_lines
        w = ADD_W if part.kind == "add" else BOX_W
        boxes.append(dict(x=cx, y=y - h / 2, w=w, h=h, part=part, text=text, section=section))
        y -= h
        section_before = section
    if bracket[0] is None and any(b["section"] == "block" for b in boxes):
        bracket[0] = -HEADER_PX + 10
    if bracket[0] is not None and bracket[1] is None:
        bracket[1] = y - 12
    return dict(cx=cx, boxes=boxes, bottom=y, block=tuple(bracket), post=_post_norm(stack.block),
                parallel=bool(getattr(stack, "parallel", False)))


def _post_norm(block) -> bool:
    """Whether the norms come after the adds (post-norm: the block ends with a norm)."""
    return bool(block) and block[-1].kind == "norm"


def _label(part, wide: bool) -> tuple[str, int]:
    """A box's text: the name (wrapped), the shape, and for a single stack the detail; and its line count."""
    limit = NAME_CHARS[0] if wide else NAME_CHARS[1]
    name = part.name + (f" {OPENS}" if part.view else "")
    name_lines = textwrap.wrap(name, limit, break_on_hyphens=False)[:2] or [""]
    lines = [f"<b>{html.escape(s, quote=False)}</b>" for s in name_lines]
    shape = _shape(part)
    detail = (part.detail or "") if wide and part.kind != "add" else ""
    if detail:
        shape += f" · {style.short_label(detail, DETAIL_CHARS)}"
    lines.append(f"<span style='font-size:10.5px'>{html.escape(shape, quote=False)}</span>")
    return "<br>".join(lines), len(lines)


def _shape(part) -> str:
    shape_in, shape_out = tuple(part.shape_in), tuple(part.shape_out)
    return str(shape_out) if shape_in == shape_out else f"{shape_in} → {shape_out}"


def _hover(part, stack_name: str) -> str:
    lines = [f"<b>{style.safe_label(part.name)}</b> · {style.safe_label(stack_name)}",
             f"in {tuple(part.shape_in)} → out {tuple(part.shape_out)}"]  # fmt: skip
    if part.detail:
        lines += [style.safe_label(s) for s in textwrap.wrap(part.detail, 70)]
    if part.view:
        lines.append(f"opens: {style.safe_label(part.view)} (the menu under the diagram)")
    return "<br>".join(lines)


def _draw_column(stack, col: dict, s: int, shapes: list, annotations: list, data: list) -> None:
    cx, boxes = col["cx"], col["boxes"]
    annotations.append(dict(text=f"<b>{style.safe_label(stack.name)}</b>", x=cx, y=-HEADER_PX / 2, xref="x",
                            yref="y", showarrow=False, yanchor="middle", font=dict(size=13)))  # fmt: skip
    top, bottom = col["block"]
    if top is not None:  # the block, repeated: a dashed bracket with "× N layers"
        right = cx + SKIP_X + 0.12
        shapes.append(dict(type="rect", x0=cx - BOX_W / 2 - 0.1, x1=right, y0=bottom, y1=top, xref="x", yref="y",
                           line=dict(color=BRACKET, width=1.5, dash="dash"), fillcolor="rgba(0,0,0,0)", layer="below"))
        n = int(stack.layers)
        annotations.append(dict(name=f"layers {s}", text=f"<b>× {n} layer{'s' if n != 1 else ''}</b>", x=right,
                                y=top, xref="x", yref="y", xanchor="right", yanchor="middle", showarrow=False,
                                bgcolor="#f9fafb", bordercolor=BRACKET, borderwidth=1, borderpad=2,
                                font=dict(size=12, color=INK)))  # fmt: skip
    for a, b in zip(boxes, boxes[1:]):  # the stream, part to part
        annotations.append(_arrow(cx, a["y"] - a["h"] / 2, cx, b["y"] + b["h"] / 2, LINE))
    _skips(col, shapes, annotations)
    for j, b in enumerate(boxes):
        part = b["part"]
        shapes.append(dict(type="rect", x0=b["x"] - b["w"] / 2, x1=b["x"] + b["w"] / 2, y0=b["y"] - b["h"] / 2,
                           y1=b["y"] + b["h"] / 2, xref="x", yref="y", fillcolor=FILLS.get(part.kind, "#f3f4f6"),
                           line=dict(color=EDGES.get(part.kind, EDGE), width=2 if part.view else 1),
                           layer="above"))  # fmt: skip
        annotations.append(dict(name=f"part {s}.{j}", text=b["text"], x=b["x"], y=b["y"], xref="x", yref="y",
                                showarrow=False, font=dict(size=12, color=INK), align="center"))  # fmt: skip
    data.append(dict(
        type="scatter", name=f"{DIAGRAM} {s}", x=[b["x"] for b in boxes], y=[b["y"] for b in boxes], mode="markers",
        marker=dict(size=28, opacity=0), hoverinfo="text", hovertext=[_hover(b["part"], stack.name) for b in boxes],
        customdata=[[style.safe_label(b["part"].name), str(tuple(b["part"].shape_in)),
                     str(tuple(b["part"].shape_out)), b["part"].view or ""] for b in boxes],
    ))  # fmt: skip


def _skips(col: dict, shapes: list, annotations: list) -> None:
    """The residual connections: from the stream above each sublayer, around it, into its add."""
    block = [b for b in col["boxes"] if b["section"] == "block"]
    cx, x = col["cx"], col["cx"] + SKIP_X
    first = col["boxes"].index(block[0]) if block else 0
    for a, add in enumerate(block):
        if add["part"].kind != "add":
            continue
        start = a - 1  # the sublayer; before it its norm, in a pre-norm block
        if not col["post"] and start >= 1 and block[start]["part"].kind == "norm":  # a norm after it (sandwich, OLMo 2)
            start -= 1
        if not col["post"] and start >= 1 and block[start - 1]["part"].kind == "norm":
            start -= 1
        if col["parallel"]:  # one add for both branches: the stream goes around the whole block
            start = 0
        top = block[start]
        above = col["boxes"][first + start - 1] if first + start >= 1 else None
        y0 = (top["y"] + top["h"] / 2 + above["y"] - above["h"] / 2) / 2 if above else top["y"] + top["h"] / 2 + 10
        y1 = add["y"]
        shapes.append(dict(type="path", path=f"M {cx},{y0} L {x},{y0} L {x},{y1}", xref="x", yref="y",
                           line=dict(color=RESIDUAL, width=2), layer="below"))  # fmt: skip
        annotations.append(_arrow(x, y1, add["x"] + add["w"] / 2, y1, RESIDUAL))


def _cross_link(enc: dict, dec: dict, shapes: list, annotations: list) -> None:
    """The encoder's output into each cross-attention of the next stack."""
    targets = [b for b in dec["boxes"] if b["part"].kind == "cross-attention"]
    if not targets or not enc["boxes"]:
        return
    last = enc["boxes"][-1]
    x_out, y_out = last["x"] + last["w"] / 2, last["y"]
    x_mid = (enc["cx"] + SKIP_X + dec["cx"] - BOX_W / 2) / 2
    for t in targets:
        y = t["y"]
        shapes.append(dict(type="path", path=f"M {x_out},{y_out} L {x_mid},{y_out} L {x_mid},{y}", xref="x", yref="y",
                           line=dict(color=EDGES["cross-attention"], width=2, dash="dot"), layer="below"))  # fmt: skip
        annotations.append(_arrow(x_mid, y, t["x"] - t["w"] / 2, y, EDGES["cross-attention"]))
    annotations.append(dict(text="keys,<br>values", x=x_mid, y=(y_out + targets[0]["y"]) / 2, xref="x", yref="y",
                            showarrow=False, xanchor="center", bgcolor="#ffedd5", font=dict(size=10, color=INK)))


def _arrow(x0: float, y0: float, x1: float, y1: float, colour: str) -> dict:
    """An arrow from (x0, y0) to (x1, y1), in data coordinates."""
    return dict(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", text="", showarrow=True,
                arrowhead=2, arrowsize=1, arrowwidth=1.4, arrowcolor=colour, standoff=0)  # fmt: skip


# --------------------------------------------------------------------------- the residual stream


def residual_figure(stacks: Sequence, token_labels: Sequence[Sequence[str]], *,
                    title: str = "The residual stream") -> go.Figure:  # fmt: skip
    """Per stack: each layer's contribution to each token (heatmap) and the stream's length (line)."""
    stacks = [s for s in stacks]
    if len(token_labels) != len(stacks):
        raise ValueError(f"{len(token_labels)} label lists for {len(stacks)} stacks")
    panels, data, layout, annotations = [], [], {}, []
    for s, (stack, labels) in enumerate(zip(stacks, token_labels)):
        c, h = style.to_numpy(stack.contribution).astype(np.float64), style.to_numpy(stack.stream).astype(np.float64)
        L, T = c.shape
        if h.shape != (L + 1, T):
            raise ValueError(f"stream {h.shape} does not fit contribution {c.shape} (expected {(L + 1, T)})")
        if len(labels) != T:
            raise ValueError(f"{len(labels)} token labels for {T} tokens of {stack.name!r}")
        panels.append((stack, labels, c, h))
    heat_px = [int(np.clip(30 * c.shape[0], 110, 420)) for _, _, c, _ in panels]
    crowded = [len(tick_positions(c.shape[1], MAX_TICKS)) > 16 for _, _, c, _ in panels]  # slanted tick labels
    gap_in = [110 if slanted else 70 for slanted in crowded]  # under a heatmap: its tick labels, the line's title
    area = sum(heat_px) + sum(gap_in) + len(panels) * STREAM_PX + (len(panels) - 1) * GAP_OUT
    y = area
    for s, ((stack, labels, c, h), hp) in enumerate(zip(panels, heat_px)):
        L, T = c.shape
        k1, k2 = str(2 * s + 1) if s else "", str(2 * s + 2)
        heat = [(y - hp) / area, y / area]
        y -= hp + gap_in[s]
        line = [(y - STREAM_PX) / area, y / area]
        y -= STREAM_PX + GAP_OUT
        data += _stream_traces(s, labels, c, h, k1, k2, heat)
        xt = tick_positions(T, MAX_TICKS)
        layout[f"xaxis{k1}"] = dict(anchor=f"y{k1}", tickmode="array", tickvals=xt.tolist(),
                                    ticktext=tick_text(labels, xt), tickangle=-45 if crowded[s] else 0,
                                    tickfont=dict(size=10 if crowded[s] else 12), showgrid=False,
                                    zeroline=False)  # fmt: skip
        layout[f"yaxis{k1}"] = dict(domain=heat, anchor=f"x{k1}", tickmode="array", tickvals=list(range(1, L + 1)),
                                    ticktext=[f"layer {i}" for i in range(1, L + 1)], showgrid=False,
                                    zeroline=False)  # fmt: skip
        layout[f"xaxis{k2}"] = dict(anchor=f"y{k2}", tickmode="array", tickvals=list(range(L + 1)),
                                    ticktext=["emb"] + [str(i) for i in range(1, L + 1)], title_text="after layer",
                                    zeroline=False, range=[-0.3, L + 0.3])  # fmt: skip
        layout[f"yaxis{k2}"] = dict(domain=line, anchor=f"x{k2}", title_text="length", rangemode="tozero",
                                    zeroline=False)  # fmt: skip
        name = style.safe_label(stack.name)
        annotations.append(_panel_title(k1, f"<b>{name}</b>: how much each layer adds to each token, ‖Δh‖"))
        annotations.append(_panel_title(
            k2, f"<span style='color:{STREAM_COLOUR}'><b>the stream's length ‖h‖</b></span> after each layer, mean "
                f"over tokens (band: shortest to longest), and <span style='color:{CONTRIBUTION_COLOUR}'><b>what "
                f"the layer wrote ‖Δh‖</b></span>, mean over tokens"))  # fmt: skip
    subtitle = "every layer reads the stream and adds its output back: h ← h + Δh"
    height = area + 100 + 40
    return style.figure(data=data, layout=style.base_layout(
        f"{title}<br><sup>{subtitle}</sup>", height=height, annotations=annotations, plot_bgcolor="white",
        margin=dict(style.MARGIN, l=70, t=100, b=40), showlegend=False, **layout))  # fmt: skip


def _stream_traces(s: int, labels, c: np.ndarray, h: np.ndarray, k1: str, k2: str, domain: list) -> list[dict]:
    L, T = c.shape
    tokens = [style.safe_label(t) for t in labels]
    hover = np.empty((L, T), dtype=object)
    for layer in range(L):
        for t in range(T):
            before, after = h[layer, t], h[layer + 1, t]
            share = c[layer, t] / before if before > 0 else float("nan")
            hover[layer, t] = (f"<b>layer {layer + 1}</b> · token {t} ‘{tokens[t]}’<br>adds ‖Δh‖ = {c[layer, t]:.3f} "
                               f"({share:.0%} of the stream it read)<br>‖h‖ {before:.3f} → {after:.3f}")  # fmt: skip
    heat = dict(type="heatmap", name=f"{CONTRIBUTION} {s}", z=c, x=np.arange(T), y=np.arange(1, L + 1),
                xaxis=f"x{k1}", yaxis=f"y{k1}", customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                colorscale=HEAT_SCALE, zmin=0, xgap=1 if T <= 64 else 0, ygap=1,
                colorbar=dict(title=dict(text="‖Δh‖"), thickness=12, len=domain[1] - domain[0],
                              y=(domain[0] + domain[1]) / 2, yanchor="middle"))  # fmt: skip
    if T <= 24 and L <= 24:
        heat.update(text=np.vectorize(lambda v: f"{v:.1f}")(c).tolist(), texttemplate="%{text}",
                    textfont=dict(size=10))  # fmt: skip
    x = np.arange(L + 1)
    mean, low, high = h.mean(axis=1), h.min(axis=1), h.max(axis=1)
    band = dict(type="scatter", name=f"{STREAM} {s} range", x=x, xaxis=f"x{k2}", yaxis=f"y{k2}", mode="lines",
                line=dict(width=0), hoverinfo="skip")  # fmt: skip
    return [
        heat,
        dict(band, y=low),
        dict(band, y=high, fill="tonexty", fillcolor=style.rgba(STREAM_COLOUR, 0.15)),
        dict(type="scatter", name=f"{STREAM} {s}", x=x, y=mean, xaxis=f"x{k2}", yaxis=f"y{k2}", mode="lines+markers",
             line=dict(color=STREAM_COLOUR, width=2), customdata=np.stack([low, high], axis=1),
             hovertemplate="after %{x}: mean ‖h‖ %{y:.2f} (shortest %{customdata[0]:.2f}, "
                           "longest %{customdata[1]:.2f})<extra>stream</extra>"),
        dict(type="scatter", name=f"{MEAN_CONTRIBUTION} {s}", x=x[1:], y=c.mean(axis=1), xaxis=f"x{k2}",
             yaxis=f"y{k2}", mode="lines+markers", line=dict(color=CONTRIBUTION_COLOUR, width=2, dash="dot"),
             hovertemplate="layer %{x} writes ‖Δh‖ %{y:.2f} on average<extra>write</extra>"),
    ]  # fmt: skip


def _panel_title(k: str, text: str) -> dict:
    return dict(text=text, xref=f"x{k} domain", x=0, xanchor="left", yref=f"y{k} domain", y=1, yanchor="bottom",
                yshift=4, showarrow=False, font=dict(size=12))  # fmt: skip


__all__ = ["CONTRIBUTION", "DIAGRAM", "MEAN_CONTRIBUTION", "STREAM", "block_diagram", "residual_figure"]
