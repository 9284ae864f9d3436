"""The Anatomy tab: the chosen model's blocks with this input's tensor shapes, the residual stream, and
how the model encodes positions (with what the position term does to one query's attention).

Drawn from the Explore tab's last Run (the session's ``Analysis``): every Run recomputes the tab
(``archplay.models.analysis.anatomy``: one traced forward pass for the shapes and the stream;
``...positions``: the encoding's numbers and two attention passes for the effect, with and without the
position term). The controls redraw only what they change: the number of positions the encoding
figure shows, and the layer, head and query of the effect.

"Clicking a part opens its view": clicking a box of the diagram (``CLICK_JS``) or choosing it in the
menu under the diagram (the parts that have a view of their own) switches to that tab in the page
(``OPEN_JS``: the tab button with the tab's id, no request), or scrolls to this tab's positions section. The family is never named here: what a
model has comes from the stacks, the encoding and the Run.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go
import torch

from archplay.models.analysis.anatomy import Stack, anatomy
from archplay.models.analysis.positions import Encoding, effect, encoding
from archplay.viz.anatomy import block_diagram, residual_figure
from archplay.viz.positions import effect_figure, encoding_figure

from . import steps
from .catalog import Catalog, Entry, UnknownModelError
from .explore import translation
from .follow import follow
from .guard import MODEL_EVENTS
from .messages import error, md_escape, note, ok, plural, quote
from .session import Analysis
from .sliders import check, clamp

RUN_FIRST = "Run a model on the Explore tab first: this tab draws that Run's model and text."
MAX_POSITIONS = 128  # the most positions the encoding figure shows
DEFAULT_POSITIONS = 32
POSITIONS_ID = "anatomy-positions"  # this tab's positions section: where a "positions" part leads
# The view a part opens (``Part.view``) -> the tab that shows it (its ``gr.Tab`` id) or this tab's section.
OPENS = {"attention": "steps", "gate": "steps", "scan": "steps", "positions": "positions"}
PLACES = {"steps": "the Inside a step tab", "ablate": "the Interventions tab", "positions": "Positions, below"}

HELP = (
    "The **diagram** is the model you ran on Explore, drawn from the embeddings down to the output, with the "
    "**shape of each tensor for your text** (batch, tokens, width). The parts inside the dashed frame form one "
    "block, repeated as many times as it says. The **blue line** is the *residual stream*: each sublayer reads "
    "it (through a norm), computes something, and **adds** its result back, so every layer writes into the same "
    "running sum. Hover a box for its details; a box marked ↗ has a view of its own: click it (or choose it "
    "in the menu under the diagram) to open it."
)
OPEN_HELP = (
    "Attention step by step, the experts' gate and the scan are on the **Inside a step** tab; "
    "switching heads or experts off is on **Interventions**; positions are right below."
)
RESIDUAL_HELP = (
    "**The residual stream.** Each cell is how much one layer *adds* to one token's stream, the length "
    "‖Δh‖ of what it writes. Below, the length ‖h‖ of the stream itself after each layer. A layer that "
    "writes little leaves that token mostly as it was; a long stream with small writes changes direction slowly."
)
ENCODING_HELP = {
    "learned": (
        "**Learned positions.** The model keeps one trained vector per position and adds it to each token's "
        "embedding, so the same word at position 3 and at position 30 enters the model as two different "
        "vectors. Left: the vectors themselves (one row per position). Right: how alike two positions' vectors "
        "are; neighbours usually look alike, which is how the model can tell near from far. Positions beyond "
        "the table's length do not exist for it."
    ),
    "sinusoidal": (
        "**Sinusoidal positions** (the original Transformer's). Instead of learning a vector per position, each "
        "position gets sines and cosines of many wavelengths, fast in the first dimensions and slow in the last, "
        "added to the embedding. Nothing is trained, and any two positions the same distance apart differ in "
        "the same way. Right: how alike two positions' vectors are."
    ),
    "rotary": (
        "**Rotary positions (RoPE).** Nothing is added to the embeddings. Inside every attention layer each "
        "query and key is split into pairs of numbers, and each pair is *rotated* by an angle proportional to "
        "the token's position: the first pairs turn fast (a full turn every few tokens), the last ones barely "
        "at all. Because both sides are rotated, the score q·k depends on how far apart the two tokens are, not "
        "on where they sit. Left: each pair's wavelength (log scale); right: how far a few pairs have turned."
    ),
    "alibi": (
        "**ALiBi.** Nothing is added to the embeddings. Each head subtracts from every score a penalty "
        "proportional to the distance between query and key: a steep slope makes a head look only nearby, a "
        "gentle one lets it look far. Left: the slope of each head (the chosen head in colour); right: that "
        "head's penalty for every query and key."
    ),
    "relative": (
        "**Relative position buckets** (T5). Each head learns one number per *distance bucket* (exact buckets "
        "for short distances, ever wider ones for long distances) and adds it to the score of every query and "
        "key that far apart, in either direction. Shown: the encoder's bias for every head (the decoder has a "
        "table of its own, looking only back)."
    ),
    "none": (
        "**No position term.** This model adds nothing for positions. A state-space model such as Mamba reads "
        "the tokens in order, so its causal convolution and the scan's running state already know what came "
        "first; a causal transformer without positions can only tell order from its mask (each token sees the "
        "ones before it)."
    ),
}


@dataclass
class Controls:
    """The effect's controls for a Run: the attention stack's layers and heads, the query menu."""

    n_layer: int
    n_head: int
    queries: list[tuple[str, int]]
    default_query: int
    positions: int  # the positions slider's value for this Run


@dataclass
class View:
    """Everything the tab shows for one Run (the figures None where there is nothing to draw)."""

    diagram: go.Figure | None = None
    residual: go.Figure | None = None
    encoding: go.Figure | None = None
    effect: go.Figure | None = None
    note: str = ""  # the anatomy's sentence, or why there is none
    effect_note: str = ""  # the effect's sentence, or why there is none
    positions_help: str = ""
    positions_drawn: bool = False  # whether the encoding has numbers to draw (not for "none")
    parts: list[tuple[str, str]] = field(default_factory=list)  # the "open" menu: (label, "tab|stack.part")
    controls: Controls | None = None


# --------------------------------------------------------------------------- the handlers


def anatomy_view(catalog: Catalog, analysis: Analysis | None, layer=0, head=0, query=None, positions=None, *,
                 fit: bool = False) -> View:  # fmt: skip
    """The whole tab for the session's Run: the diagram, the stream, the encoding and the effect.

    ``query`` None: the Run's own position (the last token, an encoder's mask); ``positions`` None: enough
    to cover the text. ``fit``: a new Run moves the layer and head into its range (and takes a value that is
    not a number as 0) instead of answering with a problem.
    """
    entry, problem = _entry(catalog, analysis)
    if entry is None:
        return View(note=problem)
    try:
        stacks = anatomy(entry.model, _ids(entry, analysis), **_model_kwargs(entry, analysis))
    except (ValueError, RuntimeError, KeyError, AttributeError) as e:  # a model the anatomy cannot read
        return View(note=error(f"No anatomy for {md_escape(entry.label)}: {md_escape(str(e))}"))
    labels = _stack_labels(analysis, stacks)
    title = f"{html.escape(entry.label, quote=False)}, on {plural(len(analysis.ids), 'token')}"
    diagram = block_diagram(stacks, title=f"Block anatomy: {title}")
    residual = residual_figure(stacks, labels, title=f"The residual stream: {title}") if labels else None
    c = controls(entry, analysis, stacks)
    if c is not None and fit:
        layer, head = clamp(_int_or(layer, 0), c.n_layer), clamp(_int_or(head, 0), c.n_head)
    query = c.default_query if c is not None and query is None else query
    if positions is None:
        positions = c.positions if c is not None else DEFAULT_POSITIONS
    enc_fig, enc_problem, kind = _encoding(entry, positions, head if c is not None else 0)
    eff_fig, eff_note = _effect(entry, analysis, stacks, layer, head, query) if c else (None, _no_attention(kind))
    drawn = kind != "none"  # nothing to draw: the help says so
    return View(diagram=diagram, residual=residual, encoding=enc_fig if drawn else None, effect=eff_fig,
                note=_summary(entry, analysis, stacks), effect_note=enc_problem or eff_note,
                positions_help=ENCODING_HELP.get(kind, ""), positions_drawn=drawn, parts=part_choices(stacks),
                controls=c)  # fmt: skip


def _entry(catalog: Catalog, analysis: Analysis | None) -> tuple[Entry | None, str]:
    """The Run's model, or None and the message to show instead (no Run yet; the model has gone)."""
    if analysis is None:
        return None, note(RUN_FIRST)
    try:
        return catalog.get(analysis.model_key), ""
    except UnknownModelError as e:
        return None, error(md_escape(str(e)))


def encoding_view(catalog: Catalog, analysis: Analysis | None, positions, head) -> tuple[go.Figure | None, str]:
    """The encoding figure alone (the positions slider, or the head for ALiBi and T5), and a problem if any."""
    entry, problem = _entry(catalog, analysis)
    if entry is None:
        return None, problem
    fig, problem, _ = _encoding(entry, positions, head)
    return fig, problem


def effect_view(catalog: Catalog, analysis: Analysis | None, layer, head, query) -> tuple[go.Figure | None, str]:
    """One query's attention with and without the position term, and its sentence (or the problem)."""
    entry, problem = _entry(catalog, analysis)
    if entry is None:
        return None, problem
    if _attention_layers(entry, analysis) == 0:
        return None, _no_attention(_kind(entry))
    return _effect(entry, analysis, None, layer, head, query)


def controls(entry: Entry, analysis: Analysis, stacks: list[Stack] | None = None) -> Controls | None:
    """The effect's controls for the Run (None when the model has no attention to switch positions off in)."""
    n_layer = _attention_layers(entry, analysis, stacks)
    if n_layer == 0:
        return None
    n_head = analysis.n_head or int(getattr(entry.config, "n_head", 0) or 0)
    if analysis.translation is not None:  # the source's middle: its last token is the end-of-text mark
        first = len(analysis.ids) // 2
    else:  # where the Explore tab predicts: the last token, an encoder's mask
        first = analysis.predict_at if analysis.predict_at is not None else len(analysis.ids) - 1
    default = clamp(first, len(analysis.ids))
    shown = min(MAX_POSITIONS, max(DEFAULT_POSITIONS, len(analysis.ids)))
    return Controls(n_layer=n_layer, n_head=max(n_head, 1), queries=query_choices(analysis.labels),
                    default_query=default, positions=shown)  # fmt: skip


def query_choices(labels: list[str]) -> list[tuple[str, int]]:
    """The query menu: "3 ‘ball’" (plain text: the menu shows it as such)."""
    return [(f"{i} ‘{label}’", i) for i, label in enumerate(labels)]


def part_choices(stacks: list[Stack]) -> list[tuple[str, str]]:
    """The "open" menu: each part with a view of its own once (label, "tab|stack.part"), then Interventions."""
    out, seen = [], set()
    for s, stack in enumerate(stacks):
        prefix = f"{_short(stack.name)} · " if len(stacks) > 1 else ""
        for j, part in enumerate([*stack.embed, *stack.block, *stack.out]):
            place = OPENS.get(part.view or "")
            if place is None:
                continue
            label = f"{'' if place == 'positions' else prefix}{part.name} → {PLACES[place]}"
            if label not in seen:
                seen.add(label)
                out.append((label, f"{place}|{s}.{j}"))
    if any(p.view in ("attention", "gate") for stack in stacks for p in stack.block):
        out.append((f"switch heads or experts off → {PLACES['ablate']}", "ablate|"))
    return out


# --------------------------------------------------------------------------- the parts


def _ids(entry: Entry, analysis: Analysis) -> torch.Tensor:
    return torch.tensor([analysis.ids], dtype=torch.long, device=entry.device)  # (1, T)


def _model_kwargs(entry: Entry, analysis: Analysis) -> dict:
    """A translation's decoder reads what it wrote, shifted right behind the start token."""
    t = analysis.translation
    if t is None:
        return {}
    return {"decoder_input_ids": torch.tensor([translation.decoder_inputs(entry, t.ids)], dtype=torch.long,
                                              device=entry.device)}  # fmt: skip


def _stack_labels(analysis: Analysis, stacks: list[Stack]) -> list[list[str]] | None:
    """One token label list per stack: the source's, then (a translation) what the decoder read."""
    labels = [analysis.labels] + ([analysis.translation.input_labels] if analysis.translation is not None else [])
    if len(labels) != len(stacks) or any(s.contribution is None for s in stacks):
        return None
    return labels


def _attention_layers(entry: Entry, analysis: Analysis, stacks: list[Stack] | None = None) -> int:
    """The layers of the first stack with self-attention (an encoder-decoder's encoder); 0 without attention. Where
    only some layers attend (a hybrid), those: the effect is asked of its n-th attention layer."""
    if analysis.blocks is not None:
        return len(analysis.blocks)
    if stacks is not None:
        return next((s.layers for s in stacks if any(p.kind == "attention" for p in s.block)), 0)
    return analysis.layer_count("encoder") if analysis.translation is not None else len(analysis.attentions or [])


def _kind(entry: Entry) -> str:
    return encoding(entry.model, 1).kind


def _encoding(entry: Entry, positions, head) -> tuple[go.Figure | None, str, str]:
    """(figure, problem or "", kind) of the model's position encoding over ``positions`` positions."""
    try:
        n = _int(positions, None, "positions shown")
        if not 1 <= n <= MAX_POSITIONS:
            raise ValueError(f"positions shown must be between 1 and {MAX_POSITIONS}, got {n}")
        enc: Encoding = encoding(entry.model, n)
        h = _int(head, 0, "head")
        heads = enc.bias.shape[0] if enc.bias is not None else None
        if heads is not None:
            check(h, heads, "head")
        return encoding_figure(enc, head=h if heads is not None else 0), "", enc.kind
    except ValueError as e:
        return None, error(md_escape(str(e))), ""


def _effect(entry: Entry, analysis: Analysis, stacks, layer, head, query) -> tuple[go.Figure | None, str]:
    try:
        c = controls(entry, analysis, stacks)
        layer = check(_int(layer, None, "layer"), c.n_layer, "layer")
        head = check(_int(head, None, "head"), c.n_head, "head")
        query = query_index(query, analysis.labels)
        e = effect(entry.model, _ids(entry, analysis), layer, head, query, kind="self",
                   **_model_kwargs(entry, analysis))  # fmt: skip
    except ValueError as e:
        return None, error(md_escape(str(e)))
    label = analysis.labels[query]
    where = "encoder " if analysis.translation is not None else ""
    if analysis.blocks is not None:  # only some layers attend (a hybrid): the model's own layer, and which it is
        where, layer = f"attention layer {layer} = ", analysis.blocks[layer]
    fig = effect_figure(e, analysis.labels, query, title=f"Query {query} ‘{html.escape(label, quote=False)}’, "
                        f"{where}layer {layer}, head {head}: attention with and without the position term")
    return fig, _effect_sentence(e, analysis.labels, query)


def query_index(query, labels: list[str]) -> int:
    """``query`` as a position: a number, a menu label "3 ‘ball’", or a token's text when only one token has it."""
    if isinstance(query, str) and "‘" in query:
        query = query.split(" ", 1)[0]  # the menu's label: its position first
    return steps.query_index(query, labels)


def _int_or(value, default: int) -> int:
    """``value`` as an int, or ``default`` when it is missing or not a whole number."""
    try:
        return _int(value, default)
    except ValueError:
        return default


def _int(value, default, name: str = "value") -> int:
    if value is None or value == "":
        if default is None:
            raise ValueError(f"choose a {name}")
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {str(value)[:40]!r}") from None
    if number != int(number):
        raise ValueError(f"{name} must be a whole number, got {str(value)[:40]!r}")
    return int(number)


# --------------------------------------------------------------------------- the sentences


def _summary(entry: Entry, analysis: Analysis, stacks: list[Stack]) -> str:
    """Per stack: its block in order, and where the residual stream grows most."""
    sentences = []
    for s in stacks:
        flow = " → ".join(p.name.removeprefix("+ ").replace("residual", "+") for p in s.block)
        line = f"**{md_escape(_short(s.name))}**: {plural(s.layers, 'block')} of {md_escape(flow)}"
        if s.contribution is not None and s.contribution.numel():
            per_layer = s.contribution.mean(dim=1)  # (L,)
            top = int(per_layer.argmax())
            stream = s.stream.mean(dim=1)  # (L+1,)
            line += (f"; layer {top + 1} writes the most into the stream (‖Δh‖ {float(per_layer[top]):.1f} on "
                     f"average), which grows from {float(stream[0]):.1f} to {float(stream[-1]):.1f}")  # fmt: skip
        sentences.append(line + ".")
    tokens = plural(len(analysis.ids), "token")
    return ok(f"{md_escape(entry.label)} on {tokens}. " + " ".join(sentences))


def _effect_sentence(e, labels: list[str], query: int) -> str:
    on, off = e.with_positions.float(), e.without_positions.float()
    moved = float((on - off).abs().sum()) / 2
    j_on, j_off = int(on.argmax()), int(off.argmax())
    text = (f"With the position term, query {query} {quote(labels[query])} looks most at key {j_on} "
            f"{quote(labels[j_on])} (**{float(on[j_on]):.2f}**); without it, at key {j_off} {quote(labels[j_off])} "
            f"(**{float(off[j_off]):.2f}**). The position term moves **{moved:.0%}** of its attention.")  # fmt: skip
    if moved < 0.005:
        text += " For this query the position term changes (almost) nothing."
    return ok(text)


def _no_attention(kind: str) -> str:
    return note("This model has no attention, so there is no score to add a position term to"
                + (": order enters through the causal convolution and the scan's running state." if kind == "none"
                   else "."))  # fmt: skip


def _short(name: str) -> str:
    """A stack's name without its explanation: "encoder (reads the input both ways)" -> "encoder"."""
    return name.split(" (", 1)[0]


# --------------------------------------------------------------------------- the page

# Going to a part's view: switch to the tab that shows it (the tab button carries the tab's id), or
# scroll to this tab's positions.
_GO = f"""(place) => {{
  if (place === "positions") {{
    const section = document.getElementById("{POSITIONS_ID}");
    if (section) section.scrollIntoView({{behavior: "smooth", block: "start"}});
  }} else if (place) {{
    const button = document.querySelector(`button[data-tab-id="${{place}}"]`);
    if (button) button.click();
  }}
}}"""
# Choosing a part in the menu goes there; then the menu is cleared so the same part can be chosen again.
OPEN_JS = f"""(choice) => {{
  ({_GO})((choice || "").split("|")[0]);
  return null;
}}"""
# Clicking a box of the diagram goes to its part's view (its point's customdata ends with the part's view);
# the pointer is a hand over a box that has one. Attached after each draw, once the plot is in the page.
CLICK_JS = f"""() => {{
  const places = {json.dumps(OPENS)}, go = {_GO};
  const view = (e) => {{
    const p = e && e.points && e.points[0];
    return p && p.customdata ? places[p.customdata[p.customdata.length - 1]] : undefined;
  }};
  let tries = 0;
  const attach = () => {{
    const gd = document.querySelector("#anatomy-diagram .js-plotly-plot");
    if (!gd || !gd.on || !gd._fullLayout) {{
      if (tries++ < 60) requestAnimationFrame(attach);
      return;
    }}
    const drag = () => gd.querySelector(".nsewdrag");
    gd.removeAllListeners("plotly_click");
    gd.removeAllListeners("plotly_hover");
    gd.removeAllListeners("plotly_unhover");
    gd.on("plotly_click", (e) => {{ const place = view(e); if (place) go(place); }});
    gd.on("plotly_hover", (e) => {{ const d = drag(); if (d) d.style.cursor = view(e) ? "pointer" : ""; }});
    gd.on("plotly_unhover", () => {{ const d = drag(); if (d) d.style.cursor = ""; }});
  }};
  attach();
}}"""


# A Run while this tab is hidden draws its plots at plotly's default width; each plot refits itself to
# its container whenever that changes size (the tab shown again, the window resized).
PLOTS = ("anatomy-diagram", "anatomy-residual", "anatomy-encoding", "anatomy-effect")
FIT_JS = """() => {
  for (const id of %s) {
    const gd = document.querySelector(`#${id} .js-plotly-plot`);
    if (!gd || gd._apFit || typeof ResizeObserver === "undefined") continue;
    const box = gd.parentElement;
    gd._apFit = new ResizeObserver(() => {
      const width = box.clientWidth;
      if (width && window.Plotly && gd._fullLayout && Math.abs(gd._fullLayout.width - width) > 2) {
        window.Plotly.Plots.resize(gd);
      }
    });
    gd._apFit.observe(box);
  }
}""" % list(PLOTS)


def build(catalog: Catalog, explore_ui: SimpleNamespace) -> SimpleNamespace:
    ui = SimpleNamespace()
    gr.Markdown("### Anatomy: the blocks, the residual stream and positions")
    gr.Markdown(HELP, elem_classes="ap-help")
    ui.note = gr.Markdown(note(RUN_FIRST), elem_id="anatomy-note")
    with gr.Column(elem_id="anatomy-blocks", visible=False) as ui.blocks:
        ui.diagram = gr.Plot(show_label=False, elem_id="anatomy-diagram")
        ui.open = gr.Radio([], value=None, label="Open a part", elem_id="anatomy-open")
        gr.Markdown(OPEN_HELP, elem_classes="ap-help")
        gr.Markdown(RESIDUAL_HELP, elem_classes="ap-help")
        ui.residual = gr.Plot(show_label=False, elem_id="anatomy-residual")
    with gr.Column(elem_id=POSITIONS_ID, visible=False) as ui.positions_box:
        gr.Markdown("#### Positions: how the model knows where each token is")
        ui.positions_help = gr.Markdown("", elem_id="anatomy-positions-help", elem_classes="ap-help")
        ui.positions = gr.Slider(2, MAX_POSITIONS, value=DEFAULT_POSITIONS, step=1, precision=0,
                                 label="Positions shown", elem_id="anatomy-n")  # fmt: skip
        ui.encoding = gr.Plot(show_label=False, elem_id="anatomy-encoding")
        with gr.Row(equal_height=False, elem_id="anatomy-effect-controls") as ui.effect_controls:
            ui.layer = gr.Slider(0, 1, value=0, step=1, precision=0, label="Layer", elem_id="anatomy-layer",
                                 min_width=160)  # fmt: skip
            ui.head = gr.Slider(0, 1, value=0, step=1, precision=0, label="Head", elem_id="anatomy-head",
                                info="also the bias shown for ALiBi and T5", min_width=160)  # fmt: skip
            ui.query = gr.Dropdown([], value=None, label="Query token", allow_custom_value=True,
                                   elem_id="anatomy-query", min_width=220)  # fmt: skip
        ui.effect_note = gr.Markdown("", elem_id="anatomy-effect-note")
        ui.effect = gr.Plot(show_label=False, elem_id="anatomy-effect")
    _wire(catalog, explore_ui, ui)
    return ui


def _wire(catalog: Catalog, explore_ui: SimpleNamespace, ui: SimpleNamespace) -> None:
    ranged = [ui.layer, ui.head, ui.query, ui.positions]
    shown = [ui.note, ui.blocks, ui.positions_box, ui.diagram, ui.residual, ui.open, ui.positions_help, ui.encoding,
             ui.effect_controls, ui.effect_note, ui.effect]  # fmt: skip

    def reset(analysis, layer, head, query, positions):
        """A new Run: the controls span it (layer and head kept where they fit), then the whole tab."""
        v = anatomy_view(catalog, analysis, layer, head, None, None, fit=True)
        c = v.controls
        drawn = v.diagram is not None
        out = {ui.note: v.note, ui.blocks: gr.update(visible=drawn), ui.positions_box: gr.update(visible=drawn),
               ui.diagram: v.diagram, ui.residual: v.residual, ui.open: gr.update(choices=v.parts, value=None),
               ui.positions_help: v.positions_help, ui.encoding: gr.update(value=v.encoding, visible=v.positions_drawn),
               ui.effect_controls: gr.update(visible=c is not None), ui.effect_note: v.effect_note,
               ui.effect: gr.update(value=v.effect, visible=c is not None)}  # fmt: skip
        if c is None:
            return {**out, **{x: gr.update() for x in ranged}, ui.positions: gr.update(visible=v.positions_drawn)}
        return {**out,
                ui.layer: gr.update(maximum=max(c.n_layer - 1, 1), value=clamp(_int_or(layer, 0), c.n_layer),
                                    interactive=c.n_layer > 1, label=steps.layer_label(analysis)),
                ui.head: gr.update(maximum=max(c.n_head - 1, 1), value=clamp(_int_or(head, 0), c.n_head),
                                   interactive=c.n_head > 1),
                ui.query: gr.update(choices=c.queries, value=c.default_query),
                ui.positions: gr.update(value=c.positions, visible=v.positions_drawn)}  # fmt: skip

    def redraw_effect(analysis, layer, head, query):
        fig, sentence = effect_view(catalog, analysis, layer, head, query)
        return {ui.effect: fig, ui.effect_note: sentence}

    def redraw_encoding(analysis, positions, head):
        fig, problem = encoding_view(catalog, analysis, positions, head)
        return {ui.encoding: fig, ui.effect_note: problem} if problem else {ui.encoding: fig}

    def redraw_head(analysis, layer, head, query, positions):
        fig, problem = encoding_view(catalog, analysis, positions, head)
        return {**redraw_effect(analysis, layer, head, query), ui.encoding: fig}

    model_run = dict(show_progress="hidden", trigger_mode="always_last", concurrency_id=MODEL_EVENTS)
    inputs = [explore_ui.state, *ranged]
    # Each Run, when this tab is open or opened.
    for drawn in follow(explore_ui, "anatomy", reset, inputs=inputs, outputs=[*shown, *ranged], api_name="anatomy",
                        **model_run):  # fmt: skip
        drawn.then(None, js=FIT_JS, show_progress="hidden", api_name=False).then(
            None, js=CLICK_JS, show_progress="hidden", api_name=False)  # fmt: skip
    gr.on(triggers=[ui.layer.input, ui.query.input], fn=redraw_effect,
          inputs=[explore_ui.state, ui.layer, ui.head, ui.query], outputs=[ui.effect, ui.effect_note],
          api_name=False, **model_run)  # fmt: skip
    ui.head.input(redraw_head, inputs=inputs, outputs=[ui.effect, ui.effect_note, ui.encoding], api_name=False,
                  **model_run)  # fmt: skip
    ui.positions.input(redraw_encoding, inputs=[explore_ui.state, ui.positions, ui.head],
                       outputs=[ui.encoding, ui.effect_note], api_name=False, show_progress="hidden",
                       trigger_mode="always_last")  # fmt: skip
    ui.open.input(None, inputs=[ui.open], outputs=[ui.open], js=OPEN_JS, show_progress="hidden", api_name=False)


__all__ = ["ENCODING_HELP", "View", "anatomy_view", "build", "controls", "effect_view", "encoding_view",
           "part_choices", "query_index"]  # fmt: skip
