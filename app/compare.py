"""The Compare tab: one text through two to four models side by side, and latency against length.

Each chosen model runs once on the text (traced, as on the Explore tab) and gets a panel: its
most telling map (attention averaged over the last layer's heads, a mixture of experts' router,
Mamba's hidden attention, T5's cross-attention), what it predicts, the surprisal of every token,
its parameters (total and active per token) and its measured latency. The panels stand in one row of
equal columns (four fit at 1024 px) and their surprisal charts share one y range, so bars compare.

The latency chart times untraced forward passes from 64 to 2048 tokens (``archplay.models.analysis.timing``);
the note under it gives each model's fitted log-log slope, measured, next to the asymptotic one of its
mechanism (2 for attention's T × T scores, 1 for a scan).
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
from archplay.models.analysis.timing import LENGTHS, Timing, forward_latency, growth, time_forward
from archplay.models.architectures.layers import count_parameters
from archplay.viz.attention import attention_heatmap
from archplay.viz.compare import fit_panel_map, latency_chart, shared_top, surprisal_bars

from . import memory
from .catalog import Catalog, Entry, UnknownModelError
from .explore import routing, scan
from .guard import HEAVY_EVENTS, MODEL_EVENTS, client_gone
from .messages import error, md_escape, note, ok, quote, warn
from .session import Analysis, record, traced_run
from .tokens import DEFAULT_TEXT, clip, encode, mask_id

MAX_MODELS = 4
SLOPE_MARGIN = 0.1  # a measured slope this far under its asymptotic one is "below" it
ASYMPTOTES = {2: "2 (attention)", 1: "1 (scan)"}
PANEL_MIN_WIDTH = 200  # px: four columns and their gaps fit in ~1000 px, one row at 1024 × 768
TITLE_HEIGHT = 150  # px: a panel's header of up to five short lines
PREDICTION_HEIGHT = 90  # px: the top five predictions, wrapped in a narrow column
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
    "log-log axes a line's slope is its growth exponent; the grey guides show slopes 1 and 2. Attention's "
    "T × T scores tend to slope 2 and a scan to slope 1 once the text is long enough, but at short lengths "
    "fixed per-call costs (weights, feed-forward layers, overheads) dominate and flatten every line: the "
    "note under the chart gives each model's measured slope. Hollow markers: beyond a model's own context, "
    "timed on a same-shaped copy with a longer position table (same arithmetic)."
)


@dataclass
class Panel:
    """One model's column in the comparison; ``message`` alone when it could not run."""

    key: str
    title: str  # markdown header: name, parameters, latency
    message: str = ""  # markdown: why there is nothing else
    view: go.Figure | None = None
    prediction: str = ""  # markdown
    surprisal: go.Figure | None = None  # drawn by ``compare`` once every panel's bits are known
    bits: list[float] = field(default_factory=list)  # per token, NaN where none
    labels: list[str] = field(default_factory=list)  # the tokens ``bits`` are for
    surprisal_title: tuple[str, str] = ("", "")  # (title, note)


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
    draw_surprisal(panels)
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
    p.bits, p.labels, p.surprisal_title = _surprisal(entry, a)
    return p


def draw_surprisal(panels: list[Panel]) -> None:
    """Each panel's surprisal chart, on one y range (the largest bits of all) and one span of token
    positions: side by side, the same bar height is the same surprise in every panel."""
    top = shared_top(p.bits for p in panels)
    positions = max((len(p.bits) for p in panels), default=0)
    for p in panels:
        if p.labels:
            title, note_ = p.surprisal_title
            p.surprisal = surprisal_bars(p.bits, p.labels, title=title, note=note_, y_max=top, positions=positions)


def _surprisal(entry: Entry, a: Analysis) -> tuple[list[float], list[str], tuple[str, str]]:
    """(bits per token, their labels, the chart's (title, note)) by what the family predicts."""
    if a.translation is not None:
        return _bits_of(a.logits, a.translation.ids), a.translation.labels, ("Surprisal of its translation", "")
    if entry.spec.objective == "masked":
        return _pseudo_bits(entry, a.ids), a.labels, ("Pseudo-surprisal", "each token masked in turn")
    return [math.nan, *_bits_of(a.logits[:-1], a.ids[1:])], a.labels, ("Surprisal per token", "")


def _title(entry: Entry, forward_ms: float | None, traced_ms: float | None) -> str:
    """The panel's header, one short fact a line: a ~230 px column wraps long lines unevenly."""
    total = count_parameters(entry.model)
    active = active_parameters(entry.model)
    name, _, shape = entry.label.partition(" — ")
    lines = [f"#### {md_escape(name)}", md_escape(shape or entry.family), f"{total / 1e6:.2f} M parameters"]
    if active != total:
        lines.append(f"{active / 1e6:.2f} M active per token")
    if forward_ms is not None:
        lines.append(f"forward {forward_ms:.1f} ms (traced {traced_ms:.0f} ms)")
    return lines[0] + "\n" + "  \n".join(lines[1:])


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
    """The model's most telling map of its last layer, the view its family has, fitted to a panel
    (short titles; the notes say what rows and columns are, in place of axis titles)."""
    if a.scan is not None:
        last = a.scan.n_layer - 1
        fig = scan.attention_figure(a.scan, a.labels, last)
        return fit_panel_map(fig, f"Hidden attention, layer {last}", f"mean |α| over {a.scan.d_inner} channels",
                             "row: output token, column: input")  # fmt: skip
    if a.routing is not None:
        r = a.routing
        return fit_panel_map(routing.heatmap(r, a.labels, r.n_layer - 1), f"Router, {r.layer_name(r.n_layer - 1)}",
                             f"p of each of {r.n_experts} experts; rings: the {r.top_k} run",
                             axis_on_top=True)  # fmt: skip
    if a.translation is not None:
        t = a.translation
        n = len(t.cross_attentions)
        fig = attention_heatmap(t.cross_attentions[-1].mean(0), t.labels, a.labels,  # (n, S)
                                query_title="translation token", key_title="source token")  # fmt: skip
        return fit_panel_map(fig, f"Cross-attention, layer {n - 1}",
                             "mean of heads; row: translation token, column: source")  # fmt: skip
    if a.attentions:
        n = len(a.attentions)
        fig = attention_heatmap(a.attentions[-1].mean(0), a.labels, a.labels)  # (T, T)
        return fit_panel_map(fig, f"Attention, layer {n - 1}, mean of heads", "row: query token, column: key")
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
    """The latency chart for the chosen models and a note with each one's measured log-log slope."""
    keys = [k for k in (keys or []) if k]
    if not keys:
        return None, error("Choose at least one model.")
    series, measured, errors = {}, {}, []
    for key in keys[:MAX_MODELS]:
        try:
            entry = catalog.get(key)
        except UnknownModelError as e:
            errors.append(error(md_escape(str(e))))
            continue
        timings = forward_latency(entry.model, LENGTHS, stop=client_gone)  # a visitor who left stops it
        series[entry.label] = ([t.length for t in timings], [t.ms for t in timings], [t.stretched for t in timings])
        measured[entry.label.partition(" — ")[0]] = (timings, asymptotic_slope(entry))
    chart = latency_chart(series)
    memory.trim()  # the stretched copies and 2,048-token activations are freed: give their pages back
    said = [ok(latency_note(measured))] if measured else []
    return chart, " ".join(said + errors)


def asymptotic_slope(entry: Entry) -> int | None:
    """The growth exponent a long enough text reaches: 2 where attention scores T × T pairs, 1 for a
    scan (one step per token); None for a family with neither view."""
    views = entry.spec.views
    return 2 if "attention" in views else 1 if "scan" in views else None


def latency_note(measured: dict[str, tuple[list[Timing], int | None]]) -> str:
    """What the chart measured: each model's fitted log-log slope (``growth``: 512 tokens up), and
    how it stands to its mechanism's asymptotic slope, said only as far as the numbers show it.

    ``measured[name] = (timings, asymptotic slope or None)``.
    """
    fitted = {name: (growth(timings), asym) for name, (timings, asym) in measured.items()}
    fitted = {name: (b, asym) for name, (b, asym) in fitted.items() if b is not None}
    if not fitted:
        return "Measured; too few lengths to fit a slope (it needs two from 512 tokens up)."
    longest = max(t.length for timings, _ in measured.values() for t in timings)
    listed = ", ".join(f"{md_escape(name)} {b:.2f}" for name, (b, _) in fitted.items())
    text = f"Measured log-log slopes, 512 to {longest} tokens: {listed}."
    below = {name for name, (b, asym) in fitted.items() if asym is not None and b < asym - SLOPE_MARGIN}
    if below and len(below) == len(fitted):
        kinds = " and ".join(str(ASYMPTOTES.get(a, a)) for a in sorted({fitted[n][1] for n in below}, reverse=True))
        return text + (" At these lengths fixed per-call costs (weights, feed-forward layers, overheads) still "
                       f"dominate, so the slopes are below the asymptotic {kinds}.")  # fmt: skip
    return text + _against_asymptotes(fitted, below)


def _against_asymptotes(fitted: dict[str, tuple[float, int | None]], below: set[str]) -> str:
    """Per mechanism, which models' slopes have reached its asymptotic one and which are still below."""
    out = []
    for a in sorted({asym for _, asym in fitted.values() if asym is not None}, reverse=True):
        kind = ASYMPTOTES.get(a, a)
        reached = [md_escape(n) for n, (_, k) in fitted.items() if k == a and n not in below]
        under = [md_escape(n) for n, (_, k) in fitted.items() if k == a and n in below]
        if reached:
            out.append(f"At or above the asymptotic {kind}: {', '.join(reached)}.")
        if under:
            out.append(f"Below the asymptotic {kind}, fixed per-call costs still dominating: {', '.join(under)}.")
    return "".join(" " + line for line in out)


# --------------------------------------------------------------------------- layout and wiring


def build(catalog: Catalog, demo: gr.Blocks) -> SimpleNamespace:
    ui = SimpleNamespace()
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
    with gr.Row(equal_height=False, elem_id="compare-panels"):
        ui.slots = [_slot(i) for i in range(MAX_MODELS)]
    gr.Markdown("### Latency against input length")
    gr.Markdown(LATENCY_HELP, elem_classes="ap-help")
    ui.measure = gr.Button("Measure latency (64 to 2048 tokens)", elem_id="compare-measure")
    ui.latency_plot = gr.Plot(show_label=False, elem_id="compare-latency")
    ui.latency_note = gr.Markdown("", elem_id="compare-latency-note")  # under the chart: what it measured

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


def _slot(i: int) -> SimpleNamespace:
    """Panel ``i``'s column: equal shares of one row (``PANEL_MIN_WIDTH`` lets four fit at 1024 px).

    The title and the prediction keep a minimum height, so the maps and the surprisal charts of
    panels whose text wraps differently still start level."""
    with gr.Column(visible=False, min_width=PANEL_MIN_WIDTH, elem_id=f"compare-slot-{i}") as column:
        slot = SimpleNamespace(column=column)
        slot.title = gr.Markdown("", min_height=TITLE_HEIGHT, elem_id=f"compare-title-{i}")
        slot.view = gr.Plot(show_label=False, elem_id=f"compare-view-{i}")
        slot.prediction = gr.Markdown("", min_height=PREDICTION_HEIGHT, elem_id=f"compare-prediction-{i}")
        slot.surprisal = gr.Plot(show_label=False, elem_id=f"compare-surprisal-{i}")
    return slot


def _slot_updates(slot: SimpleNamespace, p: Panel | None) -> dict:
    """One column of the comparison: a panel's title, map, prediction and surprisal, or hidden."""
    if p is None:
        return {slot.column: gr.update(visible=False), slot.title: "", slot.view: None, slot.prediction: "",
                slot.surprisal: None}  # fmt: skip
    title = p.title + ("\n\n" + p.message if p.message else "")
    return {slot.column: gr.update(visible=True), slot.title: title, slot.view: p.view, slot.prediction: p.prediction,
            slot.surprisal: p.surprisal}  # fmt: skip
