"""The "Inside a step" tab: one attention head for one query token, every number on the way.

Drawn for the Explore tab's Run (its model and tokens; an encoder-decoder's translation too):
``archplay.models.analysis.steps.attention_steps`` runs the model once more with a tap on the chosen
attention module and returns what its forward pass used (q, k, v, the scores, scale, bias, mask,
weights and output), which ``archplay.viz.steps`` draws. Every control change recomputes: one
forward pass of the session's model on the session's tokens.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import gradio as gr
import plotly.graph_objects as go
import torch

from archplay.models.analysis.steps import attention_modules, attention_steps
from archplay.viz.steps import attention_step_figure, residual_figure

from .catalog import Catalog, Entry, UnknownModelError
from .explore import translation
from .guard import MODEL_EVENTS
from .messages import error, md_escape, note, ok, quote
from .session import Analysis
from .sliders import clamp

HELP = (
    "One head, one query token, the model's own numbers. The query's vector **q** is compared with every key "
    "**kⱼ** by a dot product (the **score** q·kⱼ, large when they point the same way). The scores are **scaled** "
    "(by 1/√d_head in most models), a **position bias** is added where the model has one (ALiBi, T5's buckets), "
    "keys the query may not see are **masked** to −∞, and **softmax** turns the rest into weights that sum to 1. "
    "The head's output is the **weighted sum of the values**, out = Σ wⱼvⱼ; W_O maps it back to the model's "
    "width, where it joins the other heads and the **residual stream**. Hover a cell for its exact value."
)
KIND_CHOICES = [  # attention_steps' kinds, as the Explore tab names them
    ("encoder self-attention", "self"),
    ("decoder self-attention (causal)", "decoder"),
    ("cross-attention (decoder → encoder)", "cross"),
]
DEFAULT_KIND = "cross"  # as the Explore tab: the alignment between the two languages
RUN_FIRST = "Run a model on the Explore tab first."


class StepsView(NamedTuple):
    """The tab's two figures and its summary (markdown)."""

    flow: go.Figure | None
    residual: go.Figure | None
    summary: str


class Controls(NamedTuple):
    """What the controls span for one Run and kind."""

    kinds: bool  # whether the kind choice applies (encoder-decoders)
    kind: str
    n_layer: int
    n_head: int
    queries: list[tuple[str, int]]  # (label, position) per query token
    default_query: int


# --------------------------------------------------------------------------- pure handlers


def steps_view(catalog: Catalog, analysis: Analysis | None, kind=None, layer=0, head=0, query=None) -> StepsView:
    """The head's computation for one query of the session's Run; a sentence instead of an exception."""
    if analysis is None:
        return StepsView(None, None, note(RUN_FIRST))
    if missing := no_attention(analysis):
        return StepsView(None, None, missing)
    try:
        entry = catalog.get(analysis.model_key)
        kind = kind_of(analysis, kind)
        layer, head = _index(layer, "layer"), _index(head, "head")
        keys, queries = labels(analysis, kind)
        query = query_index(query, queries)
        s = _steps(entry, analysis, kind, layer, head, query)
    except UnknownModelError as e:
        return StepsView(None, None, error(md_escape(str(e))))
    except ValueError as e:  # out of range, a kind the model lacks, a value of the wrong type
        return StepsView(None, None, error(md_escape(str(e))))
    position = _position(entry)
    flow = attention_step_figure(s, keys, queries[query], position=position)
    residual = residual_figure(s, queries[query])
    return StepsView(flow, residual, summary(s, keys, queries[query], position))


def no_attention(analysis: Analysis) -> str | None:
    """A sentence for a model with no attention (a state-space scan), else None."""
    spec = analysis.spec
    if spec.has_heads:
        return None
    scan = (" Its scan mixes the tokens instead: the scan view on the Explore tab shows it as a hidden attention "
            "map, with its step sizes Δ." if "scan" in spec.views else "")  # fmt: skip
    return note(f"**{md_escape(analysis.model_key)}** is a {md_escape(spec.title)}: it has no attention, so "
                f"there is no attention step to take apart.{scan}")  # fmt: skip


def kind_of(analysis: Analysis, kind) -> str:
    """``kind`` checked against the Run: "self" for a model with one attention; an encoder-decoder's
    "self" (also "encoder"), "decoder" or "cross", None picking the cross-attention."""
    if analysis.translation is None:
        return "self"
    if kind is None or kind == "":
        return DEFAULT_KIND
    kind = "self" if kind == "encoder" else kind
    if kind not in [k for _, k in KIND_CHOICES]:
        raise ValueError(f"attention kind must be one of {', '.join(k for _, k in KIND_CHOICES)}, got {kind!r}")
    return kind


def labels(analysis: Analysis, kind: str) -> tuple[list[str], list[str]]:
    """(key labels, query labels) for ``kind``: an encoder-decoder's decoder queries are the tokens it read
    at each step (the start token, then its own translation)."""
    t = analysis.translation
    if kind == "self":
        return analysis.labels, analysis.labels
    return (t.input_labels if kind == "decoder" else analysis.labels), t.input_labels


def query_index(query, queries: list[str]) -> int:
    """``query`` as a position into ``queries``: a number, or a token's text when exactly one token has it."""
    if query is None or query == "":
        raise ValueError("choose a query token")
    try:
        i = int(query)
    except (TypeError, ValueError):
        found = [i for i, label in enumerate(queries) if label == str(query)]
        if len(found) != 1:
            raise ValueError(f"query must be a token position between 0 and {len(queries) - 1}, "
                             f"got {str(query)[:40]!r}") from None  # fmt: skip
        i = found[0]
    if not 0 <= i < len(queries):
        raise ValueError(f"query must be between 0 and {len(queries) - 1}, got {i}")
    return i


def _index(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {str(value)[:40]!r}") from None


@torch.inference_mode()
def _steps(entry: Entry, analysis: Analysis, kind: str, layer: int, head: int, query: int):
    """One forward pass of the session's tokens with the tap on (layer, head); ValueError when out of range."""
    ids = torch.tensor([analysis.ids], dtype=torch.long, device=entry.device)  # (1, T)
    kw = {}
    if analysis.translation is not None:  # the decoder reads what it wrote, shifted right behind the start token
        written = translation.decoder_inputs(entry, analysis.translation.ids)
        kw["decoder_input_ids"] = torch.tensor([written], dtype=torch.long, device=entry.device)  # (1, n)
    return attention_steps(entry.model, ids, layer, head, query, kind=kind, **kw)


def _position(entry: Entry) -> str | None:
    """How the model encodes positions: its config's ``positions``, "relative" for T5's buckets."""
    cfg = entry.config
    if hasattr(cfg, "positions"):
        return str(cfg.positions)
    return "relative" if hasattr(cfg, "relative_attention_num_buckets") else None


def controls(catalog: Catalog, analysis: Analysis | None, kind=None) -> Controls | None:
    """The controls' ranges for the Run and kind (None without a Run or attention)."""
    if analysis is None or no_attention(analysis):
        return None
    try:
        kind = kind_of(analysis, kind)
        modules = attention_modules(catalog.get(analysis.model_key).model, kind)
    except (ValueError, UnknownModelError):
        return None
    _, queries = labels(analysis, kind)
    first = analysis.predict_at  # the position (a translation's step) the Explore tab predicts at
    if first is None or (kind == "self" and analysis.translation is not None):
        first = len(queries) - 1
    return Controls(kinds=analysis.translation is not None, kind=kind, n_layer=len(modules),
                    n_head=int(modules[0].n_head), queries=query_choices(analysis, kind),
                    default_query=clamp(first, len(queries)))  # fmt: skip


def query_choices(analysis: Analysis, kind: str) -> list[tuple[str, int]]:
    """The query menu: "3 ‘ball’", or for a decoder step "2 ‘red’ → writes ‘aka’" (plain text: the menu
    shows it as such)."""
    t = analysis.translation
    if kind == "self":
        return [(f"{i} ‘{label}’", i) for i, label in enumerate(analysis.labels)]
    return [(f"{i} ‘{read}’ → writes ‘{wrote}’", i) for i, (read, wrote) in enumerate(zip(t.input_labels, t.labels))]


# --------------------------------------------------------------------------- the summary


def summary(s, keys: list[str], query_label: str, position: str | None) -> str:
    """The strongest keys with their numbers, then grouped-query sharing, positions and the masking."""
    w = s.weights
    order = torch.argsort(w, descending=True).tolist()
    j = order[0]
    b = float(s.bias[j])
    z = float(s.scores[j]) * s.scale + b
    who = "decoder step" if s.kind in ("decoder", "cross") else "query"
    top = (f"{quote(keys[j])} (key {j}) gets **{float(w[j]):.2f}** of the weight of {who} {s.query} "
           f"{quote(query_label)}: score {float(s.scores[j]):.3g} × {s.scale:.3g} {'−' if b < 0 else '+'} "
           f"{abs(b):.3g} = {z:.3g} before the softmax.")  # fmt: skip
    rest = [f"{quote(keys[i])} (key {i}) {float(w[i]):.2f}" for i in order[1:3] if s.mask[i]]
    if rest:
        top += f" Next: {', '.join(rest)}."
    lines = [ok(top), _sharing(s), _positions(s, position), _masking(s)]
    return "  \n".join(line for line in lines if line)  # one paragraph, a line each


def _sharing(s) -> str:
    g = s.group
    if len(g) == 1:
        return f"Head {s.head} has its own keys and values."
    return (f"Query heads {g[0]}–{g[-1]} share key/value head {s.kv_head} (grouped-query attention): they read "
            f"the same keys and values and differ only in their queries.")  # fmt: skip


def _positions(s, position: str | None) -> str:
    if s.q_before is not None:
        return (f"Rotary positions (RoPE): q and every kⱼ are rotated by their position before the dot product "
                f"(the two strips above the keys), so the score depends on how far apart they are; a rotation "
                f"keeps lengths: |q| = {float(s.q_before.norm()):.3g} before, {float(s.q.norm()):.3g} after.")  # fmt: skip
    if not bool((s.bias != 0).any()):
        return "No position bias here: " + ("positions are in the embeddings." if position in ("learned", "sinusoidal")
                                            else "the scores alone decide.")  # fmt: skip
    seen = s.bias[s.mask]
    lo, hi = float(seen.min()), float(seen.max())
    what = {"alibi": "ALiBi adds a penalty that grows with the distance to each key",
            "relative": "T5 adds a learned bias for each bucket of relative distance"}.get(position or "",
                                                                                        "The model adds a position bias")  # fmt: skip
    return f"{what}: here from {lo:.3g} to {hi:.3g}."


def _masking(s) -> str:
    n = int((~s.mask).sum())
    if n == 0:
        return ""
    return f"{n} of {len(s.mask)} keys are masked (−∞ before the softmax, so weight 0)."


# --------------------------------------------------------------------------- layout and wiring


def build(catalog: Catalog, explore_ui: SimpleNamespace) -> SimpleNamespace:
    ui = SimpleNamespace()
    gr.Markdown("### Inside a step: one attention head, with its numbers")
    gr.Markdown(HELP, elem_classes="ap-help")
    with gr.Row(equal_height=False, elem_id="steps-controls") as ui.controls:
        ui.kind = gr.Dropdown(KIND_CHOICES, value=DEFAULT_KIND, label="Attention", visible=False,
                              allow_custom_value=True, elem_id="steps-kind", min_width=220)  # fmt: skip
        ui.layer = gr.Slider(0, 1, value=0, step=1, precision=0, label="Layer", elem_id="steps-layer", min_width=160)
        ui.head = gr.Slider(0, 1, value=0, step=1, precision=0, label="Head", elem_id="steps-head", min_width=160)
        ui.query = gr.Dropdown([], value=None, label="Query token", allow_custom_value=True, elem_id="steps-query",
                               min_width=220)  # fmt: skip
    ui.note = gr.Markdown(note(RUN_FIRST), elem_id="steps-note")
    with gr.Column(elem_id="steps-plots") as ui.plots:
        ui.flow = gr.Plot(show_label=False, elem_id="steps-flow")
        ui.residual = gr.Plot(show_label=False, elem_id="steps-residual")
    _wire(catalog, explore_ui, ui)
    return ui


def _wire(catalog: Catalog, explore_ui: SimpleNamespace, ui: SimpleNamespace) -> None:
    shown = [ui.flow, ui.residual, ui.note]
    ranged = [ui.kind, ui.layer, ui.head, ui.query]
    boxes = [ui.controls, ui.plots]

    def redraw(analysis, kind, layer, head, query):
        v = steps_view(catalog, analysis, kind, layer, head, query)
        return {ui.flow: v.flow, ui.residual: v.residual, ui.note: v.summary}

    def reset(analysis, kind, layer, head, query):
        """A new Run or kind: the controls span it (their values clamped into it), then the view."""
        c = controls(catalog, analysis, kind)
        if c is None:  # no Run, or no attention: only the sentence
            hidden = {box: gr.update(visible=analysis is None) for box in boxes}
            return {**hidden, **{x: gr.update() for x in ranged}, **redraw(analysis, kind, layer, head, query)}
        layer, head = clamp(_or(layer, c.n_layer - 1), c.n_layer), clamp(_or(head, 0), c.n_head)
        kind_shown = c.kind if c.kinds else DEFAULT_KIND  # hidden, it waits for the next encoder-decoder
        return {**{box: gr.update(visible=True) for box in boxes},
                ui.kind: gr.update(visible=c.kinds, value=kind_shown),
                ui.layer: gr.update(maximum=max(c.n_layer - 1, 1), value=layer, interactive=c.n_layer > 1),
                ui.head: gr.update(maximum=max(c.n_head - 1, 1), value=head, interactive=c.n_head > 1),
                ui.query: gr.update(choices=c.queries, value=c.default_query),
                **redraw(analysis, c.kind, layer, head, c.default_query)}  # fmt: skip

    inputs = [explore_ui.state, *ranged]
    model_run = dict(show_progress="hidden", trigger_mode="always_last", concurrency_id=MODEL_EVENTS)
    for landed in getattr(explore_ui, "runs", (explore_ui.analysed,)):  # each Run: page load, Run, an example
        landed.then(reset, inputs=inputs, outputs=[*boxes, *ranged, *shown], api_name=False, **model_run)
    ui.kind.input(reset, inputs=inputs, outputs=[*boxes, *ranged, *shown], api_name=False, **model_run)
    gr.on(triggers=[ui.layer.input, ui.head.input, ui.query.input], fn=redraw, inputs=inputs, outputs=shown,
          api_name="steps", **model_run)  # fmt: skip


def _or(value, default: int) -> int:
    """``value`` as an int, or ``default`` when it is missing or not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
