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
  (x = 0..4 on their own axis) hold z (S, 1): "scores" = q·kⱼ, "scaled" = scores × scale (with
  ``steps.softcap``, Gemma 2's soft-capping: cap·tanh(scores × scale / cap)),
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
CAP_PX = 14  # one more header line: the soft-cap under the scale (Gemma 2)
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
    geo = _geometry(S, row_px, len(strips), head_px=HEAD_PX + (CAP_PX if f["softcap"] is not None else 0))
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
        return ("colour: blue < 0 < red; a post-norm block normalises residual in + attention output, a "
                "sandwich-norm one the attention output before the add (that sum is not shown)")  # fmt: skip
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
    cap = getattr(steps, "softcap", None)
    f["softcap"] = None if cap is None else float(cap)
    f["product"] = f["scores"] * f["scale"]  # (S,)
    f["scaled"] = f["product"] if cap is None else f["softcap"] * np.tanh(f["product"] / f["softcap"])  # (S,)
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
        cap = f["softcap"]
        capped = "" if cap is None else f"<br>{cap:g}·tanh(·/{cap:g}) = {f['scaled'][j]:.5g}"
        steps = (f"q·kⱼ = {f['scores'][j]:.5g}<br>× {f['scale']:.5g} = {f['product'][j]:.5g}{capped}"
                 f"<br>+ bias {f['bias'][j]:.5g} = {f['scaled'][j] + f['bias'][j]:.5g}")  # fmt: skip
        end = f"<br>logit {f['logits'][j]:.5g}" if f["mask"][j] else "<br>masked: logit −∞"
        out[j, 0] = f"{head}<br>{steps}{end}<br>softmax → weight {f['weights'][j]:.5g}"
    return out


# --------------------------------------------------------------------------- the layout


def _geometry(S: int, row_px: float, n_strips: int, head_px: float = HEAD_PX) -> dict:
    """The vertical layout in pixels of the plot area, as domains: rows, q strips above, out below."""
    rows_px = row_px * S
    bottom = STRIP_PX + GAP_PX  # the out strip, then a gap
    q_px = n_strips * STRIP_PX
    plot = bottom + rows_px + head_px + q_px
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
                    tickvals=list(range(5)), ticktext=_headers(f["scale"], Dh, position, f["bias"], f["softcap"]),
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


def _headers(scale: float, Dh: int, position: str | None, bias: np.ndarray, softcap: float | None = None) -> list[str]:
    """The five columns' two-line headers: the step, then its detail (a soft-cap: a third line)."""
    scaled = f"<b>× {scale:.3g}</b><br>{_scale_name(scale, Dh)}"
    if softcap is not None:
        scaled += f"<br>→ cap {softcap:g}"
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
    if f["softcap"] is not None:
        scaled += f" → soft-cap {f['softcap']:g}·tanh(·/{f['softcap']:g})"
    bias = f"+ {BIAS_NAMES.get(position or '', 'position')} bias" if np.any(f["bias"] != 0) else "+ 0 (no bias)"
    rotated = "rotate q, k (RoPE) → " if f["q_before"] is not None else ""
    flow = f"{rotated}scores = q·kⱼ → {scaled} → {bias} → mask → softmax → weights → out = Σ wⱼvⱼ"
    return f"{head}<br><sup>{flow}</sup>"


def _left_margin(labels: list[str]) -> int:
    """Room for the longest tick label (about 7 px a character at 11-12 px) and a little air."""
    return int(np.clip(7 * max((len(s) for s in labels), default=4) + 24, 60, 200))


# --------------------------------------------------------------------------- the other mixers: the gate


GREY = "#d1d5db"  # an expert the router did not choose
GREY_TEXT = "#6b7280"
GATE_ROWS_PX = (112, 560)  # the expert rows' total height: 28 px a row, within these bounds
GATE_COLUMNS = ((0.0, 0.19), (0.265, 0.455), (0.53, 0.72), (0.795, 0.985))  # logits, probs, weights, norms
GATE_HEAD_PX, GATE_GAP_PX, GATE_STRIP_PX = 52, 64, 26


def gate_figure(steps, labels: Sequence[str], *, expert_names: Sequence[str] | None = None,
                title: str | None = None) -> go.Figure:  # fmt: skip
    """A mixture of experts' gate at one token, one row per expert (the rows are shared), left to right:
    the router logits → softmax over all experts → the top k, renormalised → each expert's output norm;
    below, strips over the model's width: each chosen expert's weighted output (and the shared expert's
    gated one) and their sum, the layer's output.

    steps: the fields of ``archplay.models.analysis.mixers.GateSteps`` (duck-typed; tensors or arrays).
    labels: the Run's token labels (the token's own is ``labels[steps.token]``).

    Reading it back: bar traces "logits" and "probs" (x = the values, y = 0..E-1), "weights" (y = the
    chosen experts in the router's order, x = their weights), "expert_norms" (y = 0..E-1); the text
    trace "not run" (y = the experts not chosen); one-row heatmaps over D, y = their row: "expert e
    weighted" (weight × expert e's output) per chosen expert, "shared expert gated" (when there is one)
    and "output".
    """
    g = _gate_fields(steps)
    E = len(g["logits"])
    names = list(expert_names) if expert_names is not None else [f"expert {e}" for e in range(E)]
    if len(names) != E:
        raise ValueError(f"{len(names)} expert names for {E} experts")
    token = int(steps.token)
    label = str(labels[token]) if 0 <= token < len(labels) else str(token)
    row_px = float(np.clip(28 * E, *GATE_ROWS_PX)) / E
    written = row_px >= TEXT_ROW_PX
    strips = _gate_strips(g, names)
    geo = _gate_geometry(E, row_px, len(strips))
    data = _gate_bars(g, names, written, row_px)
    top = _abs_top(*(v for _, _, v in strips))  # one scale: the parts and their sum compare
    data += [_strip(name, v, i, name, "x5", "y2", top) | dict(xgap=0) for i, (name, _, v) in enumerate(strips)]
    return style.figure(data=data, layout=_gate_layout(g, steps, names, label, row_px, geo, strips, title))


def _gate_fields(steps) -> dict:
    names = ("logits", "probs", "chosen_probs", "weights", "expert_outputs", "expert_norms", "output", "shared_output")
    g = {n: None if getattr(steps, n, None) is None else style.to_numpy(getattr(steps, n)).astype(np.float64)
         for n in names}  # fmt: skip
    g["chosen"] = [int(e) for e in steps.chosen]
    g["shared_gate"] = None if getattr(steps, "shared_gate", None) is None else float(steps.shared_gate)
    return g


def _gate_strips(g: dict, names: list[str]) -> list[tuple[str, str, np.ndarray]]:
    """(trace name, row label, values (D,)) per strip: the weighted chosen experts, the shared one, the sum."""
    rows = [(f"expert {e} weighted", f"{w:.2f} × {style.safe_label(names[e])}(x)", w * g["expert_outputs"][e])
            for e, w in zip(g["chosen"], g["weights"])]  # fmt: skip
    if g["shared_gate"] is not None and g["shared_output"] is not None:
        rows.append(
            ("shared expert gated", f"{g['shared_gate']:.2f} × shared(x)", g["shared_gate"] * g["shared_output"])
        )
    rows.append(("output", "<b>output = Σ</b>", g["output"]))
    return rows


def _gate_geometry(E: int, row_px: float, n_strips: int) -> dict:
    strips_px = n_strips * GATE_STRIP_PX
    plot = strips_px + GATE_GAP_PX + E * row_px + GATE_HEAD_PX
    bottom = (strips_px + GATE_GAP_PX) / plot
    margin = dict(t=84, b=52)
    return dict(rows=(bottom, bottom + E * row_px / plot), strips=(0.0, strips_px / plot),
                height=int(plot + margin["t"] + margin["b"]), margin=margin)  # fmt: skip


def _padded(values: np.ndarray, pad: float = 0.42) -> list[float]:
    """An axis range holding ``values`` and 0, with room beside the bars for their numbers."""
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    span = (hi - lo) or 1.0
    return [lo - pad * span if lo < 0 else 0.0, hi + pad * span if hi > 0 else 0.0]


def _gate_bars(g: dict, names: list[str], written: bool, row_px: float) -> list[dict]:
    E = len(g["logits"])
    chosen = g["chosen"]
    rank = {e: j for j, e in enumerate(chosen)}
    colours = [style.expert_colour(e) if e in rank else GREY for e in range(E)]
    text_font = dict(size=11 if row_px >= 17 else 9)
    rows = np.arange(E)
    names_html = [style.safe_label(n) for n in names]
    total = float(g["chosen_probs"].sum())

    def bars(name, x, y, colour, text, hover, axis, **extra):
        trace = dict(type="bar", orientation="h", name=name, x=x, y=y, xaxis=axis, yaxis="y", width=0.72,
                     marker=dict(color=colour, line=dict(width=0)), customdata=hover,
                     hovertemplate="%{customdata}<extra></extra>", cliponaxis=False, **extra)  # fmt: skip
        if written:
            trace.update(text=text, textposition="outside", textfont=text_font)
        return trace

    picked = [f" (chosen, choice {rank[e] + 1})" if e in rank else " (not chosen)" for e in range(E)]
    logits = bars(
        "logits",
        g["logits"],
        rows,
        colours,
        [_cell(v) for v in g["logits"]],
        [f"{names_html[e]}{picked[e]}<br>router logit {g['logits'][e]:.5g}" for e in range(E)],
        "x",
    )
    probs = bars(
        "probs",
        g["probs"],
        rows,
        colours,
        [f"{v:.2f}" for v in g["probs"]],
        [f"{names_html[e]}{picked[e]}<br>softmax(logits)[{e}] = {g['probs'][e]:.5g}" for e in range(E)],
        "x2",
    )
    weights = bars("weights", g["weights"], np.asarray(chosen), [colours[e] for e in chosen],
                   [f"{w:.2f}" for w in g["weights"]],
                   [f"{names_html[e]}, choice {j + 1}<br>p = {g['chosen_probs'][j]:.5g} → "
                    + (f"{g['chosen_probs'][j]:.5g} / {total:.5g} = {g['weights'][j]:.5g}"
                       if _renormalised(g) else f"weight {g['weights'][j]:.5g} (not renormalised)")
                    for j, e in enumerate(chosen)], "x3")  # fmt: skip
    unchosen = [e for e in range(E) if e not in rank]
    not_run = dict(type="scatter", mode="text", name="not run", x=[0.02] * len(unchosen), y=unchosen, xaxis="x3",
                   yaxis="y", text=["not run"] * len(unchosen), textposition="middle right", hoverinfo="skip",
                   textfont=dict(text_font, color=GREY_TEXT), cliponaxis=False)  # fmt: skip
    if not written:
        not_run["text"] = [""] * len(unchosen)
    norm_text = [f"{v:.3g}" + ("" if e in rank else " · not run") for e, v in enumerate(g["expert_norms"])]
    norm_hover = [f"{names_html[e]} ran: ‖{names_html[e]}(x)‖ = {v:.5g}<br>in the sum: "
                  f"{g['weights'][rank[e]]:.3g} × it, norm {g['weights'][rank[e]] * v:.4g}" if e in rank else
                  f"{names_html[e]} was not run (computed here only to compare)<br>‖{names_html[e]}(x)‖ = {v:.5g}"
                  for e, v in enumerate(g["expert_norms"])]  # fmt: skip
    norms = bars("expert_norms", g["expert_norms"], rows, colours, norm_text, norm_hover, "x4")
    norms["marker"]["pattern"] = dict(shape=["" if e in rank else "/" for e in range(E)], fgcolor="#9ca3af", size=6)
    return [logits, probs, weights, not_run, norms]


def _renormalised(g: dict) -> bool:
    """Whether the weights are the chosen probabilities divided by their sum (Mixtral; not every model)."""
    return bool(np.allclose(g["weights"], g["chosen_probs"] / g["chosen_probs"].sum(), atol=1e-5))


def _gate_headers(g: dict) -> list[str]:
    E, k = len(g["logits"]), len(g["chosen"])
    w = g["weights"]
    if _renormalised(g):
        total = " + ".join(f"{v:.2f}" for v in w) + " = 1" if k <= 3 else f"{k} weights, sum = 1"
        third = f"<b>top-{k} → renormalised</b><br>{total}"
    else:
        third = f"<b>top-{k}</b> (not renormalised)<br>sum = {float(w.sum()):.2f}"
    return ["<b>router logit</b><br>W_router · x", f"<b>softmax</b> (float32)<br>over all {E} experts", third,
            "<b>‖expert(x)‖</b><br>each expert's output norm"]  # fmt: skip


def _gate_layout(g, steps, names, label, row_px, geo, strips, title) -> dict:
    E, k = len(g["logits"]), len(g["chosen"])
    rank = {e: j for j, e in enumerate(g["chosen"])}
    font = 11 if row_px >= 14 else 9
    every = max(1, math.ceil(LABEL_PX / row_px))  # every n-th expert, and the chosen ones with room around them
    ticks = sorted({e for e in range(0, E, every) if all(abs(e - c) >= every for c in rank)} | set(rank))
    ticktext = [f"<b>▸ {style.safe_label(names[e])}</b>" if e in rank else
                f"<span style='color:{GREY_TEXT}'>{style.safe_label(names[e])}</span>" for e in ticks]  # fmt: skip
    axis = dict(showgrid=False, zeroline=True, zerolinecolor="#9ca3af", fixedrange=True)
    layout = dict(
        xaxis=dict(axis, domain=GATE_COLUMNS[0], anchor="y", range=_padded(g["logits"])),
        xaxis2=dict(axis, domain=GATE_COLUMNS[1], anchor="y", range=_padded(g["probs"])),
        xaxis3=dict(axis, domain=GATE_COLUMNS[2], anchor="y", range=_padded(np.append(g["weights"], 0.35))),
        xaxis4=dict(axis, domain=GATE_COLUMNS[3], anchor="y", range=_padded(g["expert_norms"], 0.62)),
        xaxis5=dict(showgrid=False, zeroline=False, domain=(0.0, 1.0), anchor="y2",
                    title=dict(text=f"dimension of the model (D = {len(g['output'])})", font=dict(size=12), standoff=4)),
        yaxis=dict(showgrid=False, zeroline=False, domain=geo["rows"], anchor="x", autorange="reversed",
                   tickmode="array", tickvals=ticks, ticktext=ticktext, tickfont=dict(size=font), fixedrange=True),
        yaxis2=dict(showgrid=False, zeroline=False, domain=geo["strips"], anchor="x5", autorange="reversed",
                    tickmode="array", tickvals=list(range(len(strips))), ticktext=[s[1] for s in strips],
                    tickfont=dict(size=11)),
        annotations=[*(_column_header(f"x{'' if i == 0 else i + 1}", text) for i, text in enumerate(_gate_headers(g))),
                     dict(text="<b>the weighted sum</b>: each chosen expert's output × its weight, added up",
                          x=0.0, xref="x5 domain", xanchor="left", y=1.0, yref="y2 domain", yanchor="bottom",
                          yshift=6, showarrow=False, font=dict(size=12)),
                     *(dict(x=1.0, xref="paper", xanchor="left", y=i, yref="y2", showarrow=False, font=dict(size=11),
                            text=f"‖·‖ {float(np.linalg.norm(v)):.3g}") for i, (_, _, v) in enumerate(strips))],
        showlegend=False, bargap=0.25,
    )  # fmt: skip
    picks = [f"{style.safe_label(names[e])} ({w:.2f})" for e, w in zip(g["chosen"], g["weights"])]
    chosen = ", ".join(picks[:4]) + (f", … ({k - 4} more)" if k > 4 else "")
    head = title or (f"Layer {int(steps.layer)}, token {int(steps.token)} ‘{style.safe_label(label)}’: the router "
                     f"picks {k} of {E} experts: {chosen}")  # fmt: skip
    shared = " + g·shared(x)" if g["shared_gate"] is not None else ""
    flow = (
        f"logits = W_router·x → softmax over all {E} experts (float32) → top-{k}"
        f"{' → renormalise' if _renormalised(g) else ''} → out = Σ wₖ·expertₖ(x){shared}"
    )
    widths = [f"▸ {names[e]}" for e in ticks] + [s[1] for s in strips]
    margin = dict(MARGIN, l=_left_margin(widths), r=72, **geo["margin"])
    return style.base_layout(f"{head}<br><sup>{flow}</sup>", height=geo["height"], margin=margin,
                             plot_bgcolor="white", **layout)  # fmt: skip


def _column_header(xaxis: str, text: str, yref: str = "y domain") -> dict:
    return dict(text=text, x=0.5, xref=f"{xaxis} domain", y=1.0, yref=yref, yanchor="bottom", yshift=6,
                showarrow=False, font=dict(size=11))  # fmt: skip


# --------------------------------------------------------------------------- the other mixers: the scan


MAX_CHANNELS = 64  # at most this many channel rows (a checkpoint's Mamba has up to 1536 and more)
KEEP_SCALE = "Greens"  # Ā: 0 = the state forgets, 1 = it keeps all of it
DELTA_SCALE = "Oranges"
SCAN_ROWS_PX, SCAN_ROW_PX_MAX = (160, 640), 22
SCAN_HEAD_PX, SCAN_BARS_PX, SCAN_AXIS_PX, SCAN_HA_PX = 40, 58, 86, 120
SCAN_LEFT = (0.0, 0.085)  # u, Δ
SCAN_HEATS = ((0.11, 0.24), (0.27, 0.40), (0.43, 0.56), (0.59, 0.72))  # Ā, hₜ₋₁, B̄u, hₜ
SCAN_RIGHT = (0.745, 1.0)  # readout, skip, y, gate, y·gate
STATE_QUANTILE = 0.98  # the state's colours saturate at this quantile of |value| (a few cells dwarf the rest)
HEATS = (
    ("A_bar", "<b>Ā = exp(Δ·A)</b><br>how much survives", "Ā"),
    ("h_prev", "<b>hₜ₋₁</b><br>the state before", "hₜ₋₁"),
    ("B_bar_u", "<b>B̄u = Δ·Bₜ·u</b><br>what the token writes", "B̄u"),
    ("h", "<b>hₜ</b><br>the state after", "hₜ"),
)  # fmt: skip
RIGHT = (("readout", "<b>h·C</b><br>readout"), ("skip", "<b>+ D·u</b><br>skip"), ("y", "<b>= y</b><br> "),
         ("gate", "<b>SiLU(z)</b><br>gate"), ("y_gated", "<b>y·gate</b><br>→ W_out"))  # fmt: skip


def scan_channels(steps, limit: int = MAX_CHANNELS) -> np.ndarray:
    """The channels ``scan_figure`` shows: all of them when there are at most ``limit``, else the ``limit``
    that send the most into the output projection (largest |y·SiLU(z)|), the channel with the largest Δ
    among them; in channel order."""
    delta = style.to_numpy(steps.delta).astype(np.float64)
    Di = delta.shape[0]
    if Di <= limit:
        return np.arange(Di)
    sent = np.abs(style.to_numpy(steps.y).astype(np.float64) * style.to_numpy(steps.gate).astype(np.float64))
    top = [int(d) for d in np.argsort(-sent, kind="stable")[: limit - 1]]
    widest = int(delta.argmax())
    extra = widest if widest not in top else int(np.argsort(-sent, kind="stable")[limit - 1])
    return np.sort(np.array([*top, extra]))


def scan_figure(steps, labels: Sequence[str], *, channels: Sequence[int] | None = None,
                title: str | None = None) -> go.Figure:  # fmt: skip
    """Mamba's selective scan at one token, one row per channel d (the rows are shared), left to right:
    the input u and the step Δ; Ā = exp(Δ·A), the state before hₜ₋₁, what the token writes B̄u = Δ·B·u
    (Bₜ as bars above it) and the state after hₜ = Ā ⊙ hₜ₋₁ + B̄u (Cₜ above it), channels × states; then
    the readout h·C, the skip D·u, y, the gate SiLU(z) and y·gate (what the output projection reads).
    Below, the token's hidden-attention row: how much each earlier token still counts in its output.

    steps: the fields of ``archplay.models.analysis.mixers.ScanSteps`` (duck-typed; tensors or arrays).
    labels: the Run's token labels. channels: the rows (default ``scan_channels``: at most 64).

    Reading it back: ``layout.meta["channels"]`` lists the channels, row i = channel channels[i].
    Heatmaps "u", "delta" (z (n, 1)), "A_bar", "h_prev", "B_bar_u", "h" (z (n, N)), "readout", "skip",
    "y", "gate", "y_gated" (z (n, 1)); bar traces "B" and "C" (y = the N values) and "hidden attention"
    (y = the row up to the token itself).
    """
    f = _scan_fields(steps)
    Di, N = f["A_bar"].shape
    ch = scan_channels(steps) if channels is None else np.asarray(list(channels), dtype=int)
    if len(ch) == 0 or ch.min() < 0 or ch.max() >= Di:
        raise ValueError(f"channels must be between 0 and {Di - 1}")
    n, token = len(ch), int(steps.token)
    label = str(labels[token]) if 0 <= token < len(labels) else str(token)
    row_px = float(np.clip(SCAN_ROW_PX_MAX * n, *SCAN_ROWS_PX)) / n
    has_ha = f["hidden_attention"] is not None
    geo = _scan_geometry(n, row_px, has_ha, angled=token + 1 > 12)
    rows = np.arange(n)
    written = row_px >= TEXT_ROW_PX
    data = _scan_left(f, ch, rows, written, row_px)
    data += _scan_heats(f, ch, rows)
    data += [_state_bars("B", f["B"], "x4", "y2"), _state_bars("C", f["C"], "x5", "y3")]
    data += _scan_right(f, ch, rows, written, row_px)
    if has_ha:
        data.append(_hidden_row(f["hidden_attention"], labels, token))
    layout = _scan_layout(f, steps, ch, label, row_px, geo, title, labels, chosen=channels is None)
    return style.figure(data=data, layout=layout)


def _scan_fields(steps) -> dict:
    names = ("u", "delta", "A", "A_bar", "B", "B_bar_u", "h_prev", "h", "C", "readout", "skip", "y", "gate",
             "output", "hidden_attention")  # fmt: skip
    f = {n: None if getattr(steps, n, None) is None else style.to_numpy(getattr(steps, n)).astype(np.float64)
         for n in names}  # fmt: skip
    f["y_gated"] = f["y"] * f["gate"]  # (Di,) what the output projection reads (Mamba-2: after its norm)
    normed = getattr(steps, "normed", None)
    f["normed"] = None if normed is None else style.to_numpy(normed).astype(np.float64)
    # Each channel's own Bₜ (Mamba-2 shares B in n_groups groups of heads; the bars show the first group's)
    Di, N = f["A_bar"].shape
    groups = getattr(steps, "B_groups", None)
    heads = getattr(steps, "head_delta", None)
    f["groups"] = 1
    f["B_rows"] = np.broadcast_to(f["B"], (Di, N))
    if groups is not None and heads is not None and len(groups) > 1:
        g = style.to_numpy(groups).astype(np.float64)
        H, G = len(heads), len(g)
        owner = (np.arange(Di) // (Di // H)) // (H // G)  # channel → head → group
        f["B_rows"], f["groups"] = g[owner], G
    return f


def _scan_geometry(n: int, row_px: float, has_ha: bool, angled: bool) -> dict:
    """The vertical layout: the B/C bars and headers above the channel rows, the hidden-attention row below
    (its token labels, slanted when there are many, in the bottom margin)."""
    rows_px = n * row_px
    ha = SCAN_HA_PX if has_ha else 0
    below = ha + SCAN_AXIS_PX if has_ha else 0  # the state axis sits in the bottom margin without the row
    plot = below + rows_px + SCAN_BARS_PX + SCAN_HEAD_PX
    rows = (below / plot, (below + rows_px) / plot)
    bars = ((below + rows_px + 10) / plot, (below + rows_px + SCAN_BARS_PX) / plot)
    margin = dict(t=104, b=(96 if angled else 60) if has_ha else 56)
    return dict(rows=rows, bars=bars, ha=(0.0, ha / plot), plot=plot, height=int(plot + margin["t"] + margin["b"]),
                margin=margin)  # fmt: skip


def _sig(v: float) -> str:
    """A number for a narrow cell, two significant digits: 0.0031, 0.22, -1.4, 12."""
    return f"{v:.2g}" if abs(v) < 99.5 else f"{v:.0f}"


def _column_trace(name: str, values: np.ndarray, x: int, axis: str, rows, hover: list[str], scale: dict,
                  written: bool, row_px: float) -> dict:  # fmt: skip
    trace = dict(type="heatmap", name=name, z=values[:, None], x=[x], y=rows, xaxis=axis, yaxis="y",
                 customdata=np.array(hover, dtype=object)[:, None], hovertemplate="%{customdata}<extra></extra>",
                 xgap=3, ygap=1 if len(rows) <= 48 else 0, **scale)  # fmt: skip
    if written:
        trace.update(text=[[_sig(v)] for v in values], texttemplate="%{text}",
                     textfont=dict(size=10 if row_px >= 17 else 9))  # fmt: skip
    return trace


def _scan_left(f: dict, ch: np.ndarray, rows, written: bool, row_px: float) -> list[dict]:
    u, delta = f["u"][ch], f["delta"][ch]
    top = max(float(f["delta"].max()), 1e-9)  # over every channel: the scale means the same in any selection
    return [
        _column_trace("u", u, 0, "x", rows, [f"channel {d}<br>u = {v:.5g} (the scan's input)" for d, v in zip(ch, u)],
                      _signed(_abs_top(u)), written, min(row_px, 16)),
        _column_trace("delta", delta, 1, "x", rows,
                      [f"channel {d}<br>Δ = {v:.5g}<br>softplus(W_Δ·x + b): the step the token takes" for d, v
                       in zip(ch, delta)], dict(colorscale=DELTA_SCALE, zmin=0.0, zmax=top, showscale=False),
                      written, min(row_px, 16)),
    ]  # fmt: skip


def _scan_heats(f: dict, ch: np.ndarray, rows) -> list[dict]:
    """Ā, hₜ₋₁, B̄u and hₜ as (n, N) heatmaps, each cell's arithmetic in its hover."""
    A, A_bar, hp, bu, h = (f[k][ch] for k in ("A", "A_bar", "h_prev", "B_bar_u", "h"))
    delta, u, B = f["delta"][ch], f["u"][ch], f["B_rows"][ch]
    n, N = A_bar.shape
    where = [[f"channel {d} · state {s}<br>" for s in range(N)] for d in ch]
    hover = {
        "A_bar": [[f"{where[i][s]}Ā = exp(Δ·A) = exp({delta[i]:.4g} × {A[i, s]:.4g}) = {A_bar[i, s]:.5g}"
                   f"<br>the state keeps {100 * A_bar[i, s]:.1f}% of its past" for s in range(N)] for i in range(n)],
        "h_prev": [[f"{where[i][s]}hₜ₋₁ = {hp[i, s]:.5g} (the state before this token)" for s in range(N)]
                   for i in range(n)],
        "B_bar_u": [[f"{where[i][s]}B̄u = Δ·Bₜ·u = {delta[i]:.4g} × {B[i, s]:.4g} × {u[i]:.4g} = {bu[i, s]:.5g}"
                     for s in range(N)] for i in range(n)],
        "h": [[f"{where[i][s]}hₜ = Ā·hₜ₋₁ + B̄u = {A_bar[i, s]:.4g} × {hp[i, s]:.4g} + {bu[i, s]:.4g}"
               f" = {h[i, s]:.5g}" for s in range(N)] for i in range(n)],
    }  # fmt: skip
    state = _signed(state_top(hp, bu, h))  # the state and what is written into it on one scale
    scales = {"A_bar": dict(colorscale=KEEP_SCALE, zmin=0.0, zmax=1.0, showscale=False), "h_prev": state,
              "B_bar_u": state, "h": state}  # fmt: skip
    values = {"A_bar": A_bar, "h_prev": hp, "B_bar_u": bu, "h": h}
    gap = dict(xgap=1 if N <= 32 else 0, ygap=1 if n <= 48 else 0)
    return [dict(type="heatmap", name=name, z=values[name], x=np.arange(N), y=rows, xaxis=f"x{i + 2}", yaxis="y",
                 customdata=np.array(hover[name], dtype=object), hovertemplate="%{customdata}<extra></extra>",
                 **gap, **scales[name]) for i, (name, _, _) in enumerate(HEATS)]  # fmt: skip


def state_top(*arrays) -> float:
    """Where the state heatmaps' colours saturate: the ``STATE_QUANTILE`` of |value| over ``arrays``' nonzero
    cells (the exact values are in the hover)."""
    cells = np.abs(np.concatenate([a.ravel() for a in arrays]))
    cells = cells[np.isfinite(cells) & (cells > 0)]
    top = float(np.quantile(cells, STATE_QUANTILE)) if cells.size else 0.0
    return top if top > 0 else 1.0


def _state_bars(name: str, v: np.ndarray, xaxis: str, yaxis: str) -> dict:
    """Bₜ or Cₜ: one bar per state, over the heatmap's state axis."""
    colours = [style.rgba("#c0392b", 0.8) if x >= 0 else style.rgba("#2e86de", 0.8) for x in v]
    return dict(type="bar", name=name, x=np.arange(len(v)), y=v, xaxis=xaxis, yaxis=yaxis,
                marker=dict(color=colours, line=dict(width=0)),
                hovertemplate=f"state %{{x:d}}: {name}ₜ = %{{y:.5g}}<extra></extra>")  # fmt: skip


def _scan_right(f: dict, ch: np.ndarray, rows, written: bool, row_px: float) -> list[dict]:
    r, sk, y, g, yg = (f[k][ch] for k in ("readout", "skip", "y", "gate", "y_gated"))
    N = f["C"].shape[0]
    hover = {
        "readout": [f"channel {d}<br>h·C = Σ over the {N} states of hₜ·Cₜ = {v:.5g}" for d, v in zip(ch, r)],
        "skip": [f"channel {d}<br>skip D·u = {v:.5g} (the input, past the state)" for d, v in zip(ch, sk)],
        "y": [f"channel {d}<br>y = h·C + D·u = {a:.4g} + {b:.4g} = {v:.5g}" for d, a, b, v in zip(ch, r, sk, y)],
        "gate": [f"channel {d}<br>gate SiLU(z) = {v:.5g}" for d, v in zip(ch, g)],
        "y_gated": [f"channel {d}<br>y·SiLU(z) = {a:.4g} × {b:.4g} = {v:.5g}<br>(into the output projection W_out)"
                    for d, a, b, v in zip(ch, y, g, yg)],
    }  # fmt: skip
    if f["normed"] is not None:  # Mamba-2: the gated RMSNorm comes between y·SiLU(z) and W_out
        yg = f["normed"][ch]
        hover["y_gated"] = [f"channel {d}<br>y·SiLU(z) = {a:.4g} × {b:.4g} = {c:.4g}, normalised over its group "
                            f"(gated RMSNorm) = {v:.5g}<br>(into the output projection W_out)"
                            for d, a, b, c, v in zip(ch, y, g, f["y_gated"][ch], yg)]  # fmt: skip
    values = {"readout": r, "skip": sk, "y": y, "gate": g, "y_gated": yg}
    shared = _signed(_abs_top(r, sk, y))  # the sum and its parts on one scale
    scales = {"readout": shared, "skip": shared, "y": shared, "gate": _signed(_abs_top(g)),
              "y_gated": _signed(_abs_top(yg))}  # fmt: skip
    return [_column_trace(name, values[name], x, "x6", rows, hover[name], scales[name], written, row_px)
            for x, (name, _) in enumerate(RIGHT)]  # fmt: skip


def _hidden_row(row: np.ndarray, labels: Sequence[str], token: int) -> dict:
    """The token's hidden-attention row, tokens 0..token (the later ones are 0: the scan runs forward)."""
    y = row[: token + 1]
    names = [style.safe_label(str(labels[j])) if j < len(labels) else str(j) for j in range(token + 1)]
    colours = [style.MASK_ON if j < token else style.CHOSEN for j in range(token + 1)]
    return dict(type="bar", name="hidden attention", x=np.arange(token + 1), y=y, xaxis="x7", yaxis="y4",
                marker=dict(color=colours, line=dict(width=0)), customdata=np.array(names, dtype=object),
                hovertemplate="token %{x:d} ‘%{customdata}’<br>mean |α| = %{y:.5g}<extra></extra>")  # fmt: skip


def _scan_layout(f, steps, ch, label, row_px, geo, title, labels, chosen: bool) -> dict:
    Di, N = f["A_bar"].shape
    n, token = len(ch), int(steps.token)
    widest = int(f["delta"].argmax())
    every = max(1, math.ceil(LABEL_PX / row_px))
    marked = {i for i, d in enumerate(ch) if d == widest}
    ticks = sorted({i for i in range(0, n, every) if all(abs(i - m) >= every for m in marked)} | marked)
    ticktext = [f"<b>▸ {ch[i]}</b>" if i in marked else str(ch[i]) for i in ticks]
    axis = dict(showgrid=False, zeroline=False)
    state_axis = dict(axis, anchor="y", title=dict(text=f"state (N = {N})", font=dict(size=11), standoff=2),
                      tickfont=dict(size=10), dtick=max(1, N // 4))  # fmt: skip
    bars_axis = dict(axis, showticklabels=False, zeroline=True, zerolinecolor="#9ca3af", fixedrange=True)
    layout = dict(
        xaxis=dict(axis, domain=SCAN_LEFT, anchor="y", side="top", range=[-0.5, 1.5], tickmode="array",
                   tickvals=[0, 1], ticktext=["<b>u</b><br>in", "<b>Δ</b><br>step"], tickfont=dict(size=11),
                   fixedrange=True),
        **{f"xaxis{i + 2}": dict(state_axis, domain=SCAN_HEATS[i]) for i in range(4)},
        xaxis6=dict(axis, domain=SCAN_RIGHT, anchor="y", side="top", range=[-0.5, len(RIGHT) - 0.5],
                    tickmode="array", tickvals=list(range(len(RIGHT))),
                    ticktext=[h if f["normed"] is None or name != "y_gated" else "<b>norm(y·gate)</b><br>→ W_out"
                              for name, h in RIGHT],
                    tickfont=dict(size=10), fixedrange=True),
        yaxis=dict(axis, domain=geo["rows"], anchor="x", autorange="reversed", tickmode="array", tickvals=ticks,
                   ticktext=ticktext, tickfont=dict(size=11 if row_px >= 14 else 9),
                   title=dict(text="channel", font=dict(size=11), standoff=2)),
        yaxis2=dict(bars_axis, domain=geo["bars"], anchor="x4"),
        yaxis3=dict(bars_axis, domain=geo["bars"], anchor="x5"),
        annotations=_scan_annotations(f, geo, token, Di),
        showlegend=False, bargap=0.15,
    )  # fmt: skip
    if f["hidden_attention"] is not None:
        xt = np.arange(token + 1) if token < 48 else np.unique(np.linspace(0, token, 48).round().astype(int))
        text = [style.safe_label(style.short_label(str(labels[j]))) if j < len(labels) else str(j) for j in xt]
        layout.update(
            xaxis7=dict(axis, domain=(0.0, 1.0), anchor="y4", tickmode="array", tickvals=xt.tolist(), ticktext=text,
                        tickangle=-45 if len(xt) > 12 else 0, tickfont=dict(size=10), range=[-0.6, token + 0.6]),
            yaxis4=dict(axis, domain=geo["ha"], anchor="x7", rangemode="tozero", tickfont=dict(size=10),
                        title=dict(text="mean |α|", font=dict(size=11), standoff=2)),
        )  # fmt: skip
    if n == Di:
        shown = f"all {Di} channels"
    elif chosen:
        shown = (f"{n} of the {Di} channels: those sending most into W_out (largest |y·SiLU(z)|) and the "
                 f"largest Δ (▸ {widest})")  # fmt: skip
    else:
        shown = f"{n} of the {Di} channels" + (f" (▸ {widest}: the largest Δ)" if marked else "")
    saturate = state_top(*(f[k][ch] for k in ("h_prev", "B_bar_u", "h")))
    shown += f"; the state's colours saturate at ±{saturate:.2g}"
    head = title or (f"Layer {int(steps.layer)}, token {token} ‘{style.safe_label(label)}’: one step of the "
                     f"selective scan")  # fmt: skip
    flow = "Δ → Ā = exp(Δ·A), B̄u = Δ·Bₜ·u → hₜ = Ā ⊙ hₜ₋₁ + B̄u → y = hₜ·Cₜ + D·u → y·SiLU(z) → W_out"
    if f["normed"] is not None:
        flow = flow.replace("y·SiLU(z) → W_out", "norm(y·SiLU(z)) → W_out")
    margin = dict(MARGIN, l=64, r=16, **geo["margin"])
    return style.base_layout(f"{head}<br><sup>{flow}<br>rows: {shown}</sup>", height=geo["height"], margin=margin,
                             plot_bgcolor="white", meta=dict(channels=[int(d) for d in ch]), **layout)  # fmt: skip


def _scan_annotations(f: dict, geo: dict, token: int, Di: int) -> list[dict]:
    top = geo["bars"][1]
    notes = [dict(text=text, x=0.5, xref=f"x{i + 2} domain", y=top, yref="paper", yanchor="bottom", yshift=4,
                  showarrow=False, font=dict(size=11)) for i, (_, text, _) in enumerate(HEATS)]  # fmt: skip
    middle = (geo["rows"][0] + geo["rows"][1]) / 2
    ops = ("⊙", "+", "=")  # Ā ⊙ hₜ₋₁ + B̄u = hₜ, in the gaps between the heatmaps
    notes += [
        dict(
            text=f"<b>{op}</b>",
            x=(SCAN_HEATS[i][1] + SCAN_HEATS[i + 1][0]) / 2,
            xref="paper",
            y=middle,
            yref="paper",
            showarrow=False,
            font=dict(size=18, color="#374151"),
        )
        for i, op in enumerate(ops)
    ]
    for axis, name in (("y2", "Bₜ"), ("y3", "Cₜ")):
        if f["groups"] > 1:  # Mamba-2 with several groups: the bars are the first group's
            name += f"<br>(group 0 of {f['groups']})"
        notes.append(dict(text=name, x=0.0, xref=f"x{4 if axis == 'y2' else 5} domain", xanchor="right", xshift=-2,
                          y=0.5, yref=f"{axis} domain", showarrow=False, font=dict(size=11)))  # fmt: skip
    if f["hidden_attention"] is not None:
        notes.append(dict(text=f"<b>hidden attention, row {token}</b>: how much each earlier token still counts in "
                               f"this output (mean |α| over the {Di} channels)", x=0.0, xref="paper", xanchor="left", y=geo["ha"][1], yref="paper",
                          yanchor="bottom", yshift=8, showarrow=False, font=dict(size=12)))  # fmt: skip
    return notes


__all__ = ["attention_step_figure", "gate_figure", "residual_figure", "scan_channels", "scan_figure"]
