"""The Compare tab: one text through two to four models side by side, and latency against length.

Each chosen model runs once on the text (traced, as on the Explore tab) and gets a panel: its
most telling map (attention averaged over the last layer's heads, a mixture of experts' router,
Mamba's hidden attention, T5's cross-attention), what it predicts, the surprisal of every token,
its parameters (total and active per token) and its measured latency. The latency chart times
untraced forward passes from 64 to 2048 tokens (``archplay.models.analysis.timing``), where attention's T × T
scores show up as a steeper line than the state-space model's scan.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go
import torch

from archplay.models.analysis.card import active_parameters
from archplay.models.analysis.timing import LENGTHS, forward_latency, growth, time_forward
from archplay.models.architectures.layers import count_parameters
from archplay.viz.attention import attention_heatmap
from archplay.viz.compare import latency_chart, surprisal_bars

from . import memory
from .catalog import Catalog, Entry, UnknownModelError
from .explore import routing, scan
from .guard import HEAVY_EVENTS, MODEL_EVENTS, client_gone
from .messages import error, md_escape, note, ok, quote, warn
from .session import Analysis, record, traced_run
from .tokens import DEFAULT_TEXT, clip, encode, mask_id

MAX_MODELS = 4
PSEUDO_LIMIT = 128  # an encoder's surprisal masks every token in turn: one batch row per token

HELP = (
    "The same text through several architectures. **Surprisal** is −log₂ of the probability the model "
    "gave each actual token before seeing it (causal models; an encoder's is *pseudo*-surprisal: each "
    "token masked in turn; T5's is over its own translation): low bars, no surprise. "
    "**Parameters**: a mixture of experts holds more than it runs per token. **Latency** is one "
    "untraced forward pass over this text on this machine."
)
LATENCY_HELP = (
    "Forward latency of the chosen models from 64 to 2048 tokens (median of 3, untraced). On these "
    "log-log axes the slope is the growth exponent: attention's T × T scores bend its line towards "
    "slope 2 as the text grows, while Mamba's scan stays at slope 1. Hollow markers: beyond a model's "
    "own context, timed on a same-shaped copy with a longer position table (same arithmetic)."
)


@dataclass
class Panel:
    """One model's column in the comparison; ``message`` alone when it could not run."""

    key: str
    title: str  # markdown header: name, parameters, latency
    message: str = ""  # markdown: why there is nothing else
    view: go.Figure | None = None
    prediction: str = ""  # markdown
    surprisal: go.Figure | None = None
    bits: list[float] = field(default_factory=list)  # per token, NaN where none


def compare(catalog: Catalog, keys, text: str | None) -> tuple[str, list[Panel]]:
    """Run ``text`` through each model in ``keys`` (1 to 4) -> (status markdown, panels)."""
    keys = [k for k in (keys or []) if k]
    if not keys:
        return error("Choose at least one model to compare."), []
    if len(keys) > MAX_MODELS:
        return error(f"Compare shows at most {MAX_MODELS} models at once; {len(keys)} were chosen."), []
    if text is None or not str(text).strip():
        return error("Type some text first, then press Compare."), []
    text, clipped = clip(text)
    panels = [panel(catalog, key, text) for key in keys]
    failed = sum(1 for p in panels if p.message)
    status = ok(f"Compared {len(panels) - failed} model{'s' if len(panels) - failed != 1 else ''} on the same text.")
    if clipped:
        status += " " + warn(clipped)
    if failed:
        status += " " + note(f"{failed} could not run; its panel says why.")
    return status, panels


def panel(catalog: Catalog, key: str, text: str) -> Panel:
    try:
        entry = catalog.get(key)
    except UnknownModelError as e:
        return Panel(key, f"#### {md_escape(str(key))}", message=error(md_escape(str(e))))
    ids, cut_from = encode(entry, text)
    if not ids:
        return Panel(key, _title(entry, None, None), message=error("This text produced no tokens."))
    started = time.perf_counter()
    try:
        run = traced_run(entry, ids)
        traced_ms = (time.perf_counter() - started) * 1000
        forward_ms = time_forward(entry.model, len(ids), repeats=3)
    except (ValueError, RuntimeError) as e:
        return Panel(key, _title(entry, None, None), message=error(f"The model failed: {md_escape(str(e))}"))
    a = record(entry, text, ids, cut_from, run)
    p = Panel(key, _title(entry, forward_ms, traced_ms), view=_view(a), prediction=_prediction(entry, a))
    if cut_from is not None:
        p.prediction += "\n\n" + note(f"Cut to the first {len(ids)} of {cut_from} tokens.")
    p.bits, shown, title = _surprisal(entry, a)
    p.surprisal = surprisal_bars(p.bits, shown, title=title)
    return p


def _surprisal(entry: Entry, a: Analysis) -> tuple[list[float], list[str], str]:
    """(bits per token, their labels, the chart's title) by what the family predicts."""
    if a.translation is not None:
        return _bits_of(a.logits, a.translation.ids), a.translation.labels, "Surprisal of its translation"
    if entry.spec.objective == "masked":
        return _pseudo_bits(entry, a.ids), a.labels, "Pseudo-surprisal (each token masked in turn)"
    return [math.nan, *_bits_of(a.logits[:-1], a.ids[1:])], a.labels, "Surprisal per token"


def _title(entry: Entry, forward_ms: float | None, traced_ms: float | None) -> str:
    total = count_parameters(entry.model)
    active = active_parameters(entry.model)
    params = f"{total / 1e6:.2f} M parameters"
    if active != total:
        params += f", {active / 1e6:.2f} M active per token"
    line = f"#### {md_escape(entry.label)}\n{entry.family} · {params}"
    if forward_ms is not None:
        line += f" · forward {forward_ms:.1f} ms (traced run {traced_ms:.0f} ms)"
    return line


def _bits_of(logits: torch.Tensor, targets: list[int]) -> list[float]:
    """−log₂ p(target_t) under row t of ``logits`` (n, V)."""
    if not targets:
        return []
    logp = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(targets)), torch.tensor(targets)]
    return (-logp / math.log(2)).tolist()


@torch.inference_mode()
def _pseudo_bits(entry: Entry, ids: list[int]) -> list[float]:
    """An encoder's pseudo-surprisal: token t masked (row t of one batch), −log₂ p(token t)."""
    mask = mask_id(entry.tokenizer)
    if mask is None or len(ids) > PSEUDO_LIMIT:
        return [math.nan] * len(ids)
    T = len(ids)
    batch = torch.tensor([ids] * T, device=entry.device)
    batch[torch.arange(T), torch.arange(T)] = mask
    logits = entry.model(batch).logits[torch.arange(T), torch.arange(T)].float().cpu()  # (T, V)
    bits = _bits_of(logits, ids)
    # Specials around the text (<cls>, <sep>) are no words to predict: they decode to nothing.
    return [math.nan if entry.tokenizer.decode([i]) == "" else b for i, b in zip(ids, bits)]


def _view(a: Analysis) -> go.Figure | None:
    """The model's most telling map of its last layer: the view its family has."""
    if a.scan is not None:
        return scan.attention_figure(a.scan, a.labels, a.scan.n_layer - 1)
    if a.routing is not None:
        return routing.heatmap(a.routing, a.labels, a.routing.n_layer - 1)
    if a.translation is not None:
        t = a.translation
        n = len(t.cross_attentions)
        return attention_heatmap(t.cross_attentions[-1].mean(0), t.labels, a.labels,  # (n, S)
                                 title=f"Cross-attention, layer {n - 1}, mean of heads",
                                 query_title="translation token", key_title="source token")  # fmt: skip
    if a.attentions:
        n = len(a.attentions)
        return attention_heatmap(a.attentions[-1].mean(0), a.labels, a.labels,  # (T, T)
                                 title=f"Attention, layer {n - 1}, mean of heads")  # fmt: skip
    return None


def _prediction(entry: Entry, a: Analysis) -> str:
    if a.translation is not None:
        return f"**Translation:** {md_escape(a.translation.text) or '(empty)'}"
    if entry.spec.objective == "masked":
        if a.predict_at is None:
            return note("No mask in the text: add one to see what this encoder would fill in.")
        what = f"Fills the mask at position {a.predict_at} with"
    else:
        what = "Next token"
    probs = torch.softmax(a.logits[a.predict_at].float(), -1)
    top = torch.topk(probs, 5)
    names = entry.tokenizer.tokens(top.indices.tolist())
    items = ", ".join(f"{quote(n)} {float(p):.0%}" for n, p in zip(names, top.values))
    return f"**{what}:** {items}"


def latency(catalog: Catalog, keys) -> tuple[go.Figure | None, str]:
    """The latency chart for the chosen models and a note with each one's fitted growth exponent."""
    keys = [k for k in (keys or []) if k]
    if not keys:
        return None, error("Choose at least one model.")
    series, notes = {}, []
    for key in keys[:MAX_MODELS]:
        try:
            entry = catalog.get(key)
        except UnknownModelError as e:
            notes.append(error(md_escape(str(e))))
            continue
        timings = forward_latency(entry.model, LENGTHS, stop=client_gone)  # a visitor who left stops it
        series[entry.label] = ([t.length for t in timings], [t.ms for t in timings], [t.stretched for t in timings])
        b = growth(timings)
        if b is not None:
            notes.append(f"{md_escape(entry.label)}: time ∝ length^{b:.2f} from 512 tokens up")
    chart = latency_chart(series)
    memory.trim()  # the stretched copies and 2,048-token activations are freed: give their pages back
    return chart, ok("Measured. ") + "; ".join(notes)


# --------------------------------------------------------------------------- layout and wiring


def build(catalog: Catalog, demo: gr.Blocks) -> SimpleNamespace:
    ui = SimpleNamespace(slots=[])
    keys = catalog.keys()
    default = [k for k in ("gpt", "mamba") if k in keys] or keys[:2]
    gr.Markdown("### Compare architectures on the same text")
    gr.Markdown(HELP, elem_classes="ap-help")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui.text = gr.Textbox(value=DEFAULT_TEXT, label="Text", lines=2, elem_id="compare-text")
        with gr.Column(scale=2, min_width=260):
            ui.models = gr.CheckboxGroup(catalog.choices(), value=default, label=f"Models (up to {MAX_MODELS})",
                                         elem_id="compare-models")  # fmt: skip
            ui.run = gr.Button("Compare", variant="primary", elem_id="compare-run")
    ui.status = gr.Markdown("", elem_id="compare-status")
    with gr.Row(equal_height=False):
        for i in range(MAX_MODELS):
            with gr.Column(visible=False, min_width=300, elem_id=f"compare-slot-{i}") as column:
                slot = SimpleNamespace(column=column)
                slot.title = gr.Markdown("", elem_id=f"compare-title-{i}")
                slot.view = gr.Plot(show_label=False, elem_id=f"compare-view-{i}")
                slot.prediction = gr.Markdown("", elem_id=f"compare-prediction-{i}")
                slot.surprisal = gr.Plot(show_label=False, elem_id=f"compare-surprisal-{i}")
            ui.slots.append(slot)
    gr.Markdown("### Latency against input length")
    gr.Markdown(LATENCY_HELP, elem_classes="ap-help")
    ui.measure = gr.Button("Measure latency (64 to 2048 tokens)", elem_id="compare-measure")
    ui.latency_note = gr.Markdown("", elem_id="compare-latency-note")
    ui.latency_plot = gr.Plot(show_label=False, elem_id="compare-latency")

    def run(models, text):
        status, panels = compare(catalog, models, text)
        updates = {ui.status: status}
        for i, slot in enumerate(ui.slots):
            updates |= _slot_updates(slot, panels[i] if i < len(panels) else None)
        return updates

    outputs = [ui.status]
    for s in ui.slots:
        outputs += [s.column, s.title, s.view, s.prediction, s.surprisal]
    ui.run.click(run, inputs=[ui.models, ui.text], outputs=outputs, api_name="compare", concurrency_id=MODEL_EVENTS)
    ui.measure.click(lambda models: latency(catalog, models), inputs=[ui.models],
                     outputs=[ui.latency_plot, ui.latency_note], api_name="latency", concurrency_id=HEAVY_EVENTS,
                     concurrency_limit=1)  # fmt: skip
    return ui


def _slot_updates(slot: SimpleNamespace, p: Panel | None) -> dict:
    """One column of the comparison: a panel's title, map, prediction and surprisal, or hidden."""
    if p is None:
        return {slot.column: gr.update(visible=False), slot.title: "", slot.view: None, slot.prediction: "",
                slot.surprisal: None}  # fmt: skip
    title = p.title + ("\n\n" + p.message if p.message else "")
    return {slot.column: gr.update(visible=True), slot.title: title, slot.view: p.view, slot.prediction: p.prediction,
            slot.surprisal: p.surprisal}  # fmt: skip
