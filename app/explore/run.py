"""Explore's Run as a plain function: text and settings in, every view of the page out, by name.

``analyse`` is where the page calls the model (``session.traced_run``: once, or for an
encoder-decoder a greedy translation and one traced pass over it); it leaves the ``Analysis``
the sliders redraw from and draws the first picture of every view the model's family has.
``load_model`` is the page's other server-side action: a checkpoint folder added to the models
on offer. Nothing here imports gradio: ``explore.page`` turns the result into component updates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import plotly.graph_objects as go

from archplay.models import LoadError
from archplay.models.analysis.trace_budget import trace_cap

from ..catalog import Catalog, Entry, UnknownModelError
from ..messages import error, md_escape, ok, plural, warn
from ..session import Analysis, record, traced_run
from ..sliders import clamp
from ..tokens import PAGE_MAX_TOKENS, clip, encode, tokens_html
from . import attention, routing, scan, translation
from .generation import generate_note
from .routing import RoutingView
from .sampling import distribution


@dataclass
class AnalyseResult:
    """What one Run shows, view by view. Without an ``analysis`` only the messages are meaningful."""

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
    attention_kind: str | None = None  # translation view: the kind drawn; None for other families
    step: int = 0  # translation view: the step the distribution shows
    delta: go.Figure | None = None  # scan view: Δ per token for ``layer``
    routing: RoutingView | None = None  # routing view: ``moe_layer``'s
    moe_layer: int = 0
    head_info: str = attention.HEAD_INFO  # the head slider's explanation (why it is off, without heads)
    grid: go.Figure | None = None  # every layer × head, thumbnails
    mask: go.Figure | None = None  # the mask pattern of ``layer``
    mask_help: str = ""

    @property
    def ok(self) -> bool:
        return self.analysis is not None


def _message(status: str, *, layer: int = 0, head: int = 0, can_generate: bool = True) -> AnalyseResult:
    """A Run that shows only ``status`` (a problem); the sliders keep ``layer`` and ``head``."""
    return AnalyseResult(
        analysis=None, status=status, tokens_html=tokens_html([], []), attention=None,
        attention_help="", layer=layer, head=head, distribution=None, distribution_note="",
        can_generate=can_generate, generate_note="",
    )  # fmt: skip


def analyse(
    catalog: Catalog,
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
    draw: bool = True,
) -> AnalyseResult:
    """Tokenise ``text``, run the model once with tracing, and draw every view.

    ``layer``/``head`` (for an encoder-decoder: of ``attention_kind``), ``step`` (the translation
    step) and ``moe_layer`` are clamped into the new Run's range; the sampling settings only
    shape the first drawing of the distribution. Problems come back as a status message.
    ``draw=False`` leaves out the figures the page's script draws itself (attention, grid, mask,
    distribution, Δ): the page gets the numbers instead (``payload``).
    """
    layer, head = int(layer or 0), int(head or 0)
    try:
        entry = catalog.get(model_key)
    except UnknownModelError as e:
        return _message(error(md_escape(str(e))), layer=layer, head=head)
    can_gen, gen_note = generate_note(entry)
    if text is None or not str(text).strip():
        msg = error("Type some text first, then press Run.")
        return _message(msg, layer=layer, head=head, can_generate=can_gen)
    text, clipped = clip(text)
    ids, truncated_from = encode(entry, text)
    if not ids:
        return _message(error("This text produced no tokens."), layer=layer, head=head, can_generate=can_gen)

    started = time.perf_counter()
    try:
        run = traced_run(entry, ids)
    except (ValueError, RuntimeError) as e:  # e.g. a context limit the config did not state
        return _message(error(f"The model failed on this text: {md_escape(str(e))}"), can_generate=can_gen)
    elapsed = time.perf_counter() - started
    a = record(entry, text, ids, truncated_from, run, step)
    status, cut_note = _status(entry, a, elapsed)
    if clipped:
        status += "\n\n" + warn(clipped)
    return _draw(catalog, a, status, cut_note, (can_gen, gen_note), layer=layer, head=head, temperature=temperature,
                 top_k=top_k, top_p=top_p, attention_kind=attention_kind, moe_layer=moe_layer, draw=draw)  # fmt: skip


def _draw(catalog: Catalog, a: Analysis, status: str, cut_note: str, generation: tuple[bool, str], *, layer, head,
          temperature, top_k, top_p, attention_kind, moe_layer, draw=True) -> AnalyseResult:  # fmt: skip
    """Every view's first picture of the Run ``a`` (``draw=False``: only those the page's script does
    not draw), the sliders clamped into its ranges."""
    can_gen, gen_note = generation
    kind = a.kind(attention_kind if attention_kind in a.kinds else None)
    layer = clamp(layer, a.layer_count(kind))
    head = clamp(head, a.n_head)
    moe_layer = clamp(int(moe_layer or 0), a.routing.n_layer if a.routing else 0)
    try:
        dist_fig, dist_note = distribution(catalog, a, temperature, top_k, top_p) if draw else (None, "")
    except ValueError as e:
        dist_fig, dist_note = None, error(md_escape(str(e)))
    if a.translation is not None:
        strip = translation.tokens_html(a, note_text=cut_note)
    else:
        strip = tokens_html(a.labels, a.ids, focus=a.predict_at, note_text=cut_note)
    mask_fig, mask_help = attention.mask_figure(a, layer, kind) if draw else (None, "")
    return AnalyseResult(
        analysis=a,
        status=status,
        tokens_html=strip,
        attention=attention.attention_figure(a, layer, head, kind) if draw else None,
        attention_help=attention.attention_help(a, kind),
        layer=layer,
        head=head,
        distribution=dist_fig,
        distribution_note=dist_note,
        can_generate=can_gen,
        generate_note=gen_note,
        attention_kind=kind if a.translation is not None else None,
        step=a.predict_at if a.translation is not None else 0,
        delta=scan.delta_figure(a, layer) if draw else None,
        routing=routing.view(a, moe_layer),
        moe_layer=moe_layer,
        head_info=attention.head_info(a),
        grid=attention.grid_figure(a, layer, head, kind) if draw else None,
        mask=mask_fig,
        mask_help=mask_help,
    )


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
    cap = trace_cap(entry.config, min(context, PAGE_MAX_TOKENS))
    if n >= context:
        why = f"this model reads at most {n}"
    elif cap.message:  # a big model: its traced Run is cut shorter than the page's own limit
        why = f"this page analyses at most {n} for this model"
    else:
        why = f"this page analyses at most {n} (the model reads {context}, but the maps would be too big to draw)"
    status += "\n\n" + warn(
        f"Your text is {analysis.truncated_from} tokens long but {why}; only the first {n} were analysed."
        + (f" {md_escape(cap.message)}" if cap.message and n < context else "")
    )
    return status, f"cut to the first {n} of {analysis.truncated_from}"


def load_model(catalog: Catalog, name: str | None) -> tuple[str, str | None]:
    """Load ``name``, a folder of the server's models directory or a Hugging Face id -> (status
    markdown, its key or None).

    Only folders inside that directory and repositories in the server's Hugging Face cache resolve
    (downloaded only when the server allows it: ``Catalog.add_by_name``); every problem, a missing,
    broken or unsupported checkpoint included, comes back as a message."""
    try:
        entry = catalog.add_by_name(str(name or ""))
    except LoadError as e:
        return error(md_escape(str(e))), None
    return ok(f"Loaded **{md_escape(entry.label)}**; it is now in the model list."), entry.key
