"""The Explore page's logic as plain functions: text and settings in, figures and messages out.

Nothing here imports gradio, so every handler can be called (and tested) without a browser.
``explore.py`` turns the results into component updates.

The model runs in exactly two places: ``analyse`` (one traced forward pass per model and
text; an encoder-decoder first translates greedily, then traces its translation) and
``generate``. Everything a slider changes (``attention_figure``, ``distribution``,
``routing``, ``delta_figure``) is redrawn from the ``Analysis`` that ``analyse`` cached.

The family-specific parts live beside this module: ``app.translate`` (encoder-decoder),
``app.routing`` (mixture of experts), ``app.state_space`` (Mamba).
"""

from __future__ import annotations

import dataclasses
import html
import time
from collections.abc import Iterator
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from torch import Tensor

from models.sampling import check_settings, staged_distribution
from models import LoadError
from models.layers import attention_mask
from models.sampling import sample_many
from viz.attention import attention_grid, attention_heatmap, attention_mask_heatmap
from viz.sampling import distribution_figure, sample_histogram

from . import routing as moe
from . import state_space as ssm
from . import translate as seq2seq
from .messages import error, md_escape, note, ok, plural, quote, short, warn  # noqa: F401  (re-exported)
from .registry import Entry, Registry, UnknownModelError
from .routing import Routing, RoutingView
from .state_space import StateSpace
from .translate import Translation

# From the built-ins' story world (models/corpus.py), so the trained models have something to say.
DEFAULT_TEXT = "Mia finds a big red ball. She throws the ball to Tom. Then Tom"
TOP_N = 20  # bars in the distribution figure
PAGE_MAX_TOKENS = 512  # the most tokens one Run analyses: a T × T heatmap stays drawable

# Families this page can show; the others get a clear message.
SUPPORTED_FAMILIES = ("decoder", "encoder", "encoder-decoder", "moe", "ssm")
GENERATING_FAMILIES = ("decoder", "encoder-decoder", "moe", "ssm")

ATTENTION_HELP = {
    "causal": (
        "Row = the token doing the looking (query), column = what it looks at (key); "
        "causal models cannot look ahead, hence the empty upper triangle."
    ),
    "bidirectional": (
        "Row = the token doing the looking (query), column = what it looks at (key); "
        "this encoder is bidirectional, so every token may look at every other one."
    ),
    "none": "This architecture has no attention weights to show.",
    "ssm": ssm.HELP + "\n\n" + ssm.DELTA_HELP,
    **{f"seq2seq-{kind}": text for kind, text in seq2seq.KIND_HELP.items()},
}
HEAD_INFO = "each head has its own pattern"


# --------------------------------------------------------------------------- session state


@dataclass
class Analysis:
    """What one Run leaves in the session: small, CPU-only, no model objects."""

    model_key: str
    model_label: str
    family: str
    text: str  # the text as typed
    ids: list[int]  # the analysed token ids (after any truncation); an encoder-decoder's source
    labels: list[str]  # one display label per id
    attentions: list[Tensor] | None  # per layer (H, T, T) float32 on the CPU (enc-dec: the encoder's)
    logits: Tensor | None  # (T, V) float32 on the CPU (enc-dec: the decoder's, one row per target step)
    predict_at: int | None  # the position (enc-dec: target step) whose distribution is shown first
    truncated_from: int | None = None  # the token count before truncation, when the text was cut
    mask_token: str | None = None  # the encoder's mask token, for messages
    translation: Translation | None = None  # encoder-decoder only
    routing: Routing | None = None  # mixture of experts only
    ssm: StateSpace | None = None  # state-space models only
    hidden_states: list[Tensor] | None = None  # [embeddings, layer 1, ...] each (T, D) (enc-dec: the encoder's)
    windows: list[int | None] | None = None  # per layer: the sliding window, None = full attention

    @property
    def kinds(self) -> tuple[str, ...]:
        """The attention kinds this Run can show: an encoder-decoder's three, else one ("self")."""
        return seq2seq.KINDS if self.translation is not None else ("self",)

    def kind(self, kind: str | None) -> str:
        """``kind`` checked against ``kinds``; None picks the first. Other families ignore it."""
        if self.translation is None:
            return "self"
        if kind is None:
            return seq2seq.KINDS[0]
        if kind not in seq2seq.KINDS:
            raise ValueError(f"attention kind must be one of {', '.join(seq2seq.KINDS)}, got {kind!r}")
        return kind

    def layer_count(self, kind: str | None = None) -> int:
        """How many layers the layer slider spans for ``kind`` (a T5 decoder may be deeper)."""
        kind = self.kind(kind)
        if kind == "decoder":
            return self.translation.n_decoder_layer
        if kind == "cross":
            return len(self.translation.cross_attentions)
        if self.ssm is not None:
            return self.ssm.n_layer
        return len(self.attentions) if self.attentions else 0

    @property
    def n_layer(self) -> int:
        return self.layer_count(None)

    @property
    def n_head(self) -> int:
        return int(self.attentions[0].shape[0]) if self.attentions else 0

    @property
    def causal(self) -> bool:
        return self.family != "encoder"

    @property
    def n_steps(self) -> int:
        """Target steps of an encoder-decoder's translation (0 for other families)."""
        return len(self.translation.ids) if self.translation is not None else 0


@dataclass
class AnalyseResult:
    analysis: Analysis | None
    status: str  # markdown
    tokens_html: str
    attention: go.Figure | None
    attention_help: str
    layer: int
    head: int
    distribution: go.Figure | None
    distribution_note: str  # markdown
    can_generate: bool
    generate_note: str  # markdown
    attention_kind: str | None = None  # enc-dec: the kind drawn; None for other families
    step: int = 0  # enc-dec: the translation step the distribution shows
    delta: go.Figure | None = None  # ssm: Δ per token for ``layer``
    routing: RoutingView | None = None  # moe: the routing view of ``moe_layer``
    moe_layer: int = 0
    head_info: str = HEAD_INFO  # the head slider's explanation (why it is off, for an ssm)
    grid: go.Figure | None = None  # every layer × head, thumbnails
    mask: go.Figure | None = None  # the mask pattern of ``layer``
    mask_help: str = ""

    @property
    def ok(self) -> bool:
        return self.analysis is not None


# --------------------------------------------------------------------------- tokens strip


def tokens_html(labels: list[str], ids: list[int], *, focus: int | None = None, note_text: str = "") -> str:
    """Token chips; hovering a chip shows its position and id. Everything user-made is escaped."""
    if not labels:
        return '<div class="ap-tokens ap-empty">Run the model to see how it splits your text into tokens.</div>'
    chips = []
    for i, (label, tid) in enumerate(zip(labels, ids)):
        cls = "ap-tok ap-focus" if i == focus else "ap-tok"
        tip = f"#{i} · id {tid}" + (" · predicted here" if i == focus else "")
        chips.append(
            f'<span class="{cls}" title="{html.escape(tip, quote=True)}" data-index="{i}">'
            f'<span class="ap-idx">{i}</span>{html.escape(label or "∅", quote=True)}</span>'
        )
    meta = f"{len(labels)} token{'s' if len(labels) != 1 else ''} · hover one for its position and id"
    if note_text:
        meta += f" · {html.escape(note_text, quote=True)}"
    return (
        f'<div class="ap-tokens" role="list" aria-label="{len(labels)} tokens">{"".join(chips)}</div>'
        f'<div class="ap-tokens-meta">{meta}</div>'
    )


def seq2seq_tokens_html(analysis: Analysis, note_text: str = "") -> str:
    """Two strips: the source the encoder read and the translation the decoder wrote."""
    t = analysis.translation
    ending = "stopped at the end-of-text token" if t.stopped_at_eos else f"stopped at the {t.budget}-token limit"
    return (
        '<div class="ap-strip-title">Source: what the encoder reads</div>'
        + tokens_html(analysis.labels, analysis.ids, note_text=note_text)
        + '<div class="ap-strip-title">Translation: what the decoder wrote (greedy, one token per step)</div>'
        + tokens_html(t.labels, t.ids, note_text=ending)
    )


# --------------------------------------------------------------------------- analyse


def _empty_result(status: str, *, layer: int = 0, head: int = 0, can_generate: bool = True) -> AnalyseResult:
    return AnalyseResult(
        analysis=None, status=status, tokens_html=tokens_html([], []), attention=None,
        attention_help="", layer=layer, head=head, distribution=None, distribution_note="",
        can_generate=can_generate, generate_note="",
    )  # fmt: skip


def generate_note(entry: Entry) -> tuple[bool, str]:
    """Whether ``entry`` can generate, and a note for the Generate panel (why not, or what it does)."""
    if entry.family == "encoder-decoder":
        return True, note(
            "An encoder-decoder does not continue your text: Generate translates it again, token by "
            "token, with the sampling settings above (Run shows the greedy translation)."
        )
    if entry.family in GENERATING_FAMILIES:
        return True, ""
    if entry.family == "encoder":
        mask_id = getattr(entry.tokenizer, "mask_token_id", None)
        tip = ""
        if mask_id is not None:
            mask = md_escape(entry.tokenizer.tokens([mask_id])[0])
            tip = f" Put {mask} in your text and the distribution panel shows what it would fill in."
        return False, note(
            "Encoders such as BERT fill in blanks rather than continue text, "
            "so Generate is off for this model." + tip
        )
    return False, note(f"Generation for the {md_escape(entry.family)} family is not on this page yet.")


def token_limit(entry: Entry) -> int:
    """The most tokens a Run analyses: the model's context, or the page's limit if smaller."""
    return min(int(entry.config.max_seq_len), PAGE_MAX_TOKENS)


def encode(entry: Entry, text: str) -> tuple[list[int], int | None]:
    """Token ids for ``text``, cut to ``token_limit``; also the length before cutting (or None)."""
    ids = [int(i) for i in entry.tokenizer.encode(text)]
    limit = token_limit(entry)
    if len(ids) > limit:
        return ids[:limit], len(ids)
    return ids, None


@torch.inference_mode()
def run_model(entry: Entry, ids: list[int]):
    """One traced forward pass; the only model call ``analyse`` makes (beside a translation's)."""
    x = torch.tensor([ids], dtype=torch.long, device=entry.device)
    return entry.model(x, trace=True)


def analyse(
    registry: Registry,
    model_key: str | None,
    text: str | None,
    layer: int = 0,
    head: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    attention_kind: str | None = None,
    step: int = 0,
    moe_layer: int = 0,
) -> AnalyseResult:
    """Tokenise ``text``, run the model once with tracing, and draw every view.

    ``layer``/``head`` (for an encoder-decoder: of ``attention_kind``), ``step`` (the translation
    step) and ``moe_layer`` are clamped into the new Run's range; the sampling settings only
    shape the first drawing of the distribution. Problems come back as a status message.
    """
    layer, head = int(layer or 0), int(head or 0)
    try:
        entry = registry.get(model_key)
    except UnknownModelError as e:
        return _empty_result(error(md_escape(str(e))), layer=layer, head=head)
    can_gen, gen_note = generate_note(entry)
    if entry.family not in SUPPORTED_FAMILIES:
        msg = error(f"The Explore page cannot show the {md_escape(entry.family)} family yet.")
        return _empty_result(msg, layer=layer, head=head, can_generate=can_gen)
    if text is None or not str(text).strip():
        msg = error("Type some text first, then press Run.")
        return _empty_result(msg, layer=layer, head=head, can_generate=can_gen)

    text = str(text)
    ids, truncated_from = encode(entry, text)
    if not ids:
        return _empty_result(error("This text produced no tokens."), layer=layer, head=head, can_generate=can_gen)

    started = time.perf_counter()
    translation = None
    try:
        if entry.family == "encoder-decoder":
            translation, out = seq2seq.translate(entry, ids)
        else:
            out = run_model(entry, ids)
    except (ValueError, RuntimeError) as e:  # e.g. a context limit the config did not state
        return _empty_result(error(f"The model failed on this text: {md_escape(str(e))}"), can_generate=can_gen)
    elapsed = time.perf_counter() - started

    analysis = _analysis(entry, text, ids, truncated_from, out, translation, step)
    kind = analysis.kind(attention_kind if attention_kind in analysis.kinds else None)
    layer = _clamp(layer, analysis.layer_count(kind))
    head = _clamp(head, analysis.n_head)
    moe_layer = _clamp(int(moe_layer or 0), analysis.routing.n_layer if analysis.routing else 0)
    try:
        dist_fig, dist_note = distribution(registry, analysis, temperature, top_k, top_p)
    except ValueError as e:
        dist_fig, dist_note = None, error(md_escape(str(e)))

    status, trunc_note = _status(entry, analysis, elapsed)
    mask_fig, mask_help = mask_figure(analysis, layer, kind)
    if translation is not None:
        strip = seq2seq_tokens_html(analysis, note_text=trunc_note)
    else:
        strip = tokens_html(analysis.labels, ids, focus=analysis.predict_at, note_text=trunc_note)
    return AnalyseResult(
        analysis=analysis,
        status=status,
        tokens_html=strip,
        attention=attention_figure(analysis, layer, head, kind),
        attention_help=attention_help(analysis, kind),
        layer=layer,
        head=head,
        distribution=dist_fig,
        distribution_note=dist_note,
        can_generate=can_gen,
        generate_note=gen_note,
        attention_kind=kind if translation is not None else None,
        step=analysis.predict_at if translation is not None else 0,
        delta=delta_figure(analysis, layer),
        routing=routing(analysis, moe_layer),
        moe_layer=moe_layer,
        head_info=ssm.HEAD_INFO if analysis.ssm is not None else HEAD_INFO,
        grid=grid_figure(analysis, layer, head, kind),
        mask=mask_fig,
        mask_help=mask_help,
    )


def _clamp(value: int, count: int) -> int:
    return min(max(int(value), 0), max(count - 1, 0))


def _analysis(entry: Entry, text: str, ids: list[int], truncated_from, out, translation, step) -> Analysis:
    """The session's copy of one Run: float32 on the CPU, only what the redraws need."""
    tok = entry.tokenizer
    trace = out.trace
    attentions = None
    if trace is not None and trace.attentions and all(a is not None for a in trace.attentions):
        attentions = [a[0].detach().float().cpu() for a in trace.attentions]  # each (H, T, T)
    logits = out.logits[0].detach().float().cpu() if out.logits is not None else None  # (T, V)

    mask_id = getattr(tok, "mask_token_id", None)
    mask_token = tok.tokens([mask_id])[0] if mask_id is not None else None
    if logits is None:
        predict_at = None
    elif translation is not None:
        predict_at = _clamp(int(step or 0), len(translation.ids))
    elif entry.family == "encoder":
        masks = [i for i, t in enumerate(ids) if mask_id is not None and t == mask_id]
        predict_at = masks[0] if masks else None
    else:
        predict_at = len(ids) - 1

    hidden = None
    if trace is not None and trace.hidden_states:
        hidden = [h[0].detach().float().cpu() for h in trace.hidden_states]  # each (T, D)
    cfg = entry.config
    layer_types = getattr(cfg, "layer_types", None) or []
    windows = [getattr(cfg, "sliding_window", None) if kind == "sliding" else None for kind in layer_types]
    return Analysis(
        model_key=entry.key, model_label=entry.label, family=entry.family, text=text, ids=ids,
        labels=list(tok.tokens(ids)), attentions=attentions, logits=logits, predict_at=predict_at,
        truncated_from=truncated_from, mask_token=mask_token, translation=translation,
        routing=Routing.from_trace(trace, entry.config), ssm=StateSpace.from_trace(trace),
        hidden_states=hidden, windows=windows or None,
    )  # fmt: skip


def _status(entry: Entry, analysis: Analysis, elapsed: float) -> tuple[str, str]:
    """The status markdown and the tokens strip's truncation note."""
    n = len(analysis.ids)
    t = analysis.translation
    if t is None:
        status = ok(f"Ran **{md_escape(entry.label)}** on {plural(n, 'token')} in {elapsed * 1000:.0f} ms.")
    else:
        ending = "it wrote the end-of-text token" if t.stopped_at_eos else f"it reached the {t.budget}-token limit"
        status = ok(
            f"Ran **{md_escape(entry.label)}** on {plural(n, 'source token')} and translated it greedily into "
            f"{plural(len(t.ids), 'token')} ({ending}) in {elapsed * 1000:.0f} ms."
        )
    if not entry.trained:
        status += " Its weights are random, so the patterns show the mechanics, not learned language."
    if analysis.truncated_from is None:
        return status, ""
    context = int(entry.config.max_seq_len)
    if n >= context:
        why = f"this model reads at most {n}"
    else:
        why = f"this page analyses at most {n} (the model reads {context}, but the maps would be too big to draw)"
    status += "\n\n" + warn(
        f"Your text is {analysis.truncated_from} tokens long but {why}; only the first {n} were analysed."
    )
    return status, f"cut to the first {n} of {analysis.truncated_from}"


# --------------------------------------------------------------------------- redraws (no model calls)


def attention_help(analysis: Analysis, kind: str | None = None) -> str:
    """How to read the heatmap for this family and kind, or why there is none."""
    if analysis.ssm is not None:
        return ATTENTION_HELP["ssm"]
    if analysis.translation is not None:
        return ATTENTION_HELP[f"seq2seq-{analysis.kind(kind)}"]
    if analysis.attentions is None:
        return ATTENTION_HELP["none"]
    return ATTENTION_HELP["causal" if analysis.causal else "bidirectional"]


def attention_figure(analysis: Analysis | None, layer: int, head: int, kind: str | None = None) -> go.Figure | None:
    """The heatmap of one layer and head (of ``kind``, for an encoder-decoder) from the cached trace.

    A state-space model has no heads: its hidden attention of ``layer`` (``head`` is ignored).
    None before a Run or without attention; ValueError for a layer, head or kind out of range.
    """
    if analysis is None:
        return None
    if analysis.ssm is not None:
        return ssm.attention_figure(analysis.ssm, analysis.labels, layer)
    if analysis.attentions is None:
        return None
    kind = analysis.kind(kind)
    layer, head = int(layer), int(head)
    n_layer = analysis.layer_count(kind)
    if not (0 <= layer < n_layer):
        raise ValueError(f"layer must be between 0 and {n_layer - 1}, got {layer}")
    if not (0 <= head < analysis.n_head):
        raise ValueError(f"head must be between 0 and {analysis.n_head - 1}, got {head}")
    if analysis.translation is None:
        weights = analysis.attentions[layer][head]  # (T, T)
        title = f"Layer {layer}, head {head} of {analysis.n_layer} × {analysis.n_head}"
        return attention_heatmap(weights, analysis.labels, analysis.labels, title=title)
    return _seq2seq_figure(analysis, kind, layer, head)


def _seq2seq_figure(analysis: Analysis, kind: str, layer: int, head: int) -> go.Figure:
    t = analysis.translation
    title = (
        f"{seq2seq.KIND_NAMES[kind]}: layer {layer}, head {head} "
        f"of {analysis.layer_count(kind)} × {analysis.n_head}"
    )
    if kind == "encoder":
        return attention_heatmap(
            analysis.attentions[layer][head], analysis.labels, analysis.labels, title=title,
            query_title="source token (looking)", key_title="source token (looked at)",
        )  # fmt: skip
    maps = t.decoder_attentions if kind == "decoder" else t.cross_attentions
    keys = t.input_labels if kind == "decoder" else analysis.labels
    return attention_heatmap(
        maps[layer][head], t.labels, keys, title=title,
        query_title="translation token being chosen",
        key_title="decoder input (written so far)" if kind == "decoder" else "source token",
        query_word="step", key_word="input" if kind == "decoder" else "source",
    )  # fmt: skip


def attention_kind(analysis: Analysis | None, kind: str | None, layer: int, head: int):
    """Switch an encoder-decoder's attention kind -> ``(layer, layer count, figure, help)``: the
    layer is clamped into the new kind's range (a T5 decoder may be deeper than its encoder).
    Other families have one kind and keep their view. ValueError for an unknown kind."""
    if analysis is None:
        return 0, 0, None, ""
    kind = analysis.kind(kind)
    n = analysis.layer_count(kind)
    layer = _clamp(layer or 0, n)
    fig = attention_figure(analysis, layer, _clamp(head or 0, analysis.n_head), kind)
    return layer, n, fig, attention_help(analysis, kind)


def attention_maps(analysis: Analysis, kind: str | None = None) -> Tensor | None:
    """Every layer's and head's attention of ``kind`` as one (L, H, Tq, Tk) tensor (a state-space
    model: its hidden attention as (L, 1, T, T)); None without attention."""
    if analysis.ssm is not None:
        return torch.stack(analysis.ssm.hidden_attention)[:, None]
    kind = analysis.kind(kind)
    if analysis.translation is not None and kind != "encoder":
        t = analysis.translation
        return torch.stack(t.decoder_attentions if kind == "decoder" else t.cross_attentions)
    return torch.stack(analysis.attentions) if analysis.attentions else None


def grid_figure(analysis: Analysis | None, layer: int, head: int, kind: str | None = None) -> go.Figure | None:
    """Thumbnails of every layer × head (of ``kind``), the chosen one framed; None without attention."""
    if analysis is None:
        return None
    maps = attention_maps(analysis, kind)
    if maps is None:
        return None
    name = "hidden attention" if analysis.ssm is not None else seq2seq.KIND_NAMES.get(analysis.kind(kind), "attention")
    title = f"Every layer × head: {name} (rows = layers, 0 at the top)"
    col = "channel mean" if analysis.ssm is not None else "head"
    return attention_grid(maps, selected=(int(layer), 0 if analysis.ssm is not None else int(head)), title=title,
                          col_name=col)  # fmt: skip


MASK_HELP = {
    "causal": "Causal: each token may look at itself and the tokens before it, never ahead.",
    "sliding": "Sliding window: causal, and only the last {w} tokens (this layer's window).",
    "bidirectional": "Bidirectional: every token may look at every token, before and after.",
    "cross": "Cross-attention: every translation step may look at every source token.",
    "ssm": "No attention mask: the recurrence is causal by construction (each state mixes only earlier tokens).",
}


def mask_figure(analysis: Analysis | None, layer: int, kind: str | None = None) -> tuple[go.Figure | None, str]:
    """The mask pattern the architecture applies in ``layer`` (of ``kind``) and a sentence on it."""
    if analysis is None:
        return None, ""
    kind = analysis.kind(kind)
    t = analysis.translation
    if t is not None and kind != "encoder":
        queries, keys = t.labels, (t.input_labels if kind == "decoder" else analysis.labels)
    else:
        queries = keys = analysis.labels
    window = None
    if analysis.windows and 0 <= int(layer) < len(analysis.windows):
        window = analysis.windows[int(layer)]
    if kind == "cross":
        pattern, help_text = "cross", MASK_HELP["cross"]
    elif analysis.ssm is not None:
        pattern, help_text = "causal", MASK_HELP["ssm"]
    elif kind == "encoder" or not analysis.causal:
        pattern, help_text = "bidirectional", MASK_HELP["bidirectional"]
    elif window is not None:
        pattern, help_text = "sliding", MASK_HELP["sliding"].format(w=window)
    else:
        pattern, help_text = "causal", MASK_HELP["causal"]
    q, k = torch.arange(len(queries)), torch.arange(len(keys))
    allowed = attention_mask(q, k, causal=pattern in ("causal", "sliding"), window=window)
    if allowed is None:
        allowed = torch.ones(len(queries), len(keys), dtype=torch.bool)
    title = f"Mask pattern: {pattern}" + (f" (window {window})" if window else "")
    return attention_mask_heatmap(allowed, queries, keys, title=title), help_text


def delta_figure(analysis: Analysis | None, layer: int) -> go.Figure | None:
    """A state-space model's mean step size Δ per token in ``layer``; None for other families."""
    if analysis is None or analysis.ssm is None:
        return None
    return ssm.delta_figure(analysis.ssm, analysis.labels, layer)


def routing(analysis: Analysis | None, layer: int) -> RoutingView | None:
    """A mixture of experts' routing in MoE layer ``layer``; None for other families."""
    if analysis is None or analysis.routing is None:
        return None
    return moe.view(analysis.routing, analysis.labels, analysis.ids, layer)


def load_model(registry: Registry, name: str | None) -> tuple[str, str | None]:
    """Load the folder ``name`` from the server's models directory -> (status markdown, its key or None).

    Only folders inside that directory resolve (``Registry.add_from_models_dir``); every problem,
    a missing, broken or unsupported checkpoint included, comes back as a message."""
    try:
        entry = registry.add_from_models_dir(str(name or ""))
    except LoadError as e:
        return error(md_escape(str(e))), None
    return ok(f"Loaded **{md_escape(entry.label)}**; it is now in the model list."), entry.key


def corpus_routing(registry: Registry, analysis: Analysis | None, layer: int):
    """A mixture of experts' MoE layer ``layer`` over the validation stories (specialisation by part of
    speech, load): ``(heatmap, load figure, note)``; Nones and "" for other families."""
    if analysis is None or analysis.routing is None:
        return None, None, ""
    try:
        entry = registry.get(analysis.model_key)
    except UnknownModelError as e:
        return None, None, error(md_escape(str(e)))
    return moe.corpus_view(entry, layer)


def _settings(temperature, top_k, top_p) -> tuple[float, int, float]:
    temperature = float(temperature)
    top_p = float(top_p)
    if isinstance(top_k, float) and top_k.is_integer():
        top_k = int(top_k)
    check_settings(temperature, top_k, top_p)
    return temperature, top_k, top_p


def distribution(
    registry: Registry,
    analysis: Analysis | None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    step: int | None = None,
    position: int | None = None,
) -> tuple[go.Figure | None, str]:
    """The sampling stages at one position, from the cached logits, and a one-line summary.

    ``position`` picks the token whose prediction is shown (None: the Run's, the last token or an
    encoder's first mask); for an encoder-decoder ``step`` picks the translation step instead.
    Raises ValueError for settings, a step or a position outside their ranges.
    """
    temperature, top_k, top_p = _settings(temperature, top_k, top_p)
    pos, message = predicted_position(analysis, step, position)
    if pos is None:
        return None, message
    staged = staged_distribution(analysis.logits[pos], temperature, top_k, top_p)
    labels_for = _labels_for(registry, analysis)
    fig = distribution_figure(staged, labels_for, top_n=TOP_N, title=_distribution_title(analysis, pos))

    final = staged.final
    best = int(torch.argmax(final))
    best_label = labels_for([best])[0]
    kept = int(staged.kept.sum())
    vocab = int(final.shape[-1])
    summary = (
        f"Most likely: {quote(best_label)} at {float(final[best]):.1%} "
        f"(before sampling settings: {float(staged.raw[best]):.1%}). "
        f"{kept:,} of {vocab:,} tokens can still be drawn; entropy {float(staged.entropy):.2f} nats."
    )
    if top_k > vocab:
        summary += f" (Top-k {top_k:,} is above the vocabulary of {vocab:,}: it removes nothing.)"
    if analysis.translation is not None:
        wrote = analysis.translation.labels[pos]
        summary += f" Step {pos} of {analysis.n_steps}: the greedy translation wrote {quote(wrote)} here."
    return fig, summary


def predicted_position(analysis: Analysis | None, step: int | None, position: int | None) -> tuple[int | None, str]:
    """(the logits row to show, "") or (None, why there is none); ValueError for one out of range."""
    if analysis is None:
        return None, note("Press Run to see what the model predicts.")
    if analysis.logits is None:
        return None, note("This checkpoint has no prediction head (a bare encoder), so there is nothing to show.")
    if analysis.translation is not None:
        if step is None:
            return analysis.predict_at, ""
        if not 0 <= int(step) < analysis.n_steps:
            raise ValueError(f"step must be between 0 and {analysis.n_steps - 1}, got {int(step)}")
        return int(step), ""
    if position is not None and int(position) >= 0:
        n = len(analysis.ids)
        if int(position) >= n:
            raise ValueError(f"position must be between 0 and {n - 1}, got {int(position)}")
        return int(position), ""
    if analysis.predict_at is None:
        mask = md_escape(analysis.mask_token or "[MASK]")
        if analysis.mask_token is None:
            return None, note("This encoder's tokenizer has no mask token: pick a position to see what fits there.")
        return None, note(f"Add {mask} to your text (an encoder predicts the token hidden behind a mask), "
                          "or pick a position to see what fits there.")  # fmt: skip
    return analysis.predict_at, ""


def at_position(
    registry: Registry, analysis: Analysis | None, position: int, temperature: float = 1.0, top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[Analysis | None, go.Figure | None, str]:
    """Show the prediction at ``position`` from now on: (the session's Analysis with it, the figure,
    the summary). Later redraws and samples use that position. Not for an encoder-decoder (its
    ``step`` picks the row). ValueError for a position out of range."""
    if analysis is None or analysis.translation is not None:
        return (analysis, *distribution(registry, analysis, temperature, top_k, top_p))
    fig, summary = distribution(registry, analysis, temperature, top_k, top_p, None, position)
    return dataclasses.replace(analysis, predict_at=int(position)), fig, summary


def _distribution_title(analysis: Analysis, pos: int) -> str:
    if analysis.translation is not None:
        wrote_label = html.escape(short(analysis.translation.labels[pos]))
        return f"Translation step {pos}: candidates for target token {pos} (greedy wrote ‘{wrote_label}’)"
    if analysis.family == "encoder":
        return f"What fits at position {pos} (‘{html.escape(short(analysis.labels[pos]))}’ there now)"
    return f"Next token after ‘{html.escape(short(analysis.labels[pos]))}’ (position {pos})"


SAMPLE_COUNTS = (1, 200)  # the page's "sample once" and "sample 200 times"


def samples(
    registry: Registry,
    analysis: Analysis | None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    step: int | None = None,
    position: int | None = None,
    n: int = 200,
    seed: int = 0,
) -> tuple[go.Figure | None, str]:
    """``n`` draws (1 to 10 000) from the final distribution at the shown position: a histogram
    beside the promised probabilities, and a sentence. Same seed, same draws."""
    temperature, top_k, top_p = _settings(temperature, top_k, top_p)
    n, seed = int(n), int(seed or 0)
    if not 1 <= n <= 10_000:
        raise ValueError(f"the number of draws must be between 1 and 10000, got {n}")
    pos, message = predicted_position(analysis, step, position)
    if pos is None:
        return None, message
    logits = analysis.logits[pos]
    draws = sample_many(logits, n, temperature, top_k, top_p, seed=seed)  # (n,)
    final = staged_distribution(logits, temperature, top_k, top_p).final
    labels_for = _labels_for(registry, analysis)
    fig = sample_histogram(draws, final, labels_for, title=f"{n} draw{'s' if n > 1 else ''} at position {pos}")
    if n == 1:
        tid = int(draws[0])
        return fig, f"Drew {quote(labels_for([tid])[0])} (it had {float(final[tid]):.1%} probability)."
    top = int(torch.bincount(draws).argmax())
    share = float((draws == top).float().mean())
    return fig, (f"The most drawn token was {quote(labels_for([top])[0])}: {share:.1%} of {n} draws against "
                 f"{float(final[top]):.1%} promised. More draws, closer bars.")  # fmt: skip


def _labels_for(registry: Registry, analysis: Analysis):
    try:
        tok = registry.get(analysis.model_key).tokenizer
    except UnknownModelError:
        return lambda ids: [f"<{i}>" for i in ids]
    return lambda ids: list(tok.tokens(list(ids)))


# --------------------------------------------------------------------------- generate


def generate(
    registry: Registry,
    model_key: str | None,
    text: str | None,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Iterator[tuple[str, str, str]]:
    """Continue ``text`` token by token (an encoder-decoder: translate it), yielding
    (text so far, status markdown, the new tokens as HTML coloured by probability) after each token.

    The prompt keeps its last tokens when prompt + new tokens would overflow the context; an
    encoder-decoder's source keeps its first ones. Errors are yielded as a status message
    (with an empty text), never raised.
    """
    try:
        entry = registry.get(model_key)
    except UnknownModelError as e:
        yield "", error(md_escape(str(e))), ""
        return
    can_gen, why = generate_note(entry)
    if not can_gen:
        yield "", why, ""
        return
    if text is None or not str(text).strip():
        yield "", error("Type some text to continue, then press Generate."), ""
        return
    try:
        temperature, top_k, top_p = _settings(temperature, top_k, top_p)
        max_new_tokens = int(max_new_tokens)
        seed = int(seed or 0)
        if max_new_tokens < 1:
            raise ValueError(f"max new tokens must be at least 1, got {max_new_tokens}")
    except (TypeError, ValueError) as e:
        yield "", error(md_escape(str(e))), ""
        return

    tok = entry.tokenizer
    prompt = [int(i) for i in tok.encode(str(text))]
    if not prompt:
        yield "", error("This text produced no tokens."), ""
        return
    notes = []
    limit = int(entry.config.max_seq_len)
    seq2seq_model = entry.family == "encoder-decoder"
    if seq2seq_model:
        # The decoder's length is free (relative positions); only the source is bounded.
        if len(prompt) > limit:
            notes.append(warn(f"The text was cut to its first {limit} tokens, as much as this model reads."))
            prompt = prompt[:limit]
    else:
        if max_new_tokens >= limit:
            notes.append(warn(f"This model's context is {limit} tokens, so at most {limit - 1} new ones."))
            max_new_tokens = limit - 1
        if len(prompt) + max_new_tokens > limit:
            keep = limit - max_new_tokens
            notes.append(warn(f"The prompt was cut to its last {keep} tokens to leave room in {limit}-token context."))
            prompt = prompt[-keep:]

    ids = torch.tensor([prompt], dtype=torch.long, device=entry.device)
    new: list[int] = []
    probs: list[float] = []
    eos = seq2seq.eos_id(entry) if seq2seq_model else getattr(tok, "eos_token_id", None)
    shown = (lambda: tok.decode(new)) if seq2seq_model else (lambda: tok.decode(prompt + new))
    verb = ("Translating…", "Translated into") if seq2seq_model else ("Generating…", "Generated")
    pieces = ProbabilityChips(tok)
    started = time.perf_counter()
    stream = entry.model.generate_stream(
        ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=seed, eos_token_id=eos,
    )  # fmt: skip
    try:
        for token_id, prob in stream:
            new.append(int(token_id))
            probs.append(float(prob))
            pieces.add(int(token_id), float(prob))
            status = _gen_status(new, probs, started, notes, verb, done=False, greedy=temperature == 0)
            yield shown(), status, pieces.html()
    except (ValueError, RuntimeError) as e:
        yield shown(), error(f"Generation stopped: {md_escape(str(e))}"), pieces.html()
        return
    stopped = bool(new) and eos is not None and new[-1] == eos
    final = _gen_status(new, probs, started, notes, verb, done=True, greedy=temperature == 0, stopped_at_eos=stopped)
    yield shown(), final, pieces.html()


class ProbabilityChips:
    """The generated tokens as text pieces, each shaded by the probability it was drawn with
    (red: an unlikely pick, green: a confident one); hovering a piece shows the number."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.pieces = tokenizer, [], []

    def add(self, token_id: int, prob: float) -> None:
        before = self.tok.decode(self.ids)
        self.ids.append(token_id)
        after = self.tok.decode(self.ids)  # the piece is what this token added to the decoded text
        piece = after[len(before):] if after.startswith(before) else self.tok.decode([token_id])
        self.pieces.append((piece, prob))

    def html(self) -> str:
        if not self.pieces:
            return ""
        spans = "".join(
            f'<span class="ap-gen" style="background:hsl({120 * p:.0f},70%,84%)" '
            f'title="p = {p:.1%}">{html.escape(piece) or "∅"}</span>'
            for piece, p in self.pieces
        )
        legend = ('<div class="ap-gen-legend">shade = the probability each token was drawn with: '
                  '<span style="background:hsl(0,70%,84%)">unlikely</span> → '
                  '<span style="background:hsl(120,70%,84%)">certain</span></div>')  # fmt: skip
        return f'<div class="ap-gen-text">{spans}</div>{legend}'


def _gen_status(new, probs, started, notes, verb, *, done: bool, greedy: bool, stopped_at_eos: bool = False) -> str:
    secs = max(time.perf_counter() - started, 1e-9)
    n = len(new)
    line = f"{verb[1] if done else verb[0]} {plural(n, 'token')} · {n / secs:.1f} tokens/s"
    if greedy:
        line += " · greedy (temperature 0): always the likeliest token"
    elif probs:
        line += f" · the drawn tokens had {sum(probs) / len(probs):.1%} probability on average"
    if stopped_at_eos:
        line += " · stopped at the end-of-text token"
    return "\n\n".join([ok(line) if done else note(line), *notes])
