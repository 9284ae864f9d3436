"""What a Run ships to the page so that the sliders redraw there, with no request to the server.

The page's script (``app/explore/page.js``) recomputes and redraws from this:

* **the next-token distribution** at the shown position: the *full* logits row, float32, so
  temperature, top-k and top-p stay exact over the whole vocabulary (the page runs the same
  stages as ``archplay.models.sampling.staged_distribution``); the top tokens' ids and labels for
  the bars; a title. Another position or translation step is one small request (``row``).
* **the attention maps** of the shown kind: every layer and head as float16 (3 significant
  digits, what the hover shows), a causal map's upper triangle left out (it is zero by
  construction); the axis labels, the title pattern, and each layer's mask rule. Above
  ``ALL_LAYERS_VALUES`` values only the shown layer goes, and another layer is one request.
* **a state-space model's step sizes Δ**, per layer and token.
* the figures' **base layouts**, built here by the ``viz`` builders with their data left out,
  so the look of a figure has one owner (Python) and the page only fills in numbers.

``vocabulary_labels`` is shipped on its own, once per model, for the labels of sampled tokens.
Sizes at 128 tokens (``bench.interactive``): a built-in's Run ships 0.2 to 0.7 MB. A 12 × 12,
50,257-token GPT-2-sized checkpoint's 144 maps hold 1.2 M values, over ``ALL_LAYERS_VALUES``, so
its Run ships one layer's maps (0.26 MB in base64) and the 50,257 logits (0.27 MB); its 50,257
labels (about 0.5 MB) go once, when the model is first shown.
"""

from __future__ import annotations

import base64
import itertools
import json

import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor

from archplay.models.sampling import staged_distribution
from archplay.viz import style
from archplay.viz.attention import CAP_MIN_CELLS, CAP_QUANTILE, GRID_GAP, attention_mask_heatmap, mark_cells
from archplay.viz.sampling import distribution_figure

from ..session import Analysis
from . import attention, scan
from .sampling import TOP_N, distribution_title, predicted_position, top_tokens

VERSION = 1
ALL_LAYERS_VALUES = 1 << 20  # above this many attention values, only the shown layer is shipped
_runs = itertools.count(1)  # a fresh number per payload, so the page tells Runs apart


def encode(values: Tensor | np.ndarray, dtype: str) -> str:
    """``values`` flattened to little-endian ``dtype`` ("f4" or "f2") and base64-encoded."""
    arr = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def figure_json(fig: go.Figure | None, strip: tuple[str, ...] = ()) -> dict | None:
    """``fig`` as plain JSON data (typed arrays as plotly's ``{dtype, bdata}``), with the trace
    fields in ``strip`` emptied: the page fills them in."""
    if fig is None:
        return None
    data = json.loads(fig.to_json())
    for trace in data.get("data", []):
        for key in strip:
            if key in trace:
                trace[key] = None
    data["layout"].pop("template", None)  # the page applies the theme's own (light or dark)
    return data


def explore_payload(labels_for, a: Analysis | None, *, kind: str | None, layer: int, position: int | None) -> dict:
    """Everything the page redraws from, for the Run ``a`` (None: an empty payload)."""
    if a is None:
        return {"v": VERSION, "run": next(_runs), "empty": True}
    out = {
        "v": VERSION, "run": next(_runs), "model": a.model_key, "family": a.family, "objective": a.spec.objective,
        "labels": [style.safe_label(s) for s in a.labels], "colours": COLOURS,
    }  # fmt: skip
    out["dist"] = distribution_payload(labels_for, a, position)
    out["attn"] = attention_payload(a, kind, layer)
    out["delta"] = delta_payload(a)
    return out


COLOURS = {
    "raw": style.RAW, "tempered": style.TEMPERED, "final": style.FINAL, "kept": style.KEPT,
    "removed": style.REMOVED, "threshold": style.THRESHOLD, "faded_alpha": style.FADED_ALPHA,
    "chosen": style.CHOSEN, "mask_off": style.MASK_OFF, "mask_on": style.MASK_ON,
}  # fmt: skip


# --------------------------------------------------------------------------- the distribution


def distribution_payload(labels_for, a: Analysis, position: int | None) -> dict:
    """The logits row of the shown position (or translation step), its top tokens and title; or
    ``{"message": …}`` when there is no prediction to show."""
    pos, message = predicted_position(a, None, position)
    if pos is None:
        return {"message": message}
    row = a.logits[pos].float()
    ids, labels = top_tokens(labels_for, row)
    out = {
        "pos": pos, "title": distribution_title(a, pos), "vocab": int(row.shape[-1]), "logits": encode(row, "f4"),
        "top": [[int(i), style.safe_label(s)] for i, s in zip(ids, labels)],
        "wrote": a.translation.labels[pos] if a.translation is not None else None,
        "n_steps": a.n_steps,
        "base": figure_json(distribution_figure(staged_distribution(row), labels_for, top_n=TOP_N, title="")),
    }  # fmt: skip
    return out


# --------------------------------------------------------------------------- attention


def attention_payload(a: Analysis, kind: str | None, layer: int) -> dict | None:
    """Every layer × head of ``kind`` (or only ``layer``'s above ``ALL_LAYERS_VALUES``) as float16,
    with what the heatmap, the grid and the mask need around them; None without attention. The Run's
    gold cells of this kind (``Analysis.gold``) are framed on every layer and head (in the base layout)."""
    maps = attention.attention_maps(a, kind)  # (L, H, Tq, Tk)
    if maps is None:
        return None
    kind = a.kind(kind)
    L, H, nq, nk = maps.shape
    lower = nq == nk and attention.mask_rule(a, kind, 0)[0] in attention.CAUSAL_PATTERNS
    per_map = nq * (nq + 1) // 2 if lower else nq * nk
    layers = list(range(L)) if L * H * per_map <= ALL_LAYERS_VALUES else [int(layer)]
    packed = torch.cat([_pack(maps[i, h], lower) for i in layers for h in range(H)]) if layers else torch.zeros(0)
    qlabels, klabels = attention.axis_labels(a, kind)
    # the heatmap every layer is drawn into (a hybrid's: an attention layer's, its Mamba layers titled as such)
    base = attention.attention_figure(a, a.blocks[0] if a.hybrid else layers[0], 0, kind, cells=False)
    if a.gold and a.gold.get(kind) and base is not None:
        mark_cells(base, a.gold[kind], name="gold antecedent" if kind == "self" else "gold word alignment")
    out = {
        "kind": kind, "L": L, "H": H, "nq": nq, "nk": nk, "lower": lower, "layers": layers,
        "data": encode(packed.to(torch.float16), "f2"),
        "qlabels": [style.safe_label(s) for s in qlabels], "klabels": [style.safe_label(s) for s in klabels],
        "title": attention.title_pattern(a, kind), "titles": attention.layer_titles(a), "scan": a.scan is not None,
        "base": figure_json(base, strip=("z", "customdata")),
        # the page makes the thumbnails from the maps when it has them all
        "grid": figure_json(attention.grid_figure(a, layers[0], 0, kind), strip=("z",) if len(layers) == L else ()),
        "masks": [mask_rule(a, kind, i) for i in range(L)],
        "mask_base": figure_json(attention_mask_heatmap(torch.ones(nq, nk, dtype=torch.bool), qlabels, klabels),
                                 strip=("z",)),
        "cap": {"quantile": CAP_QUANTILE, "min_cells": CAP_MIN_CELLS}, "grid_gap": GRID_GAP,
    }  # fmt: skip
    return out


def _pack(m: Tensor, lower: bool) -> Tensor:
    """A (T, S) map flattened, row by row; a lower-triangular one without its upper triangle."""
    if not lower:
        return m.reshape(-1)
    rows, cols = torch.tril_indices(m.shape[0], m.shape[1])
    return m[rows, cols]


def mask_rule(a: Analysis, kind: str, layer: int) -> dict:
    """``layer``'s mask as a rule the page draws: pattern, window, title and help."""
    pattern, window, help_text = attention.mask_rule(a, kind, layer)
    return {"pattern": pattern, "window": window, "title": attention.mask_title(pattern, window), "help": help_text}


# --------------------------------------------------------------------------- the scan's step sizes


def delta_payload(a: Analysis) -> dict | None:
    """A state-space model's mean step size Δ per layer and token, and the bar chart's base."""
    if a.hybrid:  # every layer of the model: its Mamba layers' Δ, nothing for the attention layers
        s, rows = a.mamba, scan.delta_rows(a)
        return {
            "data": encode(torch.stack(rows).float(), "f4"), "L": len(rows), "T": len(a.ids),
            "title": scan.DELTA_TITLE.format(d_inner=s.d_inner), "titles": scan.delta_titles(a),
            "base": figure_json(scan.delta_figure(a, s.blocks[0]), strip=("y",)),
        }  # fmt: skip
    if a.scan is None:
        return None
    s = a.scan
    return {
        "data": encode(torch.stack(s.delta_mean).float(), "f4"), "L": s.n_layer, "T": len(a.ids),
        "title": scan.DELTA_TITLE.format(d_inner=s.d_inner), "base": figure_json(scan.delta_figure(a, 0), strip=("y",)),
    }  # fmt: skip


# --------------------------------------------------------------------------- vocabulary


def vocabulary_labels(tokenizer, vocab: int) -> list[str]:
    """Every token id's display label, HTML-escaped, for the labels of sampled tokens (shipped once
    per model)."""
    return [style.safe_label(s) for s in tokenizer.tokens(list(range(vocab)))]

