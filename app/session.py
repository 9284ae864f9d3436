"""Per-session state: the ``Analysis`` one Run leaves in ``gr.State``, and the traced run behind it.

A Run calls the model once (``traced_run``; an encoder-decoder first translates greedily, then
traces its translation) and keeps batch row 0 of what it returned, float32 on the CPU
(``record``): every redraw (a slider, the Logit lens and Embeddings tabs) reads this copy, never
the model. Which family views a Run feeds is the family registry's word (``Family.views``),
asked once here. Models stay in the shared ``app.catalog.Catalog``; a session holds only keys,
token ids and tensors.

What a Run holds (``Analysis.nbytes``, measured in ``bench.sessions``): every tensor once, each its
own compact storage (``record`` copies any view into a larger tensor, which would keep all of that
alive), and only what a redraw reads: the attention maps (H, T, T) per layer, the logits (T, V) for
the distribution at any position, the hidden states (T, D) per layer for the lens and embeddings,
and the family's own views. A built-in's Run of a sentence holds about 0.07 MB, of 256 tokens 4 to 6
MB, Mamba's of 512 tokens 11 MB; a GPT-2-sized checkpoint's of 512 tokens 274 MB (151 MB of
12 x 12 maps of 512 x 512, 103 MB of 512 x 50,257 logits, 20 MB of hidden states).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from archplay.models import Trace, registry
from archplay.models.architectures.layers import PATTERNS
from archplay.models.registry import Family

from .catalog import Entry
from .explore import translation
from .explore.routing import Routing

LOCAL_PATTERNS = tuple(p for p in PATTERNS if p != "full")  # a layer's own window: sliding, strided, block
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


_SERIALS = itertools.count(1)


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
    # a hybrid's Mamba layers (its attention layers keep the attention view; the Steps tab takes the scan apart)
    mamba: Scan | None = None
    hidden_states: list[Tensor] | None = None  # [embeddings, layer 1, ...] each (T, D) (enc-dec: the encoder's)
    windows: list[int | None] | None = None  # per layer: the local pattern's window, None = full attention
    patterns: list[str | None] | None = None  # per layer: "sliding", "strided", "block" or None (full)
    # per attention map: the model's layer it comes from, when only some layers attend (a hybrid); None = every layer
    blocks: list[int] | None = None
    # The cells the page frames on each kind's attention map (the story world's gold: a pronoun's antecedent,
    # a translation's word alignment), set by the page's Run (``explore.truth.gold_cells``).
    gold: dict[str, list[tuple[int, int]]] | None = None
    # Which Run this is: new for each Run, kept by ``dataclasses.replace`` (a new position on the Explore
    # tab is the same Run). The tabs that draw a Run (``app.follow``) compare it to the one they drew.
    serial: int = dataclasses.field(default_factory=lambda: next(_SERIALS))

    @property
    def spec(self) -> Family:
        """The family's registry entry."""
        return registry.get(self.family)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The attention kinds this Run can show: an encoder-decoder's three, else one ("self")."""
        return translation.KINDS if self.translation is not None else ("self",)

    def kind(self, kind: str | None) -> str:
        """``kind`` checked against ``kinds``; None picks the default (cross-attention). Without a translation it is "self"."""
        if self.translation is None:
            return "self"
        if kind is None:
            return translation.DEFAULT_KIND
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
        if self.hybrid:  # Explore's map spans every layer: attention maps and the Mamba layers' hidden attention
            return len(self.blocks) + self.mamba.n_layer
        if self.scan is not None:
            return self.scan.n_layer
        return len(self.attentions) if self.attentions else 0

    @property
    def hybrid(self) -> bool:
        """Whether only some layers attend and the others scan (Jamba): Explore's map then shows each layer's own
        mixing, an attention layer's heads or a Mamba layer's hidden attention."""
        return self.blocks is not None and self.mamba is not None and self.mamba.blocks is not None

    def part(self, layer: int) -> tuple[str, int]:
        """A hybrid's model layer -> ("attention", its entry in ``attentions``) or ("scan", its entry in ``mamba``)."""
        if layer in self.blocks:
            return "attention", self.blocks.index(layer)
        return "scan", self.mamba.blocks.index(layer)

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

    def nbytes(self) -> int:
        """The bytes this Run's tensors hold, each storage counted once (what keeping it costs)."""
        storages = {}
        for t in _tensors(self):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return sum(storages.values())


def record(entry: Entry, text: str, ids: list[int], truncated_from: int | None, run: TracedRun, step=0) -> Analysis:
    """The session's copy of one Run: only what the redraws need, and only the views its family has."""
    spec, trace, tok = entry.spec, run.trace, entry.tokenizer
    views = spec.views if trace is not None else ()
    attentions = trace.attentions if "attention" in views and trace.attentions else None
    cfg = entry.config
    layer_types = getattr(cfg, "layer_types", None) or []
    patterns = [kind if kind in LOCAL_PATTERNS else None for kind in layer_types]
    windows = [getattr(cfg, "sliding_window", None) if kind else None for kind in patterns]
    return _compact(Analysis(
        model_key=entry.key, model_label=entry.label, family=spec.name, text=text, ids=ids,
        labels=list(tok.tokens(ids)), attentions=attentions, logits=run.logits,
        predict_at=_predict_at(spec, tok, ids, run, step), truncated_from=truncated_from,
        mask_token=mask_token(tok), translation=run.translation,
        routing=Routing.from_trace(trace, cfg) if "routing" in views else None,
        scan=Scan.from_trace(trace) if "scan" in views else None,
        mamba=Scan.from_trace(trace, cfg) if "scan" not in views and trace is not None and trace.ssm_attention else None,
        hidden_states=trace.hidden_states if trace is not None else None, windows=windows or None,
        patterns=patterns or None, blocks=_attention_blocks(cfg, attentions),
    ))  # fmt: skip


def _attention_blocks(cfg, attentions: list[Tensor] | None) -> list[int] | None:
    """The model's layer of each attention map when only some layers attend (``config.attention_blocks``)."""
    blocks = getattr(cfg, "attention_blocks", None)
    return list(blocks) if attentions and blocks is not None and len(blocks) == len(attentions) else None


def _tensors(obj):
    """Every tensor in ``obj`` (an Analysis and the views' dataclasses in it, lists of tensors)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, list):
        for x in obj:
            yield from _tensors(x)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))


def _own(t: Tensor) -> Tensor:
    """``t``, or a compact copy of it when it is a view into a larger storage (a row of a batch, a
    slice of a fused tensor): kept as a view, it would keep all of that storage alive."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _compact(obj):
    """``obj`` with every tensor in it (in dataclass fields and lists, in place) made its own."""
    if isinstance(obj, list):
        for i, x in enumerate(obj):
            if isinstance(x, Tensor):
                obj[i] = _own(x)
            elif isinstance(x, list) or dataclasses.is_dataclass(x):
                _compact(x)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, Tensor):
                setattr(obj, f.name, _own(value))
            elif isinstance(value, list) or dataclasses.is_dataclass(value):
                _compact(value)
    return obj


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
