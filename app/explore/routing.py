"""The routing view (mixtures of experts) on the Explore page: which experts each token went to.

From one traced Run the session keeps, per MoE layer, the router's probabilities over all
experts (the float32 softmax of its logits) and the k experts each token actually ran.
A layer's view is drawn from those alone: the token × expert heatmap with the chosen cells
ringed, the text coloured by each token's first-choice expert, and the load (the share of
this input's routed (token, slot) pairs each expert received).
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import plotly.graph_objects as go
import torch
from torch import Tensor

from archplay.models import Trace, story
from archplay.models.architectures.moe import expert_load
from archplay.models.training import evaluate
from archplay.viz.moe import expert_load_bars, routing_heatmap, specialisation_heatmap
from archplay.viz.style import expert_colour, rgba

from ..catalog import Catalog, Entry, UnknownModelError
from ..messages import error, md_escape, plural
from ..sliders import check

if TYPE_CHECKING:
    from ..session import Analysis

HELP = (
    "The **router** scores every token against every expert (a softmax over the experts: the "
    "shading), and only the **top k run** that token (rings; a white dot = its first choice). So each "
    "token pays for k experts while the model holds all of them. The text below is coloured by "
    "each token's first-choice expert; the **load** bars show how this input's routed slots "
    "spread over the experts. Training adds a balancing loss that pushes the load towards the "
    "dashed even share, so that no expert sits idle."
)


@dataclass
class Routing:
    """A Run's router decisions, per MoE layer, on the CPU."""

    probs: list[Tensor]  # per MoE layer (T, E) float32: softmax rows sum to 1; sigmoid scores each in (0, 1)
    chosen: list[Tensor]  # per MoE layer (T, k) int64, the experts each token ran
    blocks: list[int]  # the block (layer) index of each MoE layer
    n_block: int  # blocks in the model, MoE or dense
    score: str = "softmax"  # how the router turns its logits into scores: "softmax" or "sigmoid" (DeepSeek-V3)

    @classmethod
    def from_trace(cls, trace: Trace, config) -> Routing:
        """From batch row 0 of a traced run, on the CPU (``Trace.detach(0)``): the router's own scores of its
        logits (a softmax over the experts, or DeepSeek-V3's sigmoid per expert)."""
        score = "sigmoid" if getattr(config, "router_score", "softmax") == "sigmoid" else "softmax"
        probs = [torch.sigmoid(r.float()) if score == "sigmoid" else torch.softmax(r, dim=-1)
                 for r in trace.router_logits]  # fmt: skip
        chosen = [i.long() for i in trace.expert_indices]  # detach made them float32: small ints, exact
        flags = list(getattr(config, "moe_layers", None) or [])
        blocks = [b for b, routed in enumerate(flags) if routed]
        if len(blocks) != len(probs):  # a config without the flags: every block routes
            blocks = list(range(len(probs)))
        return cls(probs=probs, chosen=chosen, blocks=blocks, n_block=int(config.n_layer), score=score)

    @property
    def n_layer(self) -> int:
        return len(self.probs)

    @property
    def n_experts(self) -> int:
        return int(self.probs[0].shape[-1])

    @property
    def top_k(self) -> int:
        return int(self.chosen[0].shape[-1])

    def slots(self, layer: int) -> Tensor:
        """(E,) how many (token, slot) pairs each expert received in ``layer``."""
        return torch.bincount(self.chosen[layer].reshape(-1), minlength=self.n_experts)

    def load(self, layer: int) -> Tensor:
        """(E,) each expert's share of ``layer``'s routed slots; sums to 1."""
        return expert_load(self.chosen[layer], self.n_experts)

    def first_choice(self, layer: int) -> Tensor:
        """(T,) each token's chosen expert with the largest router probability."""
        chosen = self.chosen[layer]  # (T, k)
        p = self.probs[layer].gather(-1, chosen)  # (T, k)
        return chosen.gather(-1, p.argmax(-1, keepdim=True))[:, 0]

    def layer_name(self, layer: int) -> str:
        """``layer 2`` when every block routes, else ``block 3 (MoE layer 2 of 3)``."""
        if self.n_layer == self.n_block:
            return f"layer {layer}"
        return f"block {self.blocks[layer]} (MoE layer {layer} of {self.n_layer})"


@dataclass
class RoutingView:
    chips: str  # HTML
    heatmap: go.Figure
    load: go.Figure
    note: str  # markdown


def heatmap(routing: Routing, labels: list[str], layer) -> go.Figure:
    """The token × expert router probabilities of one MoE layer, the experts each token ran ringed."""
    layer = check(layer, routing.n_layer, "MoE layer")
    k, E = routing.top_k, routing.n_experts
    return routing_heatmap(
        routing.probs[layer], routing.chosen[layer], labels,
        title=f"Router, {routing.layer_name(layer)}<br><sup>each token's "
        f"{'sigmoid score (each in 0…1, not a distribution)' if routing.score == 'sigmoid' else 'probability'} "
        f"for each of {E} experts · rings: the {k} it ran (white dot = first choice)</sup>",
    )  # fmt: skip


def view(analysis: Analysis | None, layer) -> RoutingView | None:
    """One MoE layer's routing, drawn from the session's Run (no model call); None for a Run without routing."""
    if analysis is None or analysis.routing is None:
        return None
    routing, labels = analysis.routing, analysis.labels
    layer = check(layer, routing.n_layer, "MoE layer")
    name = routing.layer_name(layer)
    k, E = routing.top_k, routing.n_experts
    load = routing.load(layer)
    slots = routing.slots(layer)
    load_fig = expert_load_bars(
        load, slots=slots, title=f"Load, {name}<br><sup>share of this input's {int(slots.sum())} routed slots</sup>"
    )
    idle = [e for e in range(E) if int(slots[e]) == 0]
    note = (
        f"{plural(len(labels), 'token')} × {k} expert{'s' if k != 1 else ''} each = "
        f"{plural(int(slots.sum()), 'routed slot')}. {busiest(slots, load)} "
        f"(an even split would give each {1 / E:.0%})."
    )
    if idle:
        note += f" Unused here: expert{'s' if len(idle) != 1 else ''} {', '.join(map(str, idle))}."
    chips = chips_html(routing, labels, analysis.ids, layer)
    return RoutingView(chips=chips, heatmap=heatmap(routing, labels, layer), load=load_fig, note=note)


def busiest(slots: Tensor, load: Tensor) -> str:
    """``Busiest: expert 1 with 38%``, or every expert tied for the most slots (counted, so a tie is
    exact): ``Busiest: experts 1 and 3, with 38% each``."""
    top = [e for e in range(len(slots)) if int(slots[e]) == int(slots.max())]
    share = f"{float(load[top[0]]):.0%}"
    if len(top) == 1:
        return f"Busiest: expert {top[0]} with {share}"
    names = ", ".join(map(str, top[:-1])) + f" and {top[-1]}"
    return f"Busiest: experts {names}, with {share} each"


def chips_html(routing: Routing, labels: list[str], ids: list[int], layer: int) -> str:
    """The tokens as chips coloured by their first-choice expert; hover lists every chosen expert."""
    first = routing.first_choice(layer).tolist()
    chosen = routing.chosen[layer].tolist()
    probs = routing.probs[layer]
    chips = []
    for i, (label, tid) in enumerate(zip(labels, ids)):
        e = first[i]
        ranked = sorted(chosen[i], key=lambda x: -float(probs[i, x]))
        runs = ", ".join(f"expert {x} ({float(probs[i, x]):.0%})" for x in ranked)
        tip = f"#{i} · id {tid} · ran {runs}"
        colour = expert_colour(e)
        chips.append(
            f'<span class="ap-tok ap-exp" data-index="{i}" data-expert="{e}" title="{html.escape(tip, quote=True)}" '
            f'style="background:{rgba(colour, 0.22)};border-color:{colour}">'
            f'{html.escape(label or "∅", quote=True)}<span class="ap-idx">{e}</span></span>'
        )
    legend = "".join(
        f'<span class="ap-legend-item"><span class="ap-swatch" style="background:{expert_colour(e)}"></span>'
        f"expert {e}</span>"
        for e in range(routing.n_experts)
    )
    return (
        f'<div class="ap-tokens" role="list" aria-label="tokens coloured by expert">{"".join(chips)}</div>'
        f'<div class="ap-tokens-meta">colour and small number = the first-choice expert · hover a token for '
        f"all {routing.top_k} it ran</div>"
        f'<div class="ap-legend">{legend}</div>'
    )


# --------------------------------------------------------------------------- over the validation stories

VALIDATION_STORIES = 100  # the first validation stories of the story world: ~1 s for the built-in MoE
CORPUS_HELP = (
    "Over the first {n} **validation stories** (text the model never trained on) rather than your input: "
    "the load each expert carries, and where each **part of speech** goes first. The story world "
    "knows every word's part of speech, the router was never told: a row concentrated on one "
    "expert is a specialisation it found by itself."
)
_corpus_cache: dict[int, dict] = {}
_corpus_lock = threading.Lock()


class CorpusView(NamedTuple):
    heatmap: go.Figure | None  # expert × part of speech
    load: go.Figure | None
    note: str  # markdown


def corpus_stats(entry: Entry) -> dict | None:
    """``evaluate.expert_pos_counts`` over the validation stories, computed once per model (models
    are shared read-only, so this summary is too); None when the model does not route or its
    tokenizer cannot map tokens back to the story world's words."""
    if not hasattr(entry.tokenizer, "encode_with_offsets") or "routing" not in entry.spec.views:
        return None
    with _corpus_lock:
        if id(entry.model) not in _corpus_cache:
            stories = story.make_splits(seed=0, n_train=0, n_valid=VALIDATION_STORIES, n_test=0)["validation"]
            _corpus_cache[id(entry.model)] = evaluate.expert_pos_counts(entry.model, entry.tokenizer, stories)
        return _corpus_cache[id(entry.model)]


def corpus_view(catalog: Catalog, analysis: Analysis | None, layer) -> CorpusView:
    """MoE layer ``layer`` of the session's model over the validation stories (specialisation by part
    of speech, load); Nones and "" for a Run without routing."""
    if analysis is None or analysis.routing is None:
        return CorpusView(None, None, "")
    try:
        entry = catalog.get(analysis.model_key)
    except UnknownModelError as e:
        return CorpusView(None, None, error(md_escape(str(e))))
    stats = corpus_stats(entry)
    if stats is None:
        return CorpusView(None, None, "The validation-story view needs a built-in tokenizer (it maps tokens back to words).")
    layer = check(layer, stats["counts"].shape[0], "MoE layer")
    spec = specialisation_heatmap(stats["counts"][layer], stats["tags"],
                                  title=f"Part of speech → first-choice expert, MoE layer {layer}")  # fmt: skip
    load = stats["load"][layer]
    bars = expert_load_bars(load, title=f"Load over {VALIDATION_STORIES} validation stories, MoE layer {layer}")
    note = CORPUS_HELP.format(n=VALIDATION_STORIES) + f" Least-loaded expert here: {float(load.min()):.0%}."
    return CorpusView(spec, bars, note)
