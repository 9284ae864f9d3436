"""The Interventions tab: switch parts of the model off and see its prediction change beside the unmodified run.

Drawn from the Explore tab's Run (the session's ``Analysis``): the unmodified logits are the Run's own
(no new pass), the modified ones one ``ablate`` pass (``archplay.models.analysis.interventions``) with
the ticked parts off: attention heads ("L1.H3"; an encoder-decoder's of one kind at a time: encoder,
decoder or cross-attention), a mixture of experts' experts ("L0.E3"), a state-space model's scan
layers ("L2") and input tokens (their embeddings zeroed). Which controls a Run gets is its family's
registry entry's word (``Family.has_heads``, ``views``, ``objective``), read through the Analysis.

Shown: a summary sentence, the chosen position's top predictions before and after, the surprisal of
every token before and after, and the attribution of the unmodified top prediction to each input
token (gradient × input and the knock-one-out difference, ``attribution``). An encoder's surprisal is
its pseudo-surprisal (each token masked in turn, one batch row each); an encoder-decoder's is that of
its own translation, teacher-forced, so only the source changes.

API: ``ablate_choices`` () → the controls for the session's Run (call it after ``analyse``: a
checkbox only takes the values it offers); ``ablate`` (heads, kind, experts, mixers, tokens,
position) → summary and the three figures.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go
import torch
from gradio.context import Context
from torch import Tensor

from archplay.models import ablate, attribution
from archplay.models.analysis.steps import attention_modules
from archplay.viz.interventions import attribution_figure, prediction_figure, surprisal_figure

from .catalog import Catalog, Entry, UnknownModelError
from .explore import translation
from .follow import follow
from .guard import MODEL_EVENTS
from .messages import error, md_escape, note, ok, plural, quote, short
from .session import Analysis
from .sliders import check
from .tokens import mask_id, mask_token

HELP = (
    "Tick parts of the model to **switch off**, then press **Apply**: a head's output is zeroed before "
    "the layer's output projection; an expert is taken out of routing (each token picks its experts "
    "among the rest); a scan layer's mixer adds nothing, so the stream passes it unchanged; a "
    "knocked-out token keeps its position but loses its embedding. Grey is the unmodified run, blue "
    "the run with the parts off. **Attribution** asks which input tokens the unmodified top prediction "
    "rests on: gradient × input (a first-order estimate) and the real change in its log-probability "
    "when that one token is knocked out."
)
ATTRIBUTION_LIMIT = 128  # input tokens: knock-one-out is one forward pass per token (Mamba: ~10 s at 128 on one core)
PSEUDO_LIMIT = 128  # an encoder's pseudo-surprisal: one batch row per token
TOP_N = 8
RESIZE_JS = "() => { requestAnimationFrame(() => window.dispatchEvent(new Event('resize'))); }"
NAMES_LISTED = 3  # parts named one by one in the summary; more are counted
_HEAD = re.compile(r"^\s*L(\d+)\.H(\d+)\s*$", re.I)
_EXPERT = re.compile(r"^\s*L(\d+)\.E(\d+)\s*$", re.I)
_LAYER = re.compile(r"^\s*L(\d+)\s*$", re.I)


# --------------------------------------------------------------------------- what a Run offers


@dataclass
class Offer:
    """The controls for one Run: the choices of each, empty for what its model lacks."""

    kinds: list[tuple[str, str]]  # attention kinds (label, value); more than one only for an encoder-decoder
    kind: str  # the kind whose heads are offered
    heads: list[str]  # "L0.H1", …
    experts: list[str]  # "L0.E3", …
    experts_info: str  # how many may be off
    mixers: list[str]  # "L2", …
    tokens: list[tuple[str, int]]  # ("4 ‘ball’", 4)
    positions: list[tuple[str, int]]  # whose prediction: input positions, or an encoder-decoder's steps
    position: int | None
    position_label: str


def stamp(analysis: Analysis | None) -> tuple | None:
    """What identifies a Run for this tab: the model, the tokens and any translation."""
    if analysis is None:
        return None
    t = analysis.translation
    return analysis.model_key, tuple(analysis.ids), tuple(t.ids) if t is not None else None


def ablate_kind(kind: str) -> str:
    """The Explore tab's attention kind as ``ablate`` names it (the encoder's is its "self")."""
    return "self" if kind == "encoder" else kind


def offer(catalog: Catalog, analysis: Analysis, kind: str | None = None) -> Offer:
    """The choices for ``analysis``'s Run, with the heads of ``kind`` (None: the Run's default kind)."""
    entry = catalog.get(analysis.model_key)
    kind = analysis.kind(kind)
    kinds = [(label, value) for label, value in translation.KIND_CHOICES if value in analysis.kinds]
    routing, t = analysis.routing, analysis.translation
    scan = analysis.scan if analysis.scan is not None else analysis.mamba  # a hybrid's: its Mamba layers
    if t is not None:
        positions = [(f"step {i} → ‘{short(label)}’", i) for i, label in enumerate(t.labels)]
        label = "Translation step whose prediction is examined"
    else:
        positions = [(f"{i} ‘{short(label)}’", i) for i, label in enumerate(analysis.labels)]
        label = "Position whose prediction is examined"
    default = default_position(entry, analysis)
    return Offer(
        kinds=kinds if len(kinds) > 1 else [], kind=kind, heads=head_choices(entry, analysis, kind),
        experts=[f"L{b}.E{e}" for b in routing.blocks for e in range(routing.n_experts)] if routing else [],
        experts_info=(f"each token runs {routing.top_k} of {routing.n_experts}: at most "
                      f"{routing.n_experts - routing.top_k} off per layer") if routing else "",
        mixers=[f"L{scan.block(i)}" for i in range(scan.n_layer)] if scan else [],
        tokens=[(f"{i} ‘{short(label)}’", i) for i, label in enumerate(analysis.labels)],
        positions=positions, position=default if positions else None, position_label=label,
    )  # fmt: skip


def default_position(entry: Entry, analysis: Analysis) -> int:
    """The Run's own position (the last token, an encoder's first mask, the translation step shown); an
    encoder's text without a mask: its last word (not the special token after it)."""
    if analysis.predict_at is not None:
        return analysis.predict_at
    words = [i for i, t in enumerate(analysis.ids) if entry.tokenizer.decode([t]) != ""]
    return words[-1] if words else len(analysis.ids) - 1


def head_choices(entry: Entry, analysis: Analysis, kind: str) -> list[str]:
    """``L<layer>.H<head>`` for every head of ``kind`` (none for a model without attention heads)."""
    if not analysis.spec.has_heads:
        return []
    try:
        modules = attention_modules(entry.model, ablate_kind(kind))
    except ValueError:
        return []
    return [f"L{layer}.H{h}" for layer, m in enumerate(modules) for h in range(m.n_head)]


# --------------------------------------------------------------------------- what to switch off


@dataclass
class Parts:
    """What ``ablate`` switches off, parsed and sorted."""

    heads: list[tuple[int, int]] = field(default_factory=list)
    kind: str = "self"
    experts: list[tuple[int, int]] = field(default_factory=list)
    mixers: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.heads or self.experts or self.mixers or self.tokens)

    def kwargs(self) -> dict:
        return dict(heads=self.heads, experts=self.experts, mixers=self.mixers, tokens=self.tokens, kind=self.kind)


def parse(analysis: Analysis, heads=None, kind=None, experts=None, mixers=None, tokens=None) -> Parts:
    """The ticked values (lists, or comma-separated text through the API) as ``Parts``; ValueError
    naming anything malformed. Ranges are ``ablate``'s to check (it knows the model)."""
    return Parts(
        heads=sorted(set(_pairs(heads, _HEAD, "head", "L<layer>.H<head>, e.g. L0.H1"))),
        kind=ablate_kind(analysis.kind(_explore_kind(analysis, kind))),
        experts=sorted(set(_pairs(experts, _EXPERT, "expert", "L<layer>.E<expert>, e.g. L0.E3"))),
        mixers=sorted({m[0] for m in _pairs(mixers, _LAYER, "scan layer", "L<layer>, e.g. L2")}),
        tokens=sorted({_index(t, "token") for t in _items(tokens)}),
    )  # fmt: skip


def _explore_kind(analysis: Analysis, kind) -> str | None:
    """``kind`` as the Explore tab names it: an encoder-decoder's "self" (``ablate``'s name) is its encoder's."""
    if not kind:
        return None
    return "encoder" if kind == "self" and analysis.translation is not None else str(kind)


def _items(values) -> list:
    if values is None:
        return []
    if isinstance(values, str):
        return [v for v in values.split(",") if v.strip()]
    if isinstance(values, (list, tuple)):
        return list(values)
    raise ValueError(f"expected a list of choices, got {short(str(values), 40)!r}")


def _pairs(values, pattern: re.Pattern, what: str, how: str) -> list[tuple[int, ...]]:
    out = []
    for v in _items(values):
        m = pattern.match(str(v))
        if m is None:
            raise ValueError(f"{short(str(v), 40)!r} is not a {what}: write it as {how}")
        out.append(tuple(int(g) for g in m.groups()))
    return out


def _index(value, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"a {what} is a whole number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a {what} is a whole number, got {short(str(value), 40)!r}") from None
    if not number.is_integer():
        raise ValueError(f"a {what} is a whole number, got {value!r}")
    return int(number)


def describe(parts: Parts, analysis: Analysis) -> str:
    """``L1.H3 and token 4 ‘ball’``: the parts switched off, for the summary (markdown-safe)."""
    pieces = []
    kind = ""
    if analysis.translation is not None:  # name the kind: "cross-attention head L0.H1"
        kind = translation.KIND_NAMES["encoder" if parts.kind == "self" else parts.kind].lower() + " "
    for items, one, many in (
        ([f"L{a}.H{b}" for a, b in parts.heads], f"{kind}head", f"{kind}heads"),
        ([f"L{a}.E{b}" for a, b in parts.experts], "expert", "experts"),
        ([f"L{a}" for a in parts.mixers], "scan layer", "scan layers"),
    ):  # fmt: skip
        if len(items) > NAMES_LISTED:
            pieces.append(f"{len(items)} {many}")
        elif items:
            pieces.append(f"{one if len(items) == 1 else many} {', '.join(items)}")
    if len(parts.tokens) > NAMES_LISTED:
        pieces.append(plural(len(parts.tokens), "token"))
    elif parts.tokens:
        named = ", ".join(f"{i} {quote(short(analysis.labels[i]))}" for i in parts.tokens)
        pieces.append(f"{'token' if len(parts.tokens) == 1 else 'tokens'} {named}")
    return pieces[0] if len(pieces) == 1 else ", ".join(pieces[:-1]) + " and " + pieces[-1]


# --------------------------------------------------------------------------- the computation


@dataclass
class View:
    """What the tab shows for one Apply: a summary line and three figures (None where nothing is drawn)."""

    summary: str
    prediction: go.Figure | None = None
    surprisal: go.Figure | None = None
    attribution: go.Figure | None = None
    cache: dict | None = None  # the session's unmodified numbers (attribution, pseudo-surprisal) for its Run


def intervene(catalog: Catalog, analysis: Analysis | None, heads=None, kind=None, experts=None, mixers=None,
              tokens=None, position=None, cache: dict | None = None) -> View:  # fmt: skip
    """The Run of ``analysis`` again with the given parts off, beside the unmodified Run.

    ``position`` is the input position (an encoder-decoder: the translation step) whose prediction is
    examined; None takes the Run's own. Everything is validated: a bad value gives a message, never
    an exception. ``cache`` is what an earlier call returned in ``View.cache`` (or None)."""
    if analysis is None:
        return View(note("Run a model on the Explore tab first."), cache=cache)
    if analysis.logits is None:
        return View(note("This Run kept no predictions."), cache=cache)
    try:
        entry = catalog.get(analysis.model_key)
    except UnknownModelError as e:
        return View(error(md_escape(str(e))), cache=cache)
    cache = cache if cache is not None and cache.get("run") == stamp(analysis) else {"run": stamp(analysis)}
    t = analysis.translation
    n_positions = len(t.ids) if t is not None else len(analysis.ids)
    try:
        parts = parse(analysis, heads, kind, experts, mixers, tokens)
        if position is None or position == "":
            position = default_position(entry, analysis)
        position = check(position, n_positions, "translation step" if t is not None else "position")
        after = _logits(entry, analysis, parts)  # (T, V)
    except (ValueError, TypeError) as e:
        return View(error(md_escape(str(e))), cache=cache)
    before = analysis.logits.float()  # (T, V): the Run's own
    p0, p1 = torch.softmax(before[position], -1), torch.softmax(after[position], -1)  # (V,)
    labels_for = entry.tokenizer.tokens
    where = f"step {position}" if t is not None else f"position {position}"
    pred = prediction_figure(p0, p1, lambda ids: list(labels_for(ids)), top_n=TOP_N,
                             title=f"Top predictions at {where}",
                             subtitle=_prediction_note(analysis, position))  # fmt: skip
    bits0, bits1, surprisal_note = _surprisal(entry, analysis, parts, before, after, cache)
    surprisal = surprisal_figure(
        bits0, bits1, t.labels if t is not None else analysis.labels,
        knocked=parts.tokens if t is None else (), note=surprisal_note, title=_surprisal_title(analysis),
        x_title="translation token (teacher-forced)" if t is not None else (
            "token (masked in turn: its pseudo-surprisal)" if _masked(analysis) else
            "token (its surprisal when it came)"),
    )  # fmt: skip
    target = int(p0.argmax())
    attr, attr_note = _attribution(entry, analysis, position, target, cache)
    if _masked(analysis) and analysis.predict_at is None:
        mask = mask_token(entry.tokenizer)
        attr_note += " " + note("No mask in the text: an encoder sees every token, so it mostly reads back the one "
                                "at the position examined" + (f"; put {md_escape(mask)} in the text to see it fill "
                                                              "a blank." if mask else "."))  # fmt: skip
    return View(_summary(analysis, parts, p0, p1, bits0, bits1, labels_for, position) + attr_note, pred, surprisal,
                attr, cache)  # fmt: skip


def _masked(analysis: Analysis) -> bool:
    return analysis.spec.objective == "masked"


def _model_kwargs(entry: Entry, analysis: Analysis) -> dict:
    """An encoder-decoder's decoder input: its own translation, shifted right behind the start token."""
    t = analysis.translation
    if t is None:
        return {}
    return {"decoder_input_ids": torch.tensor([translation.decoder_inputs(entry, t.ids)], device=entry.device)}


def _ids(entry: Entry, analysis: Analysis) -> Tensor:
    return torch.tensor([analysis.ids], dtype=torch.long, device=entry.device)  # (1, T)


@torch.inference_mode()
def _logits(entry: Entry, analysis: Analysis, parts: Parts) -> Tensor:
    """(T, V) float32 on the CPU: the Run with ``parts`` off (the Run's own logits when nothing is)."""
    if not parts:
        return analysis.logits.float()
    out = ablate(entry.model, _ids(entry, analysis), **parts.kwargs(), **_model_kwargs(entry, analysis))
    return out.logits[0].float().cpu()


def _bits(logits: Tensor, targets: list[int]) -> Tensor:
    """−log₂ p(target_t) under row t of ``logits`` (n, V) → (n,)."""
    if not targets:
        return torch.zeros(0)
    logp = torch.log_softmax(logits.float(), -1)[torch.arange(len(targets)), torch.tensor(targets)]
    return -logp / math.log(2)


def _surprisal(entry: Entry, analysis: Analysis, parts: Parts, before: Tensor, after: Tensor, cache: dict
               ) -> tuple[Tensor, Tensor, str]:  # fmt: skip
    """Bits per token before and after, and a note, by what the family predicts."""
    t = analysis.translation
    if t is not None:  # the translation's own tokens, teacher-forced: only the source was changed
        knocked = ", ".join(f"{i} ‘{html.escape(short(analysis.labels[i]))}’" for i in parts.tokens)
        return _bits(before, t.ids), _bits(after, t.ids), f"source tokens knocked out: {knocked}" if knocked else ""
    if _masked(analysis):
        if "pseudo" not in cache:
            cache["pseudo"] = _pseudo_bits(entry, analysis, Parts())
        return cache["pseudo"], _pseudo_bits(entry, analysis, parts) if parts else cache["pseudo"], ""
    ids = analysis.ids
    nan = torch.tensor([math.nan])
    return torch.cat([nan, _bits(before[:-1], ids[1:])]), torch.cat([nan, _bits(after[:-1], ids[1:])]), ""


@torch.inference_mode()
def _pseudo_bits(entry: Entry, analysis: Analysis, parts: Parts) -> Tensor:
    """An encoder's pseudo-surprisal with ``parts`` off: token t masked in row t of one batch, −log₂ p(token t);
    NaN for the special tokens around the text and the text's own masks (nothing to guess)."""
    ids, mask = analysis.ids, mask_id(entry.tokenizer)
    T = len(ids)
    if mask is None or T > PSEUDO_LIMIT:
        return torch.full((T,), math.nan)
    batch = torch.tensor([ids] * T, device=entry.device)  # (T, T)
    batch[torch.arange(T), torch.arange(T)] = mask
    logits = ablate(entry.model, batch, **parts.kwargs()).logits[torch.arange(T), torch.arange(T)].float().cpu()
    bits = _bits(logits, ids)  # (T,)
    blank = torch.tensor([i == mask or entry.tokenizer.decode([i]) == "" for i in ids])
    return bits.masked_fill(blank, math.nan)


def _attribution(entry: Entry, analysis: Analysis, position: int, target: int, cache: dict
                 ) -> tuple[go.Figure | None, str]:  # fmt: skip
    """The attribution figure of ``target`` at ``position`` (cached per Run and position) and a note."""
    T = len(analysis.ids)
    if T > ATTRIBUTION_LIMIT:
        return None, " " + note(f"No attribution above {ATTRIBUTION_LIMIT} tokens (one forward pass per token).")
    key = f"attribution:{position}:{target}"
    if key not in cache:
        try:
            a = attribution(entry.model, _ids(entry, analysis), position, target, **_model_kwargs(entry, analysis))
        except ValueError as e:  # something this model lacks
            return None, " " + note(f"No attribution: {md_escape(str(e))}")
        cache[key] = {"grad_x_input": a["grad_x_input"].tolist(), "knock_out": a["knock_out"].tolist(),
                      "logprob": a["logprob"]}  # fmt: skip
    a = cache[key]
    label = entry.tokenizer.tokens([target])[0]
    where = f"step {position}" if analysis.translation is not None else f"position {position}"
    title = f"What the prediction ‘{html.escape(short(label, 24))}’ at {where} rests on"
    return attribution_figure(a["grad_x_input"], a["knock_out"], analysis.labels, title=title,
                              note=f"unmodified run: log p = {a['logprob']:.3f}"), ""  # fmt: skip


def _prediction_note(analysis: Analysis, position: int) -> str:
    t = analysis.translation
    if t is not None:
        return f"the translation's token {position} (teacher-forced: the decoder reads the unmodified translation)"
    label = html.escape(short(analysis.labels[position], 24))
    if _masked(analysis):
        return f"what the encoder reads at ‘{label}’"
    return f"the next token after ‘{label}’"


def _surprisal_title(analysis: Analysis) -> str:
    if analysis.translation is not None:
        return "Surprisal of each translation token"
    if _masked(analysis):
        return "Pseudo-surprisal per token"
    return "Surprisal per token"


def _summary(analysis: Analysis, parts: Parts, p0: Tensor, p1: Tensor, bits0: Tensor, bits1: Tensor, labels_for,
             position: int) -> str:  # fmt: skip
    top0, top1 = int(p0.argmax()), int(p1.argmax())
    name0, name1 = labels_for([top0, top1])
    where = f"step {position}" if analysis.translation is not None else f"position {position}"
    if not parts:
        return note(f"Nothing is switched off: the top prediction at {where} is {quote(short(name0))} "
                    f"({float(p0[top0]):.0%}). Tick heads, experts, layers or tokens and press Apply.")  # fmt: skip
    was, now = f"{float(p0[top0]):.0%}", f"{float(p1[top1]):.0%}"
    if top0 == top1:
        change = f"stays {quote(short(name0))} ({was} → {now})"
    else:
        change = f"changes from {quote(short(name0))} ({was}) to {quote(short(name1))} ({now})"
    both = torch.isfinite(bits0) & torch.isfinite(bits1)
    mean = f"; mean surprisal {float((bits1[both] - bits0[both]).mean()):+.2f} bits" if both.any() else ""
    return ok(f"With {describe(parts, analysis)} off, the top prediction at {where} {change}{mean}.")


# --------------------------------------------------------------------------- the tab


def build(catalog: Catalog, explore_ui: SimpleNamespace) -> SimpleNamespace:
    """Render the tab inside the current Blocks context and wire it to the Explore tab's Run."""
    ui = SimpleNamespace()
    ui.shown = gr.State(None)  # the stamp of the Run the controls were made for
    ui.cache = gr.State(None)  # that Run's unmodified attribution and pseudo-surprisal
    gr.Markdown("### Interventions: switch parts off and watch the prediction")
    gr.Markdown(HELP, elem_classes="ap-help", elem_id="ablate-help")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            ui.position = gr.Dropdown([], value=None, label="Position whose prediction is examined",
                                      elem_id="ablate-position")  # fmt: skip
            with gr.Row():
                ui.apply = gr.Button("Apply", variant="primary", elem_id="ablate-apply")
                ui.clear = gr.Button("Clear", elem_id="ablate-clear")
            ui.kind = gr.Radio(translation.KIND_CHOICES, value=translation.DEFAULT_KIND, label="Heads of",
                               visible=False, elem_id="ablate-kind")  # fmt: skip
            ui.heads = gr.CheckboxGroup([], value=[], label="Attention heads to switch off", visible=False,
                                        elem_id="ablate-heads")  # fmt: skip
            ui.experts = gr.CheckboxGroup([], value=[], label="Experts to switch off", visible=False,
                                          elem_id="ablate-experts")  # fmt: skip
            ui.mixers = gr.CheckboxGroup([], value=[], label="Scan layers to switch off", visible=False,
                                         elem_id="ablate-mixers")  # fmt: skip
            ui.tokens = gr.CheckboxGroup([], value=[], label="Input tokens to knock out", visible=False,
                                         elem_id="ablate-tokens")  # fmt: skip
        with gr.Column(scale=3, min_width=400):
            ui.summary = gr.Markdown(note("Run a model on the Explore tab first."), elem_id="ablate-summary",
                                     elem_classes="ap-status")  # fmt: skip
            ui.prediction = gr.Plot(show_label=False, elem_id="ablate-prediction", elem_classes="ap-plot")
    ui.surprisal = gr.Plot(show_label=False, elem_id="ablate-surprisal", elem_classes="ap-plot")
    ui.attribution = gr.Plot(show_label=False, elem_id="ablate-attribution", elem_classes="ap-plot")
    wire(catalog, explore_ui, ui)
    return ui


def wire(catalog: Catalog, explore_ui: SimpleNamespace, ui: SimpleNamespace) -> None:
    controls = [ui.kind, ui.heads, ui.experts, ui.mixers, ui.tokens, ui.position]
    shown = [ui.summary, ui.prediction, ui.surprisal, ui.attribution, ui.cache]
    outputs = [*controls, ui.shown, *shown]

    def view_updates(v: View) -> dict:
        return {ui.summary: v.summary, ui.prediction: v.prediction, ui.surprisal: v.surprisal,
                ui.attribution: v.attribution, ui.cache: v.cache}  # fmt: skip

    def control_updates(analysis: Analysis | None, kind=None, keep: dict | None = None) -> dict:
        """The controls for ``analysis``'s Run; ``keep``: values to keep where the new choices have them."""
        if analysis is None:
            hidden = gr.update(choices=[], value=[], visible=False)
            return {ui.kind: gr.update(visible=False), ui.heads: hidden, ui.experts: hidden, ui.mixers: hidden,
                    ui.tokens: hidden, ui.position: gr.update(choices=[], value=None), ui.shown: None}  # fmt: skip
        o = offer(catalog, analysis, kind)
        keep = keep or {}

        def group(choices: list, name: str) -> dict:
            values = {c[1] if isinstance(c, tuple) else c for c in choices}
            kept = [v for v in keep.get(name) or [] if v in values]
            return gr.update(choices=choices, value=kept, visible=bool(choices))

        return {
            ui.kind: gr.update(visible=bool(o.kinds), value=o.kind) if o.kinds else gr.update(visible=False),
            ui.heads: group(o.heads, "heads"), ui.experts: group(o.experts, "experts") | {"info": o.experts_info},
            ui.mixers: group(o.mixers, "mixers"), ui.tokens: group(o.tokens, "tokens"),
            ui.position: gr.update(choices=o.positions, value=o.position, label=o.position_label),
            ui.shown: stamp(analysis),
        }  # fmt: skip

    def fresh(analysis, shown=None, cache=None):
        """A new Run on the Explore tab: its controls, nothing off (unchanged Run: nothing to do)."""
        if analysis is not None and shown is not None and stamp(analysis) == tuple(shown):
            return {ui.summary: gr.update()}  # (an empty dict would be taken for one output's value)
        try:
            updates = control_updates(analysis)
        except (UnknownModelError, ValueError) as e:
            return {ui.summary: error(md_escape(str(e)))}
        return updates | view_updates(intervene(catalog, analysis, cache=None))

    def apply(analysis, shown, cache, heads, kind, experts, mixers, tokens, position):
        v = intervene(catalog, analysis, heads, kind, experts, mixers, tokens, position, cache)
        updates = view_updates(v)
        if analysis is None or shown is None or stamp(analysis) != tuple(shown):  # the Explore tab ran again
            try:
                updates |= control_updates(analysis, kind, dict(heads=heads, experts=experts, mixers=mixers,
                                                                 tokens=tokens))  # fmt: skip
            except (UnknownModelError, ValueError):
                pass
        return updates

    def choices(analysis):
        """The controls of the session's Run (for scripts: the checkboxes take only what they offer)."""
        try:
            return control_updates(analysis)
        except (UnknownModelError, ValueError) as e:
            return {ui.summary: error(md_escape(str(e)))}

    def switch_kind(analysis, kind):
        """Another attention kind: its heads, none ticked."""
        if analysis is None:
            return {ui.summary: gr.update()}
        try:
            o = offer(catalog, analysis, kind)
        except (UnknownModelError, ValueError) as e:
            return {ui.summary: error(md_escape(str(e)))}
        return {ui.heads: gr.update(choices=o.heads, value=[], visible=bool(o.heads))}

    def clear(analysis, cache, kind, position):
        v = intervene(catalog, analysis, None, kind, None, None, None, position, cache)
        return {ui.heads: [], ui.experts: [], ui.mixers: [], ui.tokens: [], **view_updates(v)}

    model = dict(concurrency_id=MODEL_EVENTS, show_progress="hidden")
    apply_inputs = [explore_ui.state, ui.shown, ui.cache, ui.heads, ui.kind, ui.experts, ui.mixers, ui.tokens,
                    ui.position]  # fmt: skip
    # Every Run: the controls follow it, when this tab is open or opened (a new position on the Explore tab
    # keeps the Run: nothing to do).
    follow(explore_ui, "ablate", fresh, inputs=[explore_ui.state, ui.shown, ui.cache], outputs=outputs,
           trigger_mode="always_last", **model)  # fmt: skip
    ui.apply.click(apply, inputs=apply_inputs, outputs=outputs, api_name="ablate", concurrency_id=MODEL_EVENTS,
                   show_progress="minimal")  # fmt: skip
    ui.position.input(apply, inputs=apply_inputs, outputs=outputs, api_visibility="private",
                      trigger_mode="always_last", **model)  # fmt: skip
    ui.kind.input(switch_kind, inputs=[explore_ui.state, ui.kind], outputs=[ui.heads, ui.summary],
                  api_visibility="private", show_progress="hidden")  # fmt: skip
    ui.clear.click(clear, inputs=[explore_ui.state, ui.cache, ui.kind, ui.position],
                   outputs=[ui.heads, ui.experts, ui.mixers, ui.tokens, *shown], api_visibility="private",
                   **model)  # fmt: skip
    # A plot drawn while its tab is hidden (a Run on the Explore tab redraws this one) gets plotly's default width
    # and keeps it while its figure does not change: showing the tab resizes the plots to their boxes.
    tab = Context.block if isinstance(Context.block, gr.Tab) else None
    if tab is not None:
        tab.select(None, js=RESIZE_JS, show_progress="hidden")
    ui.api = gr.Button(visible=False, elem_id="ablate-api")
    ui.api.click(choices, inputs=[explore_ui.state], outputs=[*controls, ui.shown, ui.summary],
                 api_name="ablate_choices", show_progress="hidden")  # fmt: skip


__all__ = ["Offer", "Parts", "View", "build", "intervene", "offer", "parse", "stamp"]
