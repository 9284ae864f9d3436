"""Per-session state: the ``Analysis`` one Run leaves in ``gr.State``, and the traced run behind it.

A Run calls the model once (``traced_run``; an encoder-decoder first translates greedily, then
traces its translation) and keeps batch row 0 of what it returned, float32 on the CPU
(``record``): every redraw (a slider, the Logit lens and Embeddings tabs) reads this copy, never
the model. Which family views a Run feeds is the family registry's word (``Family.views``),
asked once here. Models stay in the shared ``app.catalog.Catalog``; a session holds only keys,
token ids and tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from archplay.models import Trace, registry
from archplay.models.registry import Family

from .catalog import Entry
from .explore import translation
from .explore.routing import Routing
from .explore.scan import Scan
from .explore.translation import Translation
from .sliders import check, clamp
from .tokens import mask_id, mask_token


@dataclass
class TracedRun:
    """What one model run returned, batch row 0, float32 on the CPU."""

    logits: Tensor | None  # (T, V); an encoder-decoder's: (n, V), one row per target step
    trace: Trace | None  # ``Trace.detach(0)``: attentions (H, T, T), hidden states (T, D), ...
    translation: Translation | None  # an encoder-decoder's greedy translation, else None


@torch.inference_mode()
def traced_run(entry: Entry, ids: list[int]) -> TracedRun:
    """The one model call of a Run (Explore's and Compare's): a traced forward pass over ``ids``; a
    family with the translation view translates them first and traces its own translation."""
    new = None
    if "translation" in entry.spec.views:
        new, out = translation.translate(entry, ids)
    else:
        out = entry.model(torch.tensor([ids], dtype=torch.long, device=entry.device), trace=True)
    trace = out.trace.detach(0) if out.trace is not None else None
    logits = out.logits[0].detach().float().cpu() if out.logits is not None else None
    written = translation.written(entry, ids, new, trace) if new is not None else None
    return TracedRun(logits=logits, trace=trace, translation=written)


@dataclass
class Analysis:
    """What one Run leaves in the session: small, CPU-only, no model objects."""

    model_key: str
    model_label: str
    family: str  # the registry's name of it (``spec`` gives the entry)
    text: str  # the text as typed
    ids: list[int]  # the analysed token ids (after any truncation); an encoder-decoder's source
    labels: list[str]  # one display label per id
    attentions: list[Tensor] | None  # per layer (H, T, T) float32 on the CPU (enc-dec: the encoder's)
    logits: Tensor | None  # (T, V) float32 on the CPU (enc-dec: the decoder's, one row per target step)
    predict_at: int | None  # the position (enc-dec: target step) whose distribution is shown first
    truncated_from: int | None = None  # the token count before truncation, when the text was cut
    mask_token: str | None = None  # the encoder's mask token, for messages
    translation: Translation | None = None  # the translation view's data
    routing: Routing | None = None  # the routing view's data
    scan: Scan | None = None  # the scan view's data
    hidden_states: list[Tensor] | None = None  # [embeddings, layer 1, ...] each (T, D) (enc-dec: the encoder's)
    windows: list[int | None] | None = None  # per layer: the sliding window, None = full attention

    @property
    def spec(self) -> Family:
        """The family's registry entry."""
        return registry.get(self.family)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The attention kinds this Run can show: an encoder-decoder's three, else one ("self")."""
        return translation.KINDS if self.translation is not None else ("self",)

    def kind(self, kind: str | None) -> str:
        """``kind`` checked against ``kinds``; None picks the first. Without a translation it is "self"."""
        if self.translation is None:
            return "self"
        if kind is None:
            return translation.KINDS[0]
        if kind not in translation.KINDS:
            raise ValueError(f"attention kind must be one of {', '.join(translation.KINDS)}, got {kind!r}")
        return kind

    def layer_count(self, kind: str | None = None) -> int:
        """How many layers the layer slider spans for ``kind`` (a T5 decoder may be deeper)."""
        kind = self.kind(kind)
        if kind == "decoder":
            return self.translation.n_decoder_layer
        if kind == "cross":
            return len(self.translation.cross_attentions)
        if self.scan is not None:
            return self.scan.n_layer
        return len(self.attentions) if self.attentions else 0

    @property
    def n_layer(self) -> int:
        return self.layer_count(None)

    @property
    def n_head(self) -> int:
        return int(self.attentions[0].shape[0]) if self.attentions else 0

    @property
    def causal(self) -> bool:
        return self.spec.causal

    @property
    def n_steps(self) -> int:
        """Target steps of an encoder-decoder's translation (0 for other families)."""
        return len(self.translation.ids) if self.translation is not None else 0

    def check_layer(self, layer, kind: str | None = None) -> int:
        """``layer`` checked against ``kind``'s layers (ValueError naming the range)."""
        return check(layer, self.layer_count(kind), "layer")


def record(entry: Entry, text: str, ids: list[int], truncated_from: int | None, run: TracedRun, step=0) -> Analysis:
    """The session's copy of one Run: only what the redraws need, and only the views its family has."""
    spec, trace, tok = entry.spec, run.trace, entry.tokenizer
    views = spec.views if trace is not None else ()
    attentions = trace.attentions if "attention" in views and trace.attentions else None
    cfg = entry.config
    layer_types = getattr(cfg, "layer_types", None) or []
    windows = [getattr(cfg, "sliding_window", None) if kind == "sliding" else None for kind in layer_types]
    return Analysis(
        model_key=entry.key, model_label=entry.label, family=spec.name, text=text, ids=ids,
        labels=list(tok.tokens(ids)), attentions=attentions, logits=run.logits,
        predict_at=_predict_at(spec, tok, ids, run, step), truncated_from=truncated_from,
        mask_token=mask_token(tok), translation=run.translation,
        routing=Routing.from_trace(trace, cfg) if "routing" in views else None,
        scan=Scan.from_trace(trace) if "scan" in views else None,
        hidden_states=trace.hidden_states if trace is not None else None, windows=windows or None,
    )  # fmt: skip


def _predict_at(spec: Family, tok, ids: list[int], run: TracedRun, step) -> int | None:
    """Where the Run's prediction is shown first: a translation's ``step``, an encoder's first mask
    (None without one), else the last token's next-token guess."""
    if run.logits is None:
        return None
    if run.translation is not None:
        return clamp(int(step or 0), len(run.translation.ids))
    if spec.objective == "masked":
        mid = mask_id(tok)
        return next((i for i, t in enumerate(ids) if mid is not None and t == mid), None)
    return len(ids) - 1
