"""The "Inside a step" tab: one attention head for one query token, every number on the way; and the
other mixers at one token: a mixture of experts' gate, Mamba's selective scan.

Drawn for the Explore tab's Run (its model and tokens; an encoder-decoder's translation too):
``archplay.models.analysis.steps.attention_steps`` runs the model once more with a tap on the chosen
attention module and returns what its forward pass used (q, k, v, the scores, scale, bias, mask,
weights and output), which ``archplay.viz.steps`` draws. A Run that routes (``Analysis.routing``)
also gets the gate at the query token (``gate_steps``: router logits → softmax → top-k → weights →
the weighted sum of the chosen experts); a Run with a scan (``Analysis.scan``) gets, instead of the
attention, the scan at a chosen token (``scan_steps``: Δ, Ā, B̄u, the state update, the readout, the
skip, the gate; and the token's hidden-attention row). Every control change recomputes: one forward
pass of the session's model on the session's tokens (the scan's hidden-attention row too is computed
from that pass's Δ, A, B and C).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import NamedTuple

import gradio as gr
import plotly.graph_objects as go
import torch

from archplay.models.analysis.mixers import gate_steps, scan_steps
from archplay.models.analysis.steps import attention_modules, attention_steps
from archplay.viz.steps import attention_step_figure, gate_figure, residual_figure, scan_figure

from .catalog import Catalog, Entry, UnknownModelError
from .explore import translation
from .follow import follow
from .guard import MODEL_EVENTS
from .messages import error, md_escape, note, ok, plural, quote
from .session import Analysis
from .sliders import check, clamp

HELP = (
    "One head, one query token, the model's own numbers. The query's vector **q** is compared with every key "
    "**kⱼ** by a dot product (the **score** q·kⱼ, large when they point the same way). The scores are **scaled** "
    "(by 1/√d_head in most models), a **position bias** is added where the model has one (ALiBi, T5's buckets), "
    "keys the query may not see are **masked** to −∞, and **softmax** turns the rest into weights that sum to 1. "
    "The head's output is the **weighted sum of the values**, out = Σ wⱼvⱼ; W_O maps it back to the model's "
    "width, where it joins the other heads and the **residual stream**. Hover a cell for its exact value."
)
GATE_HELP = (
    "A mixture of experts replaces the feed-forward block with several **experts** and a **router**. The router "
    "scores the token against every expert (the **logits**, W_router·x), a **softmax** over all of them (in float32) "
    "turns the scores into probabilities, only the **top k** experts run, their probabilities are **renormalised** "
    "to sum to 1 (in most models) and the layer's output is the **weighted sum** of the chosen experts' outputs. "
    "The other experts' output norms are computed here only to compare: the model does not run them. The token is "
    "the query token above."
)
SCAN_HELP = (
    "Mamba mixes the tokens with a **selective scan** instead of attention: each channel carries a small state h "
    "(N numbers) from token to token. At each token the model picks a **step size Δ** per channel; "
    "**Ā = exp(Δ·A)** (A < 0) is how much of the old state survives (near 1 for a small Δ: the past is kept; near 0 "
    "for a large Δ: it is forgotten) and **B̄u = Δ·B·u** is what the token writes in, so the state becomes "
    "**h = Ā ⊙ h before + B̄u**. The **readout** h·C plus a **skip** D·u gives y, which a **gate** SiLU(z) scales "
    "before the output projection W_out. The bars at the bottom are this token's row of the Explore tab's "
    "hidden-attention map. Hover a cell for its arithmetic."
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


class MixerView(NamedTuple):
    """A mixer's figure at one token (the gate, the scan) and its summary (markdown)."""

    figure: go.Figure | None
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
    if analysis.blocks is not None:  # a hybrid's attention layers: name the model's own layer in the figure
        s = dataclasses.replace(s, layer=analysis.blocks[s.layer])
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


def query_index(query, queries: list[str], name: str = "query") -> int:
    """``query`` as a position into ``queries``: a number, or a token's text when exactly one token has it.
    ``name`` is what the messages call it ("query", "token")."""
    if query is None or query == "":
        raise ValueError("choose a query token" if name == "query" else f"choose a {name}")
    try:
        i = int(query)
    except (TypeError, ValueError):
        found = [i for i, label in enumerate(queries) if label == str(query)]
        if len(found) != 1:
            raise ValueError(f"{name} must be a token position between 0 and {len(queries) - 1}, "
                             f"got {str(query)[:40]!r}") from None  # fmt: skip
        i = found[0]
    if not 0 <= i < len(queries):
        raise ValueError(f"{name} must be between 0 and {len(queries) - 1}, got {i}")
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
    z = float(s.logits[j])  # what the softmax takes: scores·scale (soft-capped where the model caps) + bias
    who = "decoder step" if s.kind in ("decoder", "cross") else "query"
    scaled = f"{float(s.scores[j]):.3g} × {s.scale:.3g}"
    if getattr(s, "softcap", None) is not None:  # Gemma 2: cap·tanh(x/cap) of the scaled score
        cap = f"{s.softcap:.3g}"
        scaled = f"{cap}·tanh({scaled} / {cap})"
    top = (f"{quote(keys[j])} (key {j}) gets **{float(w[j]):.2f}** of the weight of {who} {s.query} "
           f"{quote(query_label)}: score {scaled} {'−' if b < 0 else '+'} {abs(b):.3g} = {z:.3g} before the "
           f"softmax.")  # fmt: skip
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


# --------------------------------------------------------------------------- the other mixers


def gate_layers(analysis: Analysis | None) -> list[tuple[str, int]]:
    """The MoE layer menu, (label, block): only the blocks that route (a dense block has no gate)."""
    routing = analysis.routing if analysis is not None else None
    return [] if routing is None else [(f"layer {b}", int(b)) for b in routing.blocks]


def default_token(analysis: Analysis) -> int:
    """The token the mixers' views start at: the one the Explore tab predicts from (the last)."""
    first = analysis.predict_at
    return clamp(len(analysis.labels) - 1 if first is None else first, len(analysis.labels))


def gate_view(catalog: Catalog, analysis: Analysis | None, layer=None, token=None) -> MixerView:
    """The gate of a mixture of experts' layer ``layer`` (a block that routes; None: the last) at ``token``."""
    if analysis is None:
        return MixerView(None, note(RUN_FIRST))
    if analysis.routing is None:
        return MixerView(None, note(f"**{md_escape(analysis.model_key)}** is a {md_escape(analysis.spec.title)}: "
                                    f"it has no router, so there is no gate to take apart."))  # fmt: skip
    try:
        entry = catalog.get(analysis.model_key)
        blocks = [b for _, b in gate_layers(analysis)]
        layer = blocks[-1] if layer is None or layer == "" else _index(layer, "layer")
        if layer not in blocks:
            raise ValueError(f"layer {layer} has no router: the layers that route are {', '.join(map(str, blocks))}")
        token = query_index(token, analysis.labels, "token")
        g = _mixer(gate_steps, entry, analysis, layer, token)
    except (UnknownModelError, ValueError) as e:
        return MixerView(None, error(md_escape(str(e))))
    return MixerView(gate_figure(g, analysis.labels), gate_summary(g, analysis.labels))


def scan_view(catalog: Catalog, analysis: Analysis | None, layer=None, token=None) -> MixerView:
    """Mamba's selective scan in layer ``layer`` (None: the last) at ``token``."""
    if analysis is None:
        return MixerView(None, note(RUN_FIRST))
    scan = scan_of(analysis)
    if scan is None:
        return MixerView(None, note(f"**{md_escape(analysis.model_key)}** is a {md_escape(analysis.spec.title)}: "
                                    f"it has no selective scan to take apart."))  # fmt: skip
    try:
        entry = catalog.get(analysis.model_key)
        n = scan.n_layer
        layer = n - 1 if layer is None or layer == "" else check(_index(layer, "layer"), n, "layer")
        token = query_index(token, analysis.labels, "token")
        s = _mixer(scan_steps, entry, analysis, scan.block(layer), token)  # a hybrid: its Mamba layer's number
    except (UnknownModelError, ValueError) as e:
        return MixerView(None, error(md_escape(str(e))))
    return MixerView(scan_figure(s, analysis.labels), scan_summary(s, analysis.labels))


def scan_of(analysis: Analysis | None):
    """The Run's scan: a state-space model's, or a hybrid's Mamba layers' (its slider spans those; None without)."""
    if analysis is None:
        return None
    return analysis.scan if analysis.scan is not None else analysis.mamba


@torch.inference_mode()
def _mixer(steps, entry: Entry, analysis: Analysis, layer: int, token: int):
    """``gate_steps`` or ``scan_steps`` on the session's tokens."""
    ids = torch.tensor([analysis.ids], dtype=torch.long, device=entry.device)  # (1, T)
    return steps(entry.model, ids, layer, token)


def _names(items: list[str]) -> str:
    """Names joined as a sentence does: one, "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def gate_summary(g, labels: list[str]) -> str:
    """Where the token goes with its weights, the softmax before the renormalising, and the weighted sum."""
    chosen, w = list(g.chosen), g.weights.tolist()
    norms = g.expert_norms.tolist()
    E, k = len(norms), len(chosen)
    token = f"Token {g.token} {quote(labels[g.token])}"
    goes = _names([f"{e} (**{x:.2f}**)" for e, x in zip(chosen, w)])
    big = max(chosen, key=lambda e: norms[e])
    top = (f"{token} goes to expert{'s' if k > 1 else ''} {goes}; " +
           (f"expert {big}'s output is the largest of the chosen (norm {norms[big]:.3g})." if k > 1 else
            f"its output has norm {norms[big]:.3g}."))  # fmt: skip
    bigger = [e for e in range(E) if e not in chosen and norms[e] > norms[big]]
    if bigger:
        top += f" Expert {bigger[0]}'s would be larger ({norms[bigger[0]]:.3g}), but the router did not choose it."
    p = g.chosen_probs.tolist()
    rest = 1.0 - sum(p)
    scaling = float(getattr(g, "scaling", 1.0) or 1.0)
    if getattr(g, "score", "softmax") == "sigmoid":  # DeepSeek-V3: each expert scored on its own
        groups = getattr(g, "groups_kept", None)
        soft = (f"Each expert's own sigmoid of its logit (not a softmax: they need not sum to 1) gave the chosen "
                f"{_names([f'{x:.2f}' for x in p])}; they were chosen by score + a correction bias"
                + (f", among the experts of groups {_names([str(x) for x in groups])}" if groups else "") + "; ")
        if k > 1 and abs(sum(w) - scaling) < 1e-4 * max(1.0, scaling):
            soft += (f"renormalised over the {k}" + (f" and × {scaling:g}" if scaling != 1.0 else "") + ": "
                     + ", ".join(f"{b:.2f}" for b in w) + ".")
        else:
            soft += "weights " + ", ".join(f"{b:.2f}" for b in w) + (f" (× {scaling:g})" if scaling != 1.0 else "") + "."
    else:
        soft = (f"The softmax over all {E} experts gave the chosen {_names([f'{x:.2f}' for x in p])}"
                + (f" (the other {plural(E - k, 'expert')} {rest:.2f} together)" if E > k else "") + "; ")  # fmt: skip
        if abs(sum(w) - 1.0) < 1e-4 and k > 1:
            soft += (f"renormalised over the {k}: "
                     + ", ".join(f"{a:.2f} / {sum(p):.2f} = {b:.2f}" for a, b in zip(p, w)) + ".")  # fmt: skip
        elif k > 1:
            soft += f"this model uses them as they are (not renormalised: they sum to {sum(w):.2f})."
        else:
            soft += f"its weight is {w[0]:.2f}."
    parts = " + ".join(f"{x:.2f} × expert {e}(x)" for e, x in zip(chosen, w))
    if g.shared_gate is not None:
        parts += f" + {g.shared_gate:.2f} × the shared expert(x) (its sigmoid gate)"
    total = (f"The layer's output = {parts}: norm {float(g.output.norm()):.3g}. Only {k} of the {E} experts ran for "
             f"this token.")  # fmt: skip
    return "  \n".join([ok(top), soft, total])


def scan_summary(s, labels: list[str]) -> str:
    """The widest and narrowest step Δ and what they do to the state, the readout against the skip, and the
    hidden-attention row."""
    delta, A_bar = s.delta, s.A_bar
    N = A_bar.shape[1]
    hi, lo = int(delta.argmax()), int(delta.argmin())
    keep_hi, keep_lo = float(A_bar[hi].mean()), float(A_bar[lo].mean())
    token = f"Token {s.token} {quote(labels[s.token])}"
    wide = (f"{token}: Δ is largest on channel {hi} (**{float(delta[hi]):.3g}**): the state there keeps "
            f"{100 * keep_hi:.0f}% of its past (mean Ā over its {N} states), so it forgets {100 * (1 - keep_hi):.0f}% "
            f"and takes the token in (B̄u up to {float(s.B_bar_u[hi].abs().max()):.3g}).")  # fmt: skip
    narrow = (f"Δ is smallest on channel {lo} ({float(delta[lo]):.2g}): Ā ≈ {keep_lo:.3f}, the state keeps its past "
              f"and barely notices the token. Over all {len(delta)} channels the state keeps "
              f"{100 * float(A_bar.mean()):.0f}% on average.")  # fmt: skip
    if s.token == 0:
        narrow += " This is the first token: the state starts at 0, so h = B̄u."
    readout = (f"y = h·C + D·u: the readout has norm {float(s.readout.norm()):.3g}, the skip {float(s.skip.norm()):.3g}; "
               f"the gate SiLU(z) scales the channels by {float(s.gate.min()):.2f} to {float(s.gate.max()):.2f} "
               f"before W_out (the mixer's output: norm {float(s.output.norm()):.3g}).")  # fmt: skip
    lines = [ok(wide), narrow, readout]
    row = s.hidden_attention
    if row is not None and s.token > 0:
        earlier = row[: s.token]
        j = int(earlier.argmax())
        lines.append(f"Hidden attention (row {s.token} of this layer's map, which a Mamba model's Explore tab draws): "
                     "of the earlier tokens, "
                     f"{quote(labels[j])} (token {j}) counts most ({float(earlier[j]):.3g}; the token itself "
                     f"{float(row[s.token]):.3g}).")  # fmt: skip
    return "  \n".join(lines)


# --------------------------------------------------------------------------- layout and wiring


def build(catalog: Catalog, explore_ui: SimpleNamespace) -> SimpleNamespace:
    ui = SimpleNamespace()
    with gr.Column(elem_id="steps-attention") as ui.attention:  # hidden for a Run with a scan instead
        gr.Markdown("### Inside a step: one attention head, with its numbers")
        gr.Markdown(HELP, elem_classes="ap-help")
        with gr.Row(equal_height=False, elem_id="steps-controls") as ui.controls:
            ui.kind = gr.Dropdown(KIND_CHOICES, value=DEFAULT_KIND, label="Attention", visible=False,
                                  allow_custom_value=True, elem_id="steps-kind", min_width=220)  # fmt: skip
            ui.layer = gr.Slider(0, 1, value=0, step=1, precision=0, label="Layer", elem_id="steps-layer",
                                 min_width=160)  # fmt: skip
            ui.head = gr.Slider(0, 1, value=0, step=1, precision=0, label="Head", elem_id="steps-head", min_width=160)
            ui.query = gr.Dropdown([], value=None, label="Query token", allow_custom_value=True,
                                   elem_id="steps-query", min_width=220)  # fmt: skip
        ui.note = gr.Markdown(note(RUN_FIRST), elem_id="steps-note")
        with gr.Column(elem_id="steps-plots") as ui.plots:
            ui.flow = gr.Plot(show_label=False, elem_id="steps-flow")
            ui.residual = gr.Plot(show_label=False, elem_id="steps-residual")
    with gr.Column(visible=False, elem_id="steps-gate") as ui.gate:  # a Run that routes
        gr.Markdown("### The gate at this token: the router and the experts, with their numbers")
        gr.Markdown(GATE_HELP, elem_classes="ap-help")
        with gr.Row(equal_height=False):
            ui.gate_layer = gr.Dropdown([], value=None, label="MoE layer (the layers that route)",
                                        elem_id="steps-gate-layer", min_width=220, scale=0)  # fmt: skip
        ui.gate_note = gr.Markdown("", elem_id="steps-gate-note")
        ui.gate_plot = gr.Plot(show_label=False, elem_id="steps-gate-plot")
    with gr.Column(visible=False, elem_id="steps-scan") as ui.scan:  # a Run with a selective scan
        gr.Markdown("### The scan at this token: one step of the selective scan, with its numbers")
        gr.Markdown(SCAN_HELP, elem_classes="ap-help")
        with gr.Row(equal_height=False):
            ui.scan_layer = gr.Slider(0, 1, value=0, step=1, precision=0, label="Layer", elem_id="steps-scan-layer",
                                      min_width=160)  # fmt: skip
            ui.scan_token = gr.Dropdown([], value=None, label="Token", allow_custom_value=True,
                                        elem_id="steps-scan-token", min_width=220)  # fmt: skip
        ui.scan_note = gr.Markdown("", elem_id="steps-scan-note")
        ui.scan_plot = gr.Plot(show_label=False, elem_id="steps-scan-plot")
    _wire(catalog, explore_ui, ui)
    return ui


def _wire(catalog: Catalog, explore_ui: SimpleNamespace, ui: SimpleNamespace) -> None:
    shown = [ui.flow, ui.residual, ui.note]
    ranged = [ui.kind, ui.layer, ui.head, ui.query]
    boxes = [ui.controls, ui.plots]
    mixer_inputs = [ui.gate_layer, ui.scan_layer, ui.scan_token]
    mixer_outputs = [ui.gate, ui.gate_layer, ui.gate_plot, ui.gate_note, ui.scan, ui.scan_layer, ui.scan_token,
                     ui.scan_plot, ui.scan_note]  # fmt: skip

    def redraw(analysis, kind, layer, head, query):
        v = steps_view(catalog, analysis, kind, layer, head, query)
        return {ui.flow: v.flow, ui.residual: v.residual, ui.note: v.summary}

    def redraw_gate(analysis, layer, token):
        v = gate_view(catalog, analysis, layer, token)
        return {ui.gate_plot: v.figure, ui.gate_note: v.summary}

    def redraw_scan(analysis, layer, token):
        v = scan_view(catalog, analysis, layer, token)
        return {ui.scan_plot: v.figure, ui.scan_note: v.summary}

    def reset(analysis, kind, layer, head, query, gate_layer, scan_layer, scan_token):
        """A new Run or kind: the controls span it (their values clamped into it), then the views."""
        mixers = reset_mixers(analysis, gate_layer, scan_layer, scan_token)
        c = controls(catalog, analysis, kind)
        if c is None:  # no Run, or no attention: only the sentence (none at all beside a scan)
            hidden = {box: gr.update(visible=analysis is None) for box in boxes}
            attention = gr.update(visible=analysis is None or analysis.scan is None)
            return {ui.attention: attention, **hidden, **{x: gr.update() for x in ranged},
                    **redraw(analysis, kind, layer, head, query), **mixers}  # fmt: skip
        layer, head = clamp(_or(layer, c.n_layer - 1), c.n_layer), clamp(_or(head, 0), c.n_head)
        kind_shown = c.kind if c.kinds else DEFAULT_KIND  # hidden, it waits for the next encoder-decoder
        return {ui.attention: gr.update(visible=True), **{box: gr.update(visible=True) for box in boxes},
                ui.kind: gr.update(visible=c.kinds, value=kind_shown),
                ui.layer: gr.update(maximum=max(c.n_layer - 1, 1), value=layer, interactive=c.n_layer > 1,
                                    label=layer_label(analysis)),
                ui.head: gr.update(maximum=max(c.n_head - 1, 1), value=head, interactive=c.n_head > 1),
                ui.query: gr.update(choices=c.queries, value=c.default_query),
                **redraw(analysis, c.kind, layer, head, c.default_query), **mixers}  # fmt: skip

    def reset_mixers(analysis, gate_layer, scan_layer, scan_token) -> dict:
        """The gate's and the scan's sections for a new Run: shown when it has them, at the default token
        (the query token's default, which ``reset`` sets), their layers kept where they can be."""
        out = {}
        menu = gate_layers(analysis)
        blocks = [b for _, b in menu]
        if menu:
            layer = _or(gate_layer, blocks[-1])
            layer = layer if layer in blocks else blocks[-1]
            v = gate_view(catalog, analysis, layer, default_token(analysis))
            out |= {ui.gate_layer: gr.update(choices=menu, value=layer, interactive=len(menu) > 1),
                    ui.gate_plot: v.figure, ui.gate_note: v.summary}  # fmt: skip
        else:
            out |= {ui.gate_layer: gr.update(), ui.gate_plot: None, ui.gate_note: ""}
        scan = scan_of(analysis)
        if scan is not None:
            n, token = scan.n_layer, default_token(analysis)
            layer = clamp(_or(scan_layer, n - 1), n)
            v = scan_view(catalog, analysis, layer, token)
            label = "Layer" if scan.blocks is None else f"Mamba layer (model layers {', '.join(map(str, scan.blocks))})"
            out |= {ui.scan_layer: gr.update(maximum=max(n - 1, 1), value=layer, interactive=n > 1, label=label),
                    ui.scan_token: gr.update(choices=query_choices(analysis, "self"), value=token),
                    ui.scan_plot: v.figure, ui.scan_note: v.summary}  # fmt: skip
        else:
            out |= {ui.scan_layer: gr.update(), ui.scan_token: gr.update(), ui.scan_plot: None, ui.scan_note: ""}
        return {ui.gate: gr.update(visible=bool(menu)), ui.scan: gr.update(visible=scan is not None), **out}

    inputs = [explore_ui.state, *ranged]
    resets = dict(inputs=[*inputs, *mixer_inputs], outputs=[ui.attention, *boxes, *ranged, *shown, *mixer_outputs])
    model_run = dict(show_progress="hidden", trigger_mode="always_last", concurrency_id=MODEL_EVENTS)
    follow(explore_ui, "steps", reset, **resets, **model_run)  # each Run, when this tab is open or opened
    ui.kind.input(reset, api_name=False, **resets, **model_run)
    gr.on(triggers=[ui.layer.input, ui.head.input, ui.query.input], fn=redraw, inputs=inputs, outputs=shown,
          api_name="steps", **model_run)  # fmt: skip
    gr.on(triggers=[ui.gate_layer.input, ui.query.input], fn=redraw_gate,  # the gate's token is the query token
          inputs=[explore_ui.state, ui.gate_layer, ui.query], outputs=[ui.gate_plot, ui.gate_note], api_name="gate",
          **model_run)  # fmt: skip
    gr.on(triggers=[ui.scan_layer.input, ui.scan_token.input], fn=redraw_scan,
          inputs=[explore_ui.state, ui.scan_layer, ui.scan_token], outputs=[ui.scan_plot, ui.scan_note],
          api_name="scan", **model_run)  # fmt: skip


def layer_label(analysis: Analysis | None) -> str:
    """The attention Layer slider's label: a hybrid's spans only its attention layers, so it says which."""
    if analysis is None or analysis.blocks is None:
        return "Layer"
    return f"Attention layer (model layers {', '.join(map(str, analysis.blocks))})"


def _or(value, default: int) -> int:
    """``value`` as an int, or ``default`` when it is missing or not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
