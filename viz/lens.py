"""The logit lens as a heatmap: what each layer would predict next, at every position.

Rows are layers, the embeddings at the bottom and the model's output at the top (the residual
stream grows upward); columns are input positions. Cell (l, t) is layer l's guess for the token
*after* input token t: its colour is that guess's probability, its text the guessed token.

Reading the figure back: the one heatmap trace, named "logit lens", has ``z`` (L, T) = the
top-1 probabilities as given, ``y`` = 0..L-1 (0 = the first row given, normally the
embeddings), ``x`` = 0..T-1, ``text[l][t]`` = the top-1 token's label (shortened and
HTML-escaped; None when there are more than ``max_text`` positions) and ``customdata[l][t]``
the hover text: layer, input token, the top predictions with probabilities (and, when given,
the probability of the model's final answer and the entropy).

The lens comes as an object with attributes or a mapping with keys ``top_ids`` (L, T, k) and
``top_probs`` (L, T, k), optionally ``final_prob`` (L, T), ``entropy`` (L, T) and
``layer_labels`` (e.g. ``archplay.models.analysis.lens.Lens``); arrays or tensors alike. Predicted ids become
labels through ``labels_for``: a function ids -> labels, or a sequence indexed by id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style
from archplay.viz.attention import tick_positions, tick_text

LENS_SCALE = "YlGnBu"
CELL_TEXT_LIMIT = 8  # characters of the top-1 label written in a cell
READOUT = "each row: that layer's output read through the final norm and LM head"
TICK_CHAR_PX = 7.5  # about one character of a 13-px tick label
TITLE_LINE_PX = 20  # the rotated axis title's line


def logit_lens_heatmap(
    lens,
    token_labels: Sequence[str],
    labels_for: Callable[[list[int]], list[str]] | Sequence[str],
    *,
    title: str = "Logit lens: each layer's next-token guess",
    max_text: int = 64,
    max_ticks: int = 48,
) -> go.Figure:
    """Layer × position heatmap of the top-1 next-token prediction read out at every layer.

    token_labels: one label per input position. labels_for: labels for predicted ids.
    max_text: above this many positions cells carry no text (hover still has everything).
    """
    top_ids, top_probs = _array(lens, "top_ids"), _array(lens, "top_probs")
    if top_ids.ndim != 3 or top_ids.shape != top_probs.shape:
        raise ValueError(f"expected (layers, positions, k) top ids and probabilities, got {top_ids.shape} "
                         f"and {top_probs.shape}")  # fmt: skip
    n_layers, n_pos, _ = top_ids.shape
    if len(token_labels) != n_pos:
        raise ValueError(f"{len(token_labels)} token labels for {n_pos} positions")
    rows = _layer_labels(lens, n_layers)
    predicted, cells = _predicted_labels(top_ids, labels_for)  # (L, T, k) escaped, (L, T) short top-1
    z = top_probs[..., 0]  # (L, T)
    heatmap = dict(
        type="heatmap",
        name="logit lens",
        z=z,
        x=np.arange(n_pos),
        y=np.arange(n_layers),
        customdata=_hover(rows, token_labels, predicted, top_probs, lens),
        hovertemplate="%{customdata}<extra></extra>",
        colorscale=LENS_SCALE,
        zmin=0.0,
        zmax=1.0,
        xgap=1 if n_pos <= max_text else 0,
        ygap=1,
        colorbar=dict(title=dict(text="top-1<br>probability"), thickness=14),
    )
    if n_pos <= max_text:
        heatmap["text"] = cells.tolist()
        heatmap["texttemplate"] = "%{text}"
        heatmap["textfont"] = dict(size=10 if n_pos > 24 else 12)
    return style.figure(data=[heatmap], layout=_layout(title, rows, token_labels, max_ticks))


def _field(lens, name: str):
    if isinstance(lens, Mapping):
        return lens.get(name)
    return getattr(lens, name, None)


def _array(lens, name: str) -> np.ndarray:
    value = _field(lens, name)
    if value is None:
        raise ValueError(f"the lens has no {name!r}")
    return style.to_numpy(value)


def _layer_labels(lens, n_layers: int) -> list[str]:
    given = _field(lens, "layer_labels")
    labels = list(given) if given is not None else ["embeddings"] + [f"layer {i}" for i in range(1, n_layers)]
    if len(labels) != n_layers:
        raise ValueError(f"{len(labels)} layer labels for {n_layers} layers")
    return labels


def _predicted_labels(top_ids: np.ndarray, labels_for) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the predicted ids: every one HTML-escaped (L, T, k), and the top-1 shortened
    then escaped for the cells (L, T). ``labels_for`` is asked once, for the distinct ids."""
    unique, inverse = np.unique(top_ids.astype(np.int64), return_inverse=True)
    ids = unique.tolist()
    labels = labels_for(ids) if callable(labels_for) else [labels_for[i] for i in ids]
    if len(labels) != len(ids):
        raise ValueError(f"labels_for returned {len(labels)} labels for {len(ids)} ids")
    escaped = np.array([style.safe_label(s) for s in labels], dtype=object)
    short = np.array([style.safe_label(style.short_label(str(s), CELL_TEXT_LIMIT)) for s in labels], dtype=object)
    index = inverse.reshape(top_ids.shape)  # (L, T, k) into the distinct ids
    return escaped[index], short[index[..., 0]]


def _hover(rows, token_labels, predicted: np.ndarray, top_probs: np.ndarray, lens) -> np.ndarray:
    """One hover string per cell, (L, T)."""
    n_layers, n_pos, k = predicted.shape
    final_prob, entropy = _field(lens, "final_prob"), _field(lens, "entropy")
    final_prob = style.to_numpy(final_prob) if final_prob is not None else None  # (L, T)
    entropy = style.to_numpy(entropy) if entropy is not None else None  # (L, T)
    answer = predicted[-1, :, 0]  # (T,) the last row's top-1
    tokens = [style.safe_label(s) for s in token_labels]
    out = np.empty((n_layers, n_pos), dtype=object)
    for layer in range(n_layers):
        for t in range(n_pos):
            lines = [f"<b>{style.safe_label(rows[layer])}</b> · after token {t} ‘{tokens[t]}’"]
            lines += [f"{r + 1}. ‘{predicted[layer, t, r]}’ {top_probs[layer, t, r]:.1%}" for r in range(k)]
            if final_prob is not None:
                lines.append(f"p(final answer ‘{answer[t]}’) {final_prob[layer, t]:.1%}")
            if entropy is not None:
                lines.append(f"entropy {entropy[layer, t]:.2f} nats")
            out[layer, t] = "<br>".join(lines)
    return out


def _layout(title: str, rows: list[str], token_labels, max_ticks: int) -> dict:
    n_layers, n_pos = len(rows), len(token_labels)
    xt = tick_positions(n_pos, max_ticks)
    crowded = len(xt) > 24
    layout = dict(
        xaxis=dict(
            title_text="input token (each cell predicts the token after it)", tickmode="array",
            tickvals=xt.tolist(), ticktext=tick_text(token_labels, xt), showgrid=False, zeroline=False,
            tickangle=-90 if crowded else (-45 if len(xt) > 12 else 0), tickfont=dict(size=9 if crowded else 12),
        ),
        yaxis=dict(
            title_text="layer", tickmode="array", tickvals=list(range(n_layers)),
            ticktext=[style.safe_label(r) for r in rows], showgrid=False, zeroline=False, automargin=True,
        ),
    )  # fmt: skip
    height = int(np.clip(170 + 30 * n_layers, 340, 1000))
    title = f"{title}<br><sup>{READOUT}</sup>"  # said here: as the rotated axis title it outgrew short lenses
    margin = dict(style.MARGIN, l=_left_margin(rows))
    return style.base_layout(title, height=height, plot_bgcolor="white", margin=margin, **layout)


def _left_margin(rows: list[str]) -> int:
    """Room for the longest row label and the axis title beside it, so neither is clipped at the
    figure's edge (``automargin`` corrects a browser's own fonts; this is the first layout)."""
    return int(TICK_CHAR_PX * max(len(r) for r in rows) + TITLE_LINE_PX + 24)


__all__ = ["logit_lens_heatmap"]
