"""The Explore page: layout and wiring around the pure handlers of the ``explore`` modules.

Events and their API names (a script can drive them with ``gradio_client``; parameters after
the first ones are optional and default to the page's initial values):

* ``analyse``        (model, text, layer, head, temperature, top_k, top_p, attention_kind, step, moe_layer)
                     → the one model run (an encoder-decoder also translates); returns status,
                     tokens, attention figure, help, layer, head, distribution figure and note,
                     generate button, generate note, then attention kind, translation, step,
                     Δ figure, routing section, MoE layer, routing chips, routing figure, load figure,
                     routing note, then grid, mask figure, mask help, position, sample figure and note
                     (``analyse_outputs``: the handler returns them as a dict keyed by component)
* ``attention``      (layer, head, attention_kind) → the heatmap of that layer and head (of that
                     kind, for an encoder-decoder; the hidden attention, for a state-space model)
* ``attention_kind`` (attention_kind, layer, head) → layer (clamped into the kind's range),
                     heatmap, help
* ``distribution``   (temperature, top_k, top_p, step) → the sampling figure and a summary, from
                     the cached logits; ``step`` is an encoder-decoder's translation step
* ``position``       (position, temperature, top_k, top_p) → the prediction at that position, from now on
* ``sample_once``, ``sample_many`` (temperature, top_k, top_p, step, seed) → a histogram of draws
* ``grid``           (layer, head, attention_kind) → every layer × head, the mask figure and its help
* ``routing``        (moe_layer) → a mixture of experts' routing chips, heatmap, load figure, note
* ``corpus_routing`` (moe_layer) → that MoE layer over the validation stories
* ``delta``          (layer) → a state-space model's step size Δ per token
* ``load_model``     (folder) → a checkpoint from the server's models directory, or a Hugging Face
                     id from its cache (downloaded only with ``--allow-downloads``), joins the list
* ``generate``       (model, text, max_new_tokens, temperature, top_k, top_p, seed) → streamed
                     text (an encoder-decoder: a sampled translation)

Every event but ``analyse`` and ``generate`` redraws from the session's cached Run, never
calling the model. Per-session state is one ``gr.State`` holding the last
``session.Analysis``; models stay in the shared ``Catalog``. Which controls a model gets
is its family's registry entry's word (``Family.views``, ``objective``, ``has_heads``).

The page itself uses these for scripts only: its Run (a private event) ships a ``payload``
(``explore.payload``) and its script, ``page.js``, redraws the attention, grid, mask, Δ, the
distribution and samples from it in the browser; another position, step, attention kind or (for a
big model) layer is one small private request for more numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from ..catalog import Catalog, Entry
from ..guard import MODEL_EVENTS
from ..messages import error, md_escape, warn
from ..session import Analysis
from ..sliders import check
from ..tokens import DEFAULT_TEXT, mask_token, tokens_html
from . import attention, generation, payload, routing, run, sampling, scan, translation, truth
from .run import AnalyseResult

INTRO = """
Type a sentence, pick a model and press **Run**. The model reads your text once and archplay
shows what happened inside: how the text was cut into **tokens**, where each token **looked**
while it was being processed (attention), and which token the model would **pick next** and
how temperature, top-k and top-p reshape that choice. Each architecture adds its own view:
**T5** translates your text and shows its encoder, decoder and cross-attention; the
**mixture of experts** shows which experts each token was sent to; **Mamba**, which has no
attention, shows the attention hidden in its recurrence. The sliders redraw instantly from
that one run; **Generate** lets the model keep writing.
"""

SAMPLING_HELP = (
    "Temperature divides the model's scores: below 1 sharpens the choice, above 1 flattens it. "
    "Top-k keeps only the k likeliest tokens; top-p keeps the likeliest until together they hold p. "
    "Bars: raw → after temperature → final (what is actually sampled)."
)
STEP_INFO = "which translation token's candidates (0 = the first)"
TRANSLATION_INFO = f"T5 translates into a language invented for the story world: {translation.LANGUAGE}."
POSITION_INFO = "whose prediction: a decoder's for the next token, an encoder's for this one"
GRID_HELP = (
    "Each small map is one layer (row) and head (column), shrunk to at most 32 × 32 cells by "
    "averaging; the framed one is the layer and head chosen above, shown full size (click a map to "
    "choose it). Heads of one "
    "layer often split the work: one looks at the previous token, one at the start, one at a name. "
    "The mask is the rule the architecture imposes before any learning: who *may* look at whom."
)

# The page's script: redraws from a Run's payload, state in the address, theme, export, grid clicks.
PAGE_JS = (Path(__file__).with_name("page.js")).read_text(encoding="utf-8")

EXAMPLES = [
    DEFAULT_TEXT,
    "Sara calls Paul. He has a pink puzzle. Next Paul plays with",
    "One day, Sam is angry. Then he reads a green map. Sam holds the",
]

CSS = """
.ap-title h2 { margin: 0 0 2px; font-size: 1.25em; }
.ap-view-title h3 { margin: 0; font-size: 1.05em; }
.ap-top { gap: 8px; }
/* a plot with nothing drawn yet takes no room (no empty placeholder boxes) */
.ap-plot:has(.empty), .ap-plot:not(:has(.js-plotly-plot)) { display: none !important; }
.ap-export { position: absolute; top: 2px; left: 6px; z-index: 5; display: flex; gap: 4px; opacity: 0.35; }
.ap-export:hover, .ap-export:focus-within { opacity: 1; }
.ap-export button { font-size: 11px; line-height: 1; padding: 3px 6px; border-radius: 4px; cursor: pointer;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-primary); color: var(--body-text-color); }
.ap-intro p { max-width: 95ch; }
.ap-tokens { display: flex; flex-wrap: wrap; gap: 5px 4px; max-height: 96px; overflow-y: auto;
  padding: 4px 2px; font-family: var(--font-mono); font-size: 0.95em; line-height: 1.2; }
.ap-tok { position: relative; display: inline-flex; align-items: baseline; gap: 3px;
  padding: 3px 7px; border-radius: 6px; white-space: pre;
  background: var(--color-accent-soft); color: var(--body-text-color);
  border: 1px solid var(--border-color-primary); cursor: default; }
.ap-tok:nth-child(even) { background: var(--background-fill-secondary); }
.ap-tok:hover { border-color: var(--color-accent); }
.ap-tok .ap-idx { font-size: 0.68em; color: var(--body-text-color-subdued); }
.ap-tok.ap-focus { border: 2px solid var(--color-accent); }
.ap-tok.ap-exp { border-width: 2px; }
.ap-tokens-meta { margin-top: 4px; font-size: 0.85em; color: var(--body-text-color-subdued); }
.ap-strip-title { margin: 6px 0 2px; font-size: 0.85em; font-weight: 600; color: var(--body-text-color-subdued); }
.ap-legend { display: flex; flex-wrap: wrap; gap: 4px 12px; margin-top: 6px; font-size: 0.85em; }
.ap-legend-item { display: inline-flex; align-items: center; gap: 4px; }
.ap-swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px; }
.ap-empty { color: var(--body-text-color-subdued); font-family: var(--font); }
.ap-help { font-size: 0.92em; color: var(--body-text-color-subdued); }
.ap-status { min-height: 1.6em; }
.ap-gen-text { font-family: var(--font-mono); white-space: pre-wrap; line-height: 1.7; }
.ap-gen { border-radius: 3px; padding: 1px 0; color: #111827; }
.ap-gen-legend { margin-top: 6px; font-size: 0.85em; color: var(--body-text-color-subdued); }
.ap-gen-legend span { color: #111827; padding: 0 4px; border-radius: 3px; }
"""


def default_text_for(entry: Entry) -> str:
    """The story sentence to continue, or for a masked model the same story with a blank to fill."""
    mask = mask_token(entry.tokenizer)
    if entry.spec.objective == "masked" and mask is not None:
        return f"Sara has a pink letter. Then Sara reads her {mask}."
    return DEFAULT_TEXT


def examples_for(catalog: Catalog, entry: Entry | None = None) -> list[str]:
    """The example texts for ``entry`` (the page's model when None): the story sentences, and for
    a masked model with a mask token the same kind with a blank to fill (in its own spelling)."""
    entry = entry or catalog.get(catalog.default_key)
    out = list(EXAMPLES)
    mask = mask_token(entry.tokenizer)
    if entry.spec.objective == "masked" and mask is not None:
        out.insert(0, f"Ben finds a small blue kite. He plays {mask} the kite.")
    return out


def example_choices(examples: list[str]) -> list[tuple[str, str]]:
    """The example menu's choices: a prompt to pick one (no text), then the examples."""
    return [("Try an example…", ""), *((e, e) for e in examples)]


def load_info(catalog: Catalog) -> str:
    """The load box's hint: what a typed name may be on this server."""
    where = ["a folder inside the server's --models-dir"] if catalog.models_dir is not None else []
    where.append("a Hugging Face id ORG/NAME[@REVISION]" + ("" if catalog.allow_downloads else " the server has cached"))
    return " or ".join(where)


def build(catalog: Catalog, demo: gr.Blocks) -> SimpleNamespace:
    """Render the page inside the current Blocks context, wire its events, return the components."""
    ui = layout(catalog)
    wire(catalog, demo, ui)
    return ui


def layout(catalog: Catalog) -> SimpleNamespace:
    """Create the components (no events); they are returned by name in a namespace.

    One screen first: the text, the model and Run on one row, the tokens, then attention and the
    next token side by side; every other view below them, the rarer ones folded."""
    default = catalog.get(catalog.default_key)
    views = default.spec.views
    n_layer, n_head = default.config.n_layer, getattr(default.config, "n_head", 1)
    ui = SimpleNamespace()

    startup = "\n\n".join(warn(md_escape(e)) for e in catalog.errors)
    ui.state = gr.State(None)  # session.Analysis | None: the last Run of this session
    ui.draws = gr.State(0)  # the API's sample count per session: each call draws afresh
    # What the page's script redraws from (``payload``): never shown, never read back by the server.
    ui.payload = gr.JSON(None, visible=False, elem_id="payload")
    ui.vocab = gr.JSON(None, visible=False, elem_id="vocab")  # every token's label, once per model
    ui.more = gr.JSON(None, visible=False, elem_id="more")  # other attention maps (a kind, a layer)
    ui.row = gr.JSON(None, visible=False, elem_id="row")  # the logits row of another position or step
    ui.need = gr.Textbox("", visible=False, elem_id="need")  # a layer the Run did not ship
    ui.api = gr.Button(visible=False, elem_id="api-only")  # the trigger of the API-only events

    gr.Markdown("## archplay — look inside a language model", elem_classes="ap-title")
    with gr.Row(equal_height=False, elem_classes="ap-top"):
        with gr.Column(scale=5, min_width=320):
            ui.text = gr.Textbox(
                value=default_text_for(default), label="Text", lines=2, max_lines=6, elem_id="text",
                placeholder="Type a sentence…", info="Shift+Enter runs it too.",
            )  # fmt: skip
        with gr.Column(scale=2, min_width=240):
            ui.model = gr.Dropdown(
                choices=catalog.choices(), value=catalog.default_key, label="Model", elem_id="model",
                info="The built-ins were trained on a synthetic story world: try its kind of sentences.",
            )  # fmt: skip
            ui.run = gr.Button("Run", variant="primary", elem_id="run")
    with gr.Row(equal_height=False, elem_classes="ap-top"):
        with gr.Column(scale=5, min_width=320):
            ui.example = gr.Dropdown(example_choices(examples_for(catalog, default)), value="", label="Try an example",
                                     show_label=False, container=False, elem_id="example")  # fmt: skip
        with gr.Column(scale=2, min_width=240):
            with gr.Accordion("What am I looking at?", open=False, elem_id="intro"):
                gr.Markdown(INTRO, elem_classes="ap-intro")
            with gr.Accordion("Load a checkpoint", open=False, visible=catalog.loads_by_name,
                              elem_id="load-section"):  # fmt: skip
                ui.folder = gr.Dropdown(catalog.folders(), value=None, allow_custom_value=True,
                                        label="Folder or Hugging Face id", info=load_info(catalog),
                                        elem_id="folder")  # fmt: skip
                ui.load = gr.Button("Load", elem_id="load")
    ui.status = gr.Markdown(startup, label="Status", elem_id="status", elem_classes="ap-status")
    ui.tokens = gr.HTML(tokens_html([], []), label="Tokens", show_label=False, container=False, padding=False,
                        elem_id="tokens")  # fmt: skip
    ui.translation = gr.Textbox(
        label="Translation (greedy)", info=TRANSLATION_INFO, lines=1, interactive=False, buttons=["copy"],
        visible=False, elem_id="translation",
    )  # fmt: skip  (the API's; the page shows the translation in the tokens strip)

    with gr.Row(equal_height=False, elem_classes="ap-views"):
        with gr.Column(scale=1, min_width=400, elem_classes="ap-view"):
            gr.Markdown("### Attention: where each token looks", elem_classes="ap-view-title")
            ui.attention_kind = gr.Radio(
                translation.KIND_CHOICES, value=translation.DEFAULT_KIND, label="Attention kind", show_label=False,
                visible="translation" in views, elem_id="attention-kind",
            )  # fmt: skip
            ui.attention_plot = gr.Plot(label="Attention", show_label=False, elem_id="attention-plot",
                                        elem_classes="ap-plot")  # fmt: skip
            with gr.Row(equal_height=False):
                ui.layer = gr.Slider(0, max(n_layer - 1, 1), value=0, step=1, precision=0, label="Layer",
                                     info="0 = nearest the input", elem_id="layer", min_width=150)  # fmt: skip
                ui.head = gr.Slider(0, max(n_head - 1, 1), value=0, step=1, precision=0, label="Head",
                                    info=attention.HEAD_INFO, elem_id="head", min_width=150,
                                    visible=default.spec.has_heads)  # fmt: skip
            ui.delta_plot = gr.Plot(label="Step size Δ", show_label=False, visible="scan" in views,
                                    elem_id="delta-plot", elem_classes="ap-plot")  # fmt: skip
            ui.attention_help = gr.Markdown(attention.ATTENTION_HELP["causal"], label="Attention help",
                                            elem_id="attention-help", elem_classes="ap-help")  # fmt: skip
        with gr.Column(scale=1, min_width=400, elem_classes="ap-view"):
            gr.Markdown("### Next token: how sampling reshapes the choice", elem_classes="ap-view-title")
            ui.distribution_plot = gr.Plot(label="Distribution", show_label=False, elem_id="distribution-plot",
                                           elem_classes="ap-plot")  # fmt: skip
            with gr.Row(equal_height=False):
                ui.step = gr.Slider(0, 1, value=0, step=1, precision=0, label="Translation step", info=STEP_INFO,
                                    visible="translation" in views, elem_id="step", min_width=150)  # fmt: skip
                ui.position = gr.Slider(0, 1, value=0, step=1, precision=0, label="Position", info=POSITION_INFO,
                                        visible="translation" not in views, elem_id="position", min_width=150)  # fmt: skip
                ui.temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="Temperature", info="0 = greedy",
                                           elem_id="temperature", min_width=150)  # fmt: skip
            with gr.Row(equal_height=False):
                ui.top_k = gr.Slider(0, 200, value=0, step=1, precision=0, label="Top-k", info="0 = off",
                                     elem_id="top-k", min_width=150)  # fmt: skip
                ui.top_p = gr.Slider(0.01, 1, value=1.0, step=0.01, label="Top-p", info="1 = off",
                                     elem_id="top-p", min_width=150)  # fmt: skip
            ui.distribution_note = gr.Markdown("", label="Distribution summary", elem_id="distribution-note")
            ui.truth = gr.Markdown("", elem_id="truth-note")  # the story world's exact answer beside the model's
            gr.Markdown(SAMPLING_HELP, elem_classes="ap-help")
            with gr.Row():
                ui.sample_once = gr.Button("Sample once", elem_id="sample-once", size="sm")
                ui.sample_many = gr.Button(f"Sample {sampling.SAMPLE_COUNTS[1]} times", elem_id="sample-many",
                                           size="sm")  # fmt: skip
            ui.sample_note = gr.Markdown("", elem_id="sample-note")
            ui.sample_plot = gr.Plot(label="Samples", show_label=False, elem_id="sample-plot", elem_classes="ap-plot")

    with gr.Accordion("Every layer and head, and the mask pattern", open=False, elem_id="grid-section"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=400):
                ui.grid_plot = gr.Plot(label="All layers and heads", show_label=False, elem_id="grid-plot",
                                       elem_classes="ap-plot")  # fmt: skip
            with gr.Column(scale=2, min_width=300):
                ui.mask_plot = gr.Plot(label="Mask pattern", show_label=False, elem_id="mask-plot",
                                       elem_classes="ap-plot")  # fmt: skip
                ui.mask_help = gr.Markdown("", elem_id="mask-help", elem_classes="ap-help")
        gr.Markdown(GRID_HELP, elem_classes="ap-help")

    with gr.Column(visible="routing" in views, elem_id="routing-section") as ui.routing_section:
        gr.Markdown("### Experts: where the router sent each token")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                ui.moe_layer = gr.Slider(0, max(n_layer - 1, 1), value=0, step=1, precision=0, label="MoE layer",
                                         info="each layer has its own router", elem_id="moe-layer")  # fmt: skip
                gr.Markdown(routing.HELP, elem_classes="ap-help")
                ui.routing_note = gr.Markdown("", label="Routing summary", elem_id="routing-note")
            with gr.Column(scale=3, min_width=420):
                ui.routing_chips = gr.HTML("", label="Tokens by expert", show_label=True, container=True,
                                           padding=True, elem_id="routing-chips")  # fmt: skip
                with gr.Row(equal_height=False):
                    ui.routing_plot = gr.Plot(label="Router", show_label=False, scale=3, elem_id="routing-plot",
                                              elem_classes="ap-plot")  # fmt: skip
                    ui.load_plot = gr.Plot(label="Expert load", show_label=False, scale=2, elem_id="load-plot",
                                           elem_classes="ap-plot")  # fmt: skip
        ui.corpus_note = gr.Markdown("", elem_id="corpus-note", elem_classes="ap-help")
        with gr.Row(equal_height=False):
            ui.pos_plot = gr.Plot(label="Expert by part of speech", show_label=False, scale=3, elem_id="pos-plot",
                                  elem_classes="ap-plot")  # fmt: skip
            ui.corpus_load_plot = gr.Plot(label="Load over validation stories", show_label=False, scale=2,
                                          elem_id="corpus-load-plot", elem_classes="ap-plot")  # fmt: skip

    with gr.Accordion("Generate: let the model keep writing", open=True, elem_id="generate-section"):
        with gr.Row(equal_height=True):
            ui.max_new_tokens = gr.Slider(1, 256, value=48, step=1, precision=0, label="Max new tokens",
                                          elem_id="max-new-tokens")  # fmt: skip
            ui.seed = gr.Number(0, precision=0, minimum=0, label="Seed", info="same seed, same text (and samples)",
                                elem_id="seed")  # fmt: skip
            with gr.Column(min_width=160):
                ui.generate = gr.Button("Generate", variant="primary", elem_id="generate")
                ui.stop = gr.Button("Stop", variant="stop", elem_id="stop")
        ui.generate_note = gr.Markdown("", label="Generation note", elem_id="generate-note", elem_classes="ap-help")
        ui.generated = gr.Textbox(label="Generated text", info="Sampled with the temperature, top-k and top-p above.",
                                  lines=3, interactive=False, buttons=["copy"], elem_id="generated")  # fmt: skip
        ui.generated_html = gr.HTML("", label="New tokens by probability", show_label=True, container=True,
                                    padding=True, elem_id="generated-html")  # fmt: skip
        ui.generate_status = gr.Markdown("", label="Generation status", elem_id="generate-status",
                                         elem_classes="ap-help")  # fmt: skip
    return ui


# --------------------------------------------------------------------------- wiring


def analyse_outputs(ui: SimpleNamespace) -> list:
    """The components the API's ``analyse`` updates. Their order is the API's (``gradio_client`` gets
    the values in this order, the State left out): new ones are only ever appended."""
    return [
        ui.state, ui.status, ui.tokens, ui.attention_plot, ui.attention_help, ui.layer, ui.head,
        ui.distribution_plot, ui.distribution_note, ui.generate, ui.generate_note,
        # added with the encoder-decoder, MoE and state-space views
        ui.attention_kind, ui.translation, ui.step, ui.delta_plot, ui.routing_section, ui.moe_layer,
        ui.routing_chips, ui.routing_plot, ui.load_plot, ui.routing_note,
        # the grid, the mask and the position of the prediction shown
        ui.grid_plot, ui.mask_plot, ui.mask_help, ui.position, ui.sample_plot, ui.sample_note,
    ]  # fmt: skip


def run_outputs(ui: SimpleNamespace) -> list:
    """The components the page's Run updates: the figures are not among them (the page's script
    draws them from ``payload``), the examples for the model, the payload and the vocabulary are."""
    figures = {ui.attention_plot, ui.distribution_plot, ui.grid_plot, ui.mask_plot, ui.sample_plot}
    return [c for c in analyse_outputs(ui) if c not in figures] + [ui.payload, ui.vocab, ui.example]


def analyse_updates(ui: SimpleNamespace, r: AnalyseResult) -> dict:
    """``r`` as an update for each of ``analyse_outputs``: every family-specific view shown or hidden."""
    a: Analysis | None = r.analysis
    updates = {
        ui.state: a, ui.status: r.status, ui.tokens: r.tokens_html, ui.attention_plot: r.attention,
        ui.attention_help: r.attention_help, ui.distribution_plot: r.distribution,
        ui.distribution_note: r.distribution_note, ui.generate: gr.update(interactive=r.can_generate),
        ui.generate_note: r.generate_note, ui.grid_plot: r.grid, ui.mask_plot: r.mask, ui.mask_help: r.mask_help,
        ui.sample_plot: None, ui.sample_note: "",
    }  # fmt: skip
    if a is None:  # a message only: every drawing is cleared, the controls keep their place
        keep = gr.update()
        controls = (ui.layer, ui.head, ui.attention_kind, ui.step, ui.routing_section, ui.moe_layer, ui.position)
        updates |= {c: keep for c in controls}
        return updates | {ui.translation: "", ui.delta_plot: None, ui.routing_chips: "", ui.routing_plot: None,
                          ui.load_plot: None, ui.routing_note: ""}  # fmt: skip
    updates |= {
        ui.layer: index_slider(a.layer_count(r.attention_kind), r.layer),
        ui.head: index_slider(a.n_head, r.head, info=r.head_info, visible=a.spec.has_heads),
        ui.position: index_slider(len(a.ids), a.predict_at or 0, visible=a.translation is None),
        ui.delta_plot: gr.update(visible=a.scan is not None or a.hybrid, value=r.delta),
    }
    return updates | _translation_updates(ui, r) | _routing_updates(ui, r)


def run_updates(ui: SimpleNamespace, catalog: Catalog, r: AnalyseResult, previous: Analysis | None) -> dict:
    """``r`` for the page's Run (``run_outputs``): the payload instead of figures; the vocabulary
    labels only when the model changed (the page keeps them per model)."""
    updates = analyse_updates(ui, r)
    for c in (ui.attention_plot, ui.distribution_plot, ui.grid_plot, ui.mask_plot, ui.sample_plot):
        updates.pop(c)
    a = r.analysis
    updates[ui.delta_plot] = gr.update(visible=a is not None and (a.scan is not None or a.hybrid))
    labels_for = sampling.labels_for_run(catalog, a) if a is not None else None
    if a is not None:
        a.gold = truth.gold_cells(catalog, a)  # framed on the attention maps the page draws
    updates[ui.payload] = payload.explore_payload(labels_for, a, kind=r.attention_kind, layer=r.layer, position=None)
    same_model = a is not None and previous is not None and previous.model_key == a.model_key
    updates[ui.vocab] = gr.update() if same_model or a is None or a.logits is None else {
        "model": a.model_key, "labels": payload.vocabulary_labels(catalog.get(a.model_key).tokenizer,
                                                                  int(a.logits.shape[-1]))}  # fmt: skip
    examples = examples_for(catalog, catalog.get(a.model_key)) if a is not None else None
    updates[ui.example] = gr.update(choices=example_choices(examples), value="") if examples else gr.update()
    return updates


def _translation_updates(ui: SimpleNamespace, r: AnalyseResult) -> dict:
    """The translation view's controls: shown with the Run's translation, hidden without one."""
    t = r.analysis.translation
    if t is None:
        return {ui.attention_kind: gr.update(visible=False), ui.translation: gr.update(visible=False, value=""),
                ui.step: index_slider(0, r.step, visible=False)}  # fmt: skip
    return {
        ui.attention_kind: gr.update(visible=True, value=r.attention_kind),
        ui.translation: gr.update(value=t.text),
        ui.step: index_slider(r.analysis.n_steps, r.step, visible=True),
    }


def _routing_updates(ui: SimpleNamespace, r: AnalyseResult) -> dict:
    """The routing view: its section shown with the Run's routing, hidden and emptied without."""
    routing_data, view = r.analysis.routing, r.routing
    return {
        ui.routing_section: gr.update(visible=routing_data is not None),
        ui.moe_layer: index_slider(routing_data.n_layer, r.moe_layer) if routing_data else gr.update(),
        **_routing_view_updates(ui, view),
    }


def _routing_view_updates(ui: SimpleNamespace, view: routing.RoutingView | None) -> dict:
    return {
        ui.routing_chips: view.chips if view else "",
        ui.routing_plot: view.heatmap if view else None,
        ui.load_plot: view.load if view else None,
        ui.routing_note: view.note if view else "",
    }


def index_slider(count: int, value: int, **update) -> dict:
    """An update for a slider over 0..count-1; with one choice or none it stays put, greyed out
    (a Gradio slider needs its maximum above its minimum)."""
    return gr.update(maximum=max(count - 1, 1), value=value, interactive=count > 1, **update)


def _js(call: str, *params: str) -> str:
    """A js event function calling ``window.archplay.<call>`` (``page.js``) with the inputs."""
    args = ", ".join(params)
    return f"({args}) => window.archplay.{call}({args})"


def wire(catalog: Catalog, demo: gr.Blocks, ui: SimpleNamespace) -> SimpleNamespace:
    """Connect events to thin adapters over the pure handlers; parameter names become the API's.
    Every adapter with several outputs returns them as a dict keyed by component.

    The page: Run, Generate, Load, the attention kind, another position or step, another MoE layer
    and a layer a big model's Run left out go to the server; temperature, top-k, top-p, layer, head
    and sampling are redrawn by the page's script (``js=`` events, no request). The same redraws
    exist for scripts as API-only events (``api``'s), computed here with the ``viz`` builders."""

    def analyse(model, text, layer, head, temperature, top_k, top_p, attention_kind=None, step=0, moe_layer=0):
        r = run.analyse(catalog, model, text, layer, head, temperature, top_k, top_p, attention_kind, step,
                        moe_layer)  # fmt: skip
        return analyse_updates(ui, r)

    def run_page(previous, model, text, layer, head, temperature, top_k, top_p, attention_kind=None, step=0,
                 moe_layer=0):  # fmt: skip
        r = run.analyse(catalog, model, text, layer, head, temperature, top_k, top_p, attention_kind, step,
                        moe_layer, draw=False)  # fmt: skip
        return run_updates(ui, catalog, r, previous)

    def attention_view(analysis, layer, head, attention_kind=None):
        with _as_page_error():
            return attention.attention_figure(analysis, layer, head, attention_kind)

    def attention_kind(analysis, attention_kind, layer, head):
        with _as_page_error():
            switch = attention.attention_kind(analysis, attention_kind, layer, head)
        return {ui.layer: index_slider(switch.n_layer, switch.layer) if switch.n_layer else gr.update(),
                ui.attention_plot: switch.figure, ui.attention_help: switch.help}  # fmt: skip

    def attention_kind_page(analysis, attention_kind, layer, head):
        with _as_page_error():
            switch = attention.attention_kind(analysis, attention_kind, layer, head, draw=False)
            maps = payload.attention_payload(analysis, attention_kind, switch.layer) if analysis else None
        return {ui.layer: index_slider(switch.n_layer, switch.layer) if switch.n_layer else gr.update(),
                ui.attention_help: switch.help, ui.more: maps}  # fmt: skip

    def attention_layer_page(analysis, need, attention_kind=None):
        """A layer the Run did not ship (``need`` = "<run>:<layer>"), for a big model's page."""
        if analysis is None or not need:
            return gr.update()
        with _as_page_error():
            layer = analysis.check_layer(int(str(need).rsplit(":", 1)[-1]), attention_kind)
            return payload.attention_payload(analysis, attention_kind, layer)

    def distribution(analysis, temperature, top_k, top_p, step=None):
        with _as_page_error():
            fig, summary = sampling.distribution(catalog, analysis, temperature, top_k, top_p, step)
        return {ui.distribution_plot: fig, ui.distribution_note: summary}

    def position(analysis, position, temperature=1.0, top_k=0, top_p=1.0):
        with _as_page_error():
            shown = sampling.at_position(catalog, analysis, position, temperature, top_k, top_p)
        return {ui.state: shown.analysis, ui.distribution_plot: shown.figure, ui.distribution_note: shown.summary}

    def row_page(analysis, position=None, step=None):
        """The logits row at another position (or translation step) for the page's script."""
        if analysis is None:
            return {ui.state: analysis, ui.row: gr.update()}
        with _as_page_error():
            if analysis.translation is not None:
                analysis = dataclasses.replace(analysis, predict_at=check(step, analysis.n_steps, "step"))
            else:
                analysis = dataclasses.replace(analysis, predict_at=check(position, len(analysis.ids), "position"))
            row = payload.distribution_payload(sampling.labels_for_run(catalog, analysis), analysis, None)
        return {ui.state: analysis, ui.row: row}

    def sample(analysis, draws, temperature, top_k, top_p, step=None, n=1, seed=0):
        draws = int(draws or 0) + 1  # each call draws afresh, the same for the same seed and call
        with _as_page_error():
            fig, text = sampling.samples(catalog, analysis, temperature, top_k, top_p, step, None, n,
                                         int(seed or 0) * 100_003 + draws)  # fmt: skip
        return {ui.draws: draws, ui.sample_plot: fig, ui.sample_note: text}

    def grid(analysis, layer, head, attention_kind=None):
        with _as_page_error():
            fig = attention.grid_figure(analysis, layer, head, attention_kind)
            mask, help_text = attention.mask_figure(analysis, layer, attention_kind)
        return {ui.grid_plot: fig, ui.mask_plot: mask, ui.mask_help: help_text}

    def routing_view(analysis, moe_layer):
        with _as_page_error():
            return _routing_view_updates(ui, routing.view(analysis, moe_layer))

    def corpus_routing(analysis, moe_layer):
        with _as_page_error():
            view = routing.corpus_view(catalog, analysis, moe_layer)
        return {ui.pos_plot: view.heatmap, ui.corpus_load_plot: view.load, ui.corpus_note: view.note}

    def delta(analysis, layer):
        with _as_page_error():
            return scan.delta_figure(analysis, layer)

    def load_model(name):
        status, key = run.load_model(catalog, name)
        model = gr.update() if key is None else gr.update(choices=catalog.choices(), value=key)
        return {ui.status: status, ui.model: model}

    def generate(model, text, max_new_tokens, temperature, top_k, top_p, seed):
        for step in generation.generate(catalog, model, text, max_new_tokens, temperature, top_k, top_p, seed):
            yield {ui.generated: step.text, ui.generate_status: step.status, ui.generated_html: step.tokens_html}

    run_inputs = [ui.state, ui.model, ui.text, ui.layer, ui.head, ui.temperature, ui.top_k, ui.top_p,
                  ui.attention_kind, ui.step, ui.moe_layer]  # fmt: skip
    drawn = [ui.attention_plot, ui.distribution_plot, ui.grid_plot, ui.mask_plot, ui.delta_plot, ui.sample_plot,
             ui.distribution_note, ui.mask_help, ui.sample_note]  # fmt: skip
    page_run = dict(fn=run_page, inputs=run_inputs, outputs=run_outputs(ui), api_visibility="private",
                    trigger_mode="always_last", concurrency_id=MODEL_EVENTS)  # fmt: skip
    draw_run = dict(fn=None, inputs=[ui.payload, ui.vocab, ui.layer, ui.head, ui.temperature, ui.top_k, ui.top_p],
                    outputs=drawn, js=_js("run", "p", "v", "l", "h", "t", "k", "q"), show_progress="hidden")  # fmt: skip
    # The first Run takes the model, text and settings from the address (a reload, a shared link).
    restored = [ui.model, ui.text, ui.layer, ui.head, ui.temperature, ui.top_k, ui.top_p, ui.max_new_tokens]
    ui.analysed = demo.load(None, inputs=restored, outputs=restored, js=_js("restore", *"mtlhxkpn"),
                            show_progress="hidden").then(**page_run)  # fmt: skip
    ui.analysed.then(**draw_run)
    ran = gr.on(triggers=[ui.run.click, ui.text.submit, ui.model.input], **page_run)
    ran.then(**draw_run)
    # An example goes into the text box (in the page) and runs; the menu's prompt keeps the text.
    tried = ui.example.input(None, inputs=[ui.example, ui.text], outputs=[ui.text], js="(e, t) => e || t",
                             show_progress="hidden").then(**page_run)  # fmt: skip
    tried.then(**draw_run)
    ui.runs = (ui.analysed, ran, tried)  # every Run (page load, Run, an example): what other tabs follow
    # A new model: the old one's generated text goes (only in the page, no request).
    ui.model.input(None, outputs=[ui.generated, ui.generated_html, ui.generate_status],
                   js="() => ['', '', '']", show_progress="hidden")  # fmt: skip

    # Redrawn in the page, from the payload (no request).
    in_page = dict(fn=None, show_progress="hidden", trigger_mode="always_last")
    gr.on(triggers=[ui.layer.input, ui.head.input], inputs=[ui.layer, ui.head], outputs=[ui.mask_help, ui.need],
          js=_js("layerHead", "l", "h"), **in_page)  # fmt: skip
    gr.on(triggers=[ui.temperature.input, ui.top_k.input, ui.top_p.input],
          inputs=[ui.temperature, ui.top_k, ui.top_p], outputs=[ui.distribution_note],
          js=_js("sampling", "t", "k", "p"), **in_page)  # fmt: skip
    for button, n in ((ui.sample_once, sampling.SAMPLE_COUNTS[0]), (ui.sample_many, sampling.SAMPLE_COUNTS[1])):
        button.click(None, inputs=[ui.seed, ui.temperature, ui.top_k, ui.top_p],
                     outputs=[ui.sample_plot, ui.sample_note],
                     js=f"(s, t, k, p) => window.archplay.samples({n}, s, t, k, p)", show_progress="hidden")  # fmt: skip

    # Another kind, position, step or (for a big model) layer: one small request, then drawn in the page.
    server = dict(show_progress="hidden", trigger_mode="always_last", api_visibility="private")
    more_drawn = [ui.attention_plot, ui.grid_plot, ui.mask_plot, ui.mask_help]
    draw_more = dict(fn=None, inputs=[ui.more, ui.layer, ui.head], outputs=more_drawn,
                     js=_js("attention", "m", "l", "h"), show_progress="hidden")  # fmt: skip
    # .input, not .change: only a user's choice switches the kind (Run sets it without redrawing twice).
    gr.on(triggers=[ui.attention_kind.input], fn=attention_kind_page,
          inputs=[ui.state, ui.attention_kind, ui.layer, ui.head],
          outputs=[ui.layer, ui.attention_help, ui.more], **server).then(**draw_more)  # fmt: skip
    gr.on(triggers=[ui.need.change], fn=attention_layer_page, inputs=[ui.state, ui.need, ui.attention_kind],
          outputs=[ui.more], **server).then(**draw_more)  # fmt: skip
    draw_row = dict(fn=None, inputs=[ui.row, ui.temperature, ui.top_k, ui.top_p],
                    outputs=[ui.distribution_plot, ui.distribution_note], js=_js("row", "r", "t", "k", "p"),
                    show_progress="hidden")  # fmt: skip
    moved = gr.on(triggers=[ui.position.input, ui.step.input], fn=row_page, inputs=[ui.state, ui.position, ui.step],
                  outputs=[ui.state, ui.row], **server)  # fmt: skip
    moved.then(**draw_row)
    # The story world's exact answer under the prediction: after every Run (with the corpus routing, below)
    # and a new position.
    moved.then(lambda a: truth.truth_md(catalog, a), inputs=[ui.state], outputs=[ui.truth], api_name=False,
               show_progress="hidden")  # fmt: skip

    gr.on(triggers=[ui.moe_layer.change], fn=routing_view, inputs=[ui.state, ui.moe_layer],
          outputs=[ui.routing_chips, ui.routing_plot, ui.load_plot, ui.routing_note],
          api_name="routing", **_REDRAW)  # fmt: skip
    corpus_outputs = [ui.pos_plot, ui.corpus_load_plot, ui.corpus_note]


    def after_run(analysis, moe_layer):
        """A Run's follow-ups, in one event (each event's status messages make the page walk its whole state):
        the story world's answer, and a mixture of experts' routing over the validation stories."""
        out = {ui.truth: truth.truth_md(catalog, analysis)}
        try:
            return out | corpus_routing(analysis, moe_layer)
        except gr.Error as e:
            return out | {ui.corpus_note: error(md_escape(str(e.message)))}

    for started in ui.runs:
        started.then(after_run, inputs=[ui.state, ui.moe_layer], outputs=[ui.truth, *corpus_outputs], api_name=False,
                     show_progress="hidden")  # fmt: skip
    gr.on(triggers=[ui.moe_layer.input], fn=corpus_routing, inputs=[ui.state, ui.moe_layer], outputs=corpus_outputs,
          api_name="corpus_routing", **_REDRAW)  # fmt: skip
    ui.load.click(load_model, inputs=[ui.folder], outputs=[ui.status, ui.model], api_name="load_model",
                  concurrency_id=MODEL_EVENTS)  # fmt: skip
    generating = ui.generate.click(
        generate,
        inputs=[ui.model, ui.text, ui.max_new_tokens, ui.temperature, ui.top_k, ui.top_p, ui.seed],
        outputs=[ui.generated, ui.generate_status, ui.generated_html],
        api_name="generate",
        show_progress="minimal",
        concurrency_id=MODEL_EVENTS,
    )
    ui.stop.click(None, cancels=[generating], api_visibility="private")

    # The API: the same views computed on the server, for scripts (``gradio_client``); the page never
    # triggers these (``api`` is an invisible button).
    api = ui.api.click
    api(analyse, inputs=run_inputs[1:], outputs=analyse_outputs(ui), api_name="analyse", concurrency_id=MODEL_EVENTS)
    api(attention_view, inputs=[ui.state, ui.layer, ui.head, ui.attention_kind], outputs=[ui.attention_plot],
        api_name="attention", **_REDRAW)  # fmt: skip
    api(attention_kind, inputs=[ui.state, ui.attention_kind, ui.layer, ui.head],
        outputs=[ui.layer, ui.attention_plot, ui.attention_help], api_name="attention_kind", **_REDRAW)  # fmt: skip
    api(distribution, inputs=[ui.state, ui.temperature, ui.top_k, ui.top_p, ui.step],
        outputs=[ui.distribution_plot, ui.distribution_note], api_name="distribution", **_REDRAW)  # fmt: skip
    api(position, inputs=[ui.state, ui.position, ui.temperature, ui.top_k, ui.top_p],
        outputs=[ui.state, ui.distribution_plot, ui.distribution_note], api_name="position", **_REDRAW)  # fmt: skip
    api(grid, inputs=[ui.state, ui.layer, ui.head, ui.attention_kind], outputs=[ui.grid_plot, ui.mask_plot,
        ui.mask_help], api_name="grid", **_REDRAW)  # fmt: skip
    api(delta, inputs=[ui.state, ui.layer], outputs=[ui.delta_plot], api_name="delta", **_REDRAW)
    sample_inputs = [ui.state, ui.draws, ui.temperature, ui.top_k, ui.top_p, ui.step]
    for n, name in ((sampling.SAMPLE_COUNTS[0], "sample_once"), (sampling.SAMPLE_COUNTS[1], "sample_many")):
        api(lambda *a, n=n: sample(*a[:6], n, a[6]), inputs=[*sample_inputs, ui.seed],
            outputs=[ui.draws, ui.sample_plot, ui.sample_note], api_name=name, show_progress="hidden")  # fmt: skip
    return ui


_REDRAW = dict(trigger_mode="always_last", show_progress="hidden")  # a redraw from the cached Run: no spinner


@contextmanager
def _as_page_error() -> Iterator[None]:
    """Turn a handler's ValueError or TypeError (a value out of range, or of the wrong type through
    the API) into a message on the page."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise gr.Error(str(e)[:300]) from None
