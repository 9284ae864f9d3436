"""Attention, step by step: one head and one query, drawn with the numbers the model used.

``attention_step_figure`` reads left to right, one row per key token j (the rows are shared):

    q (strip above the keys; and q before the rotation, with rotary positions)
    kⱼ (keys, S × d_head) │ q·kⱼ │ × scale │ + bias │ mask → logit │ softmax │ vⱼ (values, S × d_head)
                                                                        out = Σⱼ wⱼ vⱼ (strip below the values)

``residual_figure`` follows ``out`` back into the residual stream, as strips over the model's width:
the block's input, x (after the norm), this head's share of the output projection, the whole
attention output (every head) and the residual sum.

Both take ``steps``: an object with the fields of ``archplay.models.analysis.steps.AttentionSteps``
(duck-typed; tensors or arrays). Signed values use a diverging scale centred at 0, the softmax
weights a sequential one; every cell's exact value is in its hover, and the columns write theirs
in the cells when the rows are tall enough to read.

Reading the figures back (every trace named; rows y = 0..S-1 are key positions, x = 0..d-1 dimensions):

* step figure: "query" z (1, d_head) = q; "query before rotation" (only with rotary positions)
  = q_before; "keys" z (S, d_head) = k; "values" = v; "out" z (1, d_head) = out. The columns
  (x = 0..4 on their own axis) hold z (S, 1): "scores" = q·kⱼ, "scaled" = scores × scale,
  "bias", "logits" = scaled + bias (NaN where masked), "masked" = 1 where masked (NaN elsewhere),
  "weights" = the softmax weights. A column's ``text`` is what its cells show; its
  ``customdata`` (S, 1) the row's whole calculation, for the hover.
* residual figure: one (1, D) trace per row, named "residual in", "x", "head output",
  "attention output", "residual out" (rows that do not apply are left out), at y = its row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style

SIGNED_SCALE = "RdBu_r"  # diverging: blue below 0, white at 0, red above
WEIGHT_SCALE = style.ATTENTION_SCALE  # sequential, white at 0
MASKED_SCALE = [[0.0, style.MASK_OFF], [1.0, style.MASK_OFF]]

COLUMNS = ("scores", "scaled", "bias", "logits", "weights")  # x = 0..4 on the columns' axis
ROWS_PX = (200, 720)  # the key rows' total height: 24 px a row, within these bounds
ROW_PX_MAX = 24
TEXT_ROW_PX = 13  # rows at least this tall carry their numbers in the columns
LABEL_PX = 11  # a token label needs about this much height
STRIP_PX = 22  # one vector strip (q, q before the rotation, out)
HEAD_PX = 44  # the column headers' band above the rows
GAP_PX = 12
MARGIN = dict(l=80, r=20, t=84, b=64)
KEYS_X, COLUMNS_X, VALUES_X = (0.0, 0.31), (0.36, 0.655), (0.70, 1.0)  # horizontal domains
BIAS_NAMES = {"alibi": "ALiBi", "relative": "relative"}  # the bias column's second header line


def attention_step_figure(steps, key_labels: Sequence[str], query_label: str, *, title: str | None = None,
                          position: str | None = None) -> go.Figure:  # fmt: skip
    """The head's computation for one query: q, the keys, the five per-key steps, the values and ``out``.

    key_labels: one label per key position (S). position: how the model encodes positions
    ("alibi", "relative", "rotary", ...; it names the bias column), None when unknown.
    """
    f = _fields(steps)
    S, Dh = f["k"].shape
    if len(key_labels) != S:
        raise ValueError(f"{len(key_labels)} key labels for {S} keys")
    row_px = int(np.clip(ROW_PX_MAX * S, *ROWS_PX)) / S
    strips = [("query", f["q"])] + ([("query before rotation", f["q_before"])] if f["q_before"] is not None else [])
    geo = _geometry(S, row_px, len(strips))
    data = [*_query_strips(strips, Dh), _matrix("keys", f["k"], "k", "x", "y")]
    data += _columns(f, key_labels, row_px)
    data += [_matrix("values", f["v"], "v", "x3", "y"), _strip("out", f["out"], 0, "out", "x3", "y3")]
    text = _step_title(steps, query_label, f, position, title)
    return style.figure(data=data, layout=_step_layout(text, f, steps, key_labels, row_px, geo, strips, position))


def residual_figure(steps, query_label: str, *, title: str | None = None) -> go.Figure:
    """The head's ``out`` back in the residual stream: strips over the model's width D, one per stage."""
    f = _fields(steps)
    head = int(steps.head)
    same = f["residual_in"] is not None and np.allclose(f["x"], f["residual_in"])  # no norm before the attention
    rows = [
        ("residual in", f["residual_in"], "the block's input (the residual stream)", "stream"),
        ("x", f["x"], "x = the block's input (post-norm)" if same else "x: the attention's input (after the norm)",
         "x"),
        ("head output", f["head_output"], f"head {head}'s share: W_O[:, head {head}] · out", "attn"),
        ("attention output", f["attention_output"], "attention output: every head (+ W_O's bias)", "attn"),
        ("residual out", f["residual_out"], "residual out = residual in + attention output", "stream"),
    ]  # fmt: skip
    rows = [r for r in rows if r[1] is not None]
    tops = {group: _abs_top(*(v for _, v, _, g in rows if g == group)) for _, _, _, group in rows}
    data = [_residual_strip(name, v, i, tops[group]) for i, (name, v, _, group) in enumerate(rows)]
    D = rows[0][1].shape[0]
    norms = [dict(x=1.0, xref="paper", xanchor="left", y=i, yref="y", showarrow=False, font=dict(size=11),
                  text=f"‖·‖ {float(np.linalg.norm(v)):.3g}") for i, (_, v, _, _) in enumerate(rows)]  # fmt: skip
    layout = dict(
        xaxis=dict(title=dict(text=f"dimension of the model (D = {D})", font=dict(size=12)), showgrid=False,
                   zeroline=False),
        yaxis=dict(tickmode="array", tickvals=list(range(len(rows))), autorange="reversed", showgrid=False,
                   ticktext=[style.safe_label(label) for _, _, label, _ in rows], zeroline=False),
        annotations=norms,
    )  # fmt: skip
    where = "decoder step" if steps.kind in ("decoder", "cross") else "token"
    text = title or (f"Back into the residual stream: {where} {int(steps.query)} ‘{style.safe_label(query_label)}’"
                     f"<br><sup>{_residual_note(f)}</sup>")  # fmt: skip
    margin = dict(MARGIN, l=_left_margin([r[2] for r in rows]), r=80, t=70, b=56)
    height = margin["t"] + margin["b"] + 40 * len(rows)
    return style.figure(data=data, layout=style.base_layout(text, height=height, margin=margin,
                                                            plot_bgcolor="white", **layout))  # fmt: skip


def _residual_note(f: dict) -> str:
    """The residual figure's subtitle: the colours, and what is not shown and why."""
    if f["residual_in"] is None:
        return ("colour: blue < 0 < red, the attention rows on one scale; cross-attention adds into the decoder's "
                "stream after its self-attention (that sum is not shown)")  # fmt: skip
    if f["residual_out"] is None:
        return ("colour: blue < 0 < red; a post-norm block normalises residual in + attention output "
                "(that sum is not shown)")  # fmt: skip
    return "colour: blue < 0 < red; the stream's rows share one scale, the two attention rows another"


# --------------------------------------------------------------------------- the data


def _fields(steps) -> dict:
    """The figure's arrays from ``steps``, as float64 numpy (None stays None)."""
    names = ("q", "k", "v", "scores", "bias", "weights", "out", "q_before", "x", "head_output",
             "attention_output", "residual_in", "residual_out")  # fmt: skip
    f = {n: None if getattr(steps, n, None) is None else style.to_numpy(getattr(steps, n)).astype(np.float64)
         for n in names}  # fmt: skip
    f["mask"] = style.to_numpy(steps.mask).astype(bool)  # (S,)
    f["scale"] = float(steps.scale)
    f["scaled"] = f["scores"] * f["scale"]  # (S,)
    f["logits"] = np.where(f["mask"], f["scaled"] + f["bias"], np.nan)  # (S,) NaN = −∞ (masked)
    return f


def _abs_top(*arrays) -> float:
    """The largest |value| of ``arrays``: the ends of a diverging scale centred at 0 (1 when all are 0)."""
    finite = [np.abs(a[np.isfinite(a)]) for a in arrays if a is not None and np.isfinite(a).any()]
    top = max((float(a.max()) for a in finite), default=0.0)
    return top if top > 0 else 1.0


def _signed(top: float) -> dict:
    return dict(colorscale=SIGNED_SCALE, zmin=-top, zmax=top, zmid=0.0, showscale=False)


def _matrix(name: str, z: np.ndarray, symbol: str, xaxis: str, yaxis: str) -> dict:
    """Keys or values: (S, d_head), row j = token j."""
    S, Dh = z.shape
    return dict(type="heatmap", name=name, z=z, x=np.arange(Dh), y=np.arange(S), xaxis=xaxis, yaxis=yaxis,
                hovertemplate=f"key %{{y:d}} · dim %{{x:d}}<br>{symbol} = %{{z:.5g}}<extra>{name}</extra>",
                xgap=1 if Dh <= 48 else 0, ygap=1 if S <= 48 else 0, **_signed(_abs_top(z)))  # fmt: skip


def _strip(name: str, v: np.ndarray, row: int, symbol: str, xaxis: str, yaxis: str, top: float | None = None) -> dict:
    """One vector as a one-row heatmap at y = ``row``."""
    return dict(type="heatmap", name=name, z=v[None, :], x=np.arange(v.shape[0]), y=[row], xaxis=xaxis,
                yaxis=yaxis, hovertemplate=f"dim %{{x:d}}: {symbol} = %{{z:.5g}}<extra>{name}</extra>",
                xgap=1 if v.shape[0] <= 48 else 0, **_signed(top or _abs_top(v)))  # fmt: skip


def _query_strips(strips: list, Dh: int) -> list[dict]:
    """q (y = 0) and q before the rotation (y = 1), on one scale so the rotation's effect shows."""
    top = _abs_top(*(v for _, v in strips))
    symbols = {"query": "q", "query before rotation": "q before rotation"}
    return [_strip(name, v, i, symbols[name], "x", "y2", top) for i, (name, v) in enumerate(strips)]


def _residual_strip(name: str, v: np.ndarray, row: int, top: float) -> dict:
    trace = _strip(name, v, row, name, "x", "y", top)
    trace["xgap"] = 0
    return trace


def _cell(v: float) -> str:
    """A number short enough for a cell: 0.78, -3.14, 12.3, 145."""
    a = abs(v)
    return f"{v:.0f}" if a >= 99.5 else f"{v:.1f}" if a >= 9.95 else f"{v:.2f}"


def _columns(f: dict, key_labels, row_px: float) -> list[dict]:
    """The five per-key steps, each its own (S, 1) heatmap at x = 0..4 on the columns' axis."""
    S = len(key_labels)
    chain = _chains(f, key_labels)  # (S, 1) hover: the row's whole calculation
    written = row_px >= TEXT_ROW_PX
    signed = _signed(_abs_top(f["scores"], f["scaled"], f["bias"], f["logits"]))
    traces = []
    for x, name in enumerate(COLUMNS):
        z = f[name][:, None]  # (S, 1)
        scale = dict(colorscale=WEIGHT_SCALE, zmin=0.0, zmax=max(float(np.nanmax(z)), 1e-9), showscale=False) \
            if name == "weights" else signed  # fmt: skip
        trace = dict(type="heatmap", name=name, z=z, x=[x], y=np.arange(S), xaxis="x2", yaxis="y", customdata=chain,
                     hovertemplate="%{customdata}<extra></extra>", xgap=3, ygap=1 if S <= 48 else 0, **scale)  # fmt: skip
        if written:
            cells = [[_cell(v)] if np.isfinite(v) else [""] for v in f[name]]
            trace.update(text=cells, texttemplate="%{text}", textfont=dict(size=11 if row_px >= 17 else 9))
        traces.append(trace)
    masked = np.where(f["mask"], np.nan, 1.0)[:, None]  # (S, 1) drawn over the logits column
    overlay = dict(type="heatmap", name="masked", z=masked, x=[3], y=np.arange(S), xaxis="x2", yaxis="y",
                   customdata=chain, hovertemplate="%{customdata}<extra></extra>", colorscale=MASKED_SCALE,
                   zmin=0.0, zmax=1.0, showscale=False, xgap=3, ygap=1 if S <= 48 else 0)  # fmt: skip
    if written:
        overlay.update(text=[["−∞"] if not m else [""] for m in f["mask"]], texttemplate="%{text}",
                       textfont=dict(size=11 if row_px >= 17 else 9, color="#374151"))  # fmt: skip
    return [*traces[:4], overlay, traces[4]]


def _chains(f: dict, key_labels) -> np.ndarray:
    """Per key row, its calculation from q·kⱼ to the weight, exact (hover text), (S, 1)."""
    out = np.empty((len(key_labels), 1), dtype=object)
    for j, label in enumerate(key_labels):
        head = f"key {j} ‘{style.safe_label(label)}’"
        steps = (f"q·kⱼ = {f['scores'][j]:.5g}<br>× {f['scale']:.5g} = {f['scaled'][j]:.5g}"
                 f"<br>+ bias {f['bias'][j]:.5g} = {f['scaled'][j] + f['bias'][j]:.5g}")  # fmt: skip
        end = f"<br>logit {f['logits'][j]:.5g}" if f["mask"][j] else "<br>masked: logit −∞"
        out[j, 0] = f"{head}<br>{steps}{end}<br>softmax → weight {f['weights'][j]:.5g}"
    return out


# --------------------------------------------------------------------------- the layout


def _geometry(S: int, row_px: float, n_strips: int) -> dict:
    """The vertical layout in pixels of the plot area, as domains: rows, q strips above, out below."""
    rows_px = row_px * S
    bottom = STRIP_PX + GAP_PX  # the out strip, then a gap
    q_px = n_strips * STRIP_PX
    plot = bottom + rows_px + HEAD_PX + q_px
    rows = (bottom / plot, (bottom + rows_px) / plot)
    q = ((plot - q_px) / plot, 1.0)
    return dict(rows=rows, q=q, out=(0.0, STRIP_PX / plot), height=int(plot + MARGIN["t"] + MARGIN["b"]))


def _row_ticks(S: int, row_px: float, query: int | None) -> list[int]:
    """The key rows to label: every row when they are tall enough, else every n-th (and the query's)."""
    every = max(1, math.ceil(LABEL_PX / row_px))
    rows = set(range(0, S, every))
    if query is not None:
        rows = {r for r in rows if abs(r - query) >= every or r == query} | {query}
    return sorted(rows)


def _step_layout(title: str, f, steps, key_labels, row_px, geo, strips, position) -> dict:
    S, Dh = f["k"].shape
    own = int(steps.query) if steps.kind != "cross" and 0 <= int(steps.query) < S else None  # the query's own row
    ticks = _row_ticks(S, row_px, own)
    font = 11 if row_px >= 14 else 9
    labels = [_row_label(j, key_labels[j], j == own) for j in ticks]
    kv = f" (kv head {int(steps.kv_head)})" if len(steps.group) > 1 else ""
    axis = dict(showgrid=False, zeroline=False)
    layout = dict(
        xaxis=dict(axis, domain=KEYS_X, anchor="y", title=_axis_title(Dh)),
        xaxis2=dict(axis, domain=COLUMNS_X, anchor="y", side="top", range=[-0.5, 4.5], tickmode="array",
                    tickvals=list(range(5)), ticktext=_headers(f["scale"], Dh, position, f["bias"]),
                    tickfont=dict(size=11), fixedrange=True),
        xaxis3=dict(axis, domain=VALUES_X, anchor="y3", title=_axis_title(Dh)),
        yaxis=dict(axis, domain=geo["rows"], anchor="x", autorange="reversed", tickmode="array", tickvals=ticks,
                   ticktext=labels, tickfont=dict(size=font)),
        yaxis2=dict(axis, domain=geo["q"], anchor="x", autorange="reversed", tickmode="array",
                    tickvals=list(range(len(strips))), ticktext=["q" if i == 0 else "q before RoPE"
                                                                 for i in range(len(strips))]),
        yaxis3=dict(axis, domain=geo["out"], anchor="x3", tickmode="array", tickvals=[0],
                    ticktext=["out = Σ wⱼvⱼ"]),
        annotations=[_header("x", f"<b>kⱼ</b>: keys{kv}"), _header("x3", f"<b>vⱼ</b>: values{kv}")],
    )  # fmt: skip
    widths = [f"▸ {j} {style.short_label(str(key_labels[j]))}" for j in ticks] + ["q before RoPE"]
    margin = dict(MARGIN, l=_left_margin(widths))
    return style.base_layout(title, height=geo["height"], margin=margin, plot_bgcolor="white", **layout)


def _axis_title(Dh: int) -> dict:
    return dict(text=f"dimension (d_head = {Dh})", font=dict(size=12), standoff=4)


def _row_label(j: int, label: str, own: bool) -> str:
    text = f"{j} {style.safe_label(style.short_label(str(label)))}"
    return f"<b>▸ {text}</b>" if own else text


def _header(xaxis: str, text: str) -> dict:
    """A title over the keys or the values, in the band above the rows."""
    return dict(text=text, x=0.5, xref=f"{xaxis} domain", y=1.0, yref="y domain", yanchor="bottom", yshift=6,
                showarrow=False, font=dict(size=12))  # fmt: skip


def _headers(scale: float, Dh: int, position: str | None, bias: np.ndarray) -> list[str]:
    """The five columns' two-line headers: the step, then its detail."""
    scaled = f"<b>× {scale:.3g}</b><br>{_scale_name(scale, Dh)}"
    named = BIAS_NAMES.get(position or "", "position") if np.any(bias != 0) else "none"
    return ["<b>q·kⱼ</b><br>score", scaled, f"<b>+ bias</b><br>{named}", "<b>mask</b><br>→ logit",
            "<b>softmax</b><br>weight"]  # fmt: skip


def _scale_name(scale: float, Dh: int) -> str:
    """What the factor on the scores is: 1/√d_head (most models), none (T5), else just a scale."""
    if abs(scale - Dh**-0.5) < 1e-6:
        return "1/√d_head"
    return "no scaling" if scale == 1.0 else "scale"


def _step_title(steps, query_label: str, f: dict, position: str | None, title: str | None) -> str:
    where = "decoder step" if steps.kind in ("decoder", "cross") else "query"
    head = title or (f"Layer {int(steps.layer)}, head {int(steps.head)}: how {where} {int(steps.query)} "
                     f"‘{style.safe_label(query_label)}’ weighs each key")  # fmt: skip
    scale = f["scale"]
    named = _scale_name(scale, f["k"].shape[1])
    scaled = f"× 1/√d_head = {scale:.3g}" if named == "1/√d_head" else f"× {scale:.3g}"
    bias = f"+ {BIAS_NAMES.get(position or '', 'position')} bias" if np.any(f["bias"] != 0) else "+ 0 (no bias)"
    rotated = "rotate q, k (RoPE) → " if f["q_before"] is not None else ""
    flow = f"{rotated}scores = q·kⱼ → {scaled} → {bias} → mask → softmax → weights → out = Σ wⱼvⱼ"
    return f"{head}<br><sup>{flow}</sup>"


def _left_margin(labels: list[str]) -> int:
    """Room for the longest tick label (about 7 px a character at 11-12 px) and a little air."""
    return int(np.clip(7 * max((len(s) for s in labels), default=4) + 24, 60, 200))


__all__ = ["attention_step_figure", "residual_figure"]
