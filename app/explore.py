"""The Explore page: layout and wiring around the pure handlers in ``app.handlers``.

Events and their API names (a script can drive them with ``gradio_client``):

* ``analyse``      (model, text, layer, head, temperature, top_k, top_p) → the one model run
* ``attention``    (layer, head) → the heatmap of that layer and head, from the cached trace
* ``distribution`` (temperature, top_k, top_p) → the sampling figure, from the cached logits
* ``generate``     (model, text, max_new_tokens, temperature, top_k, top_p, seed) → streamed text

Per-session state is one ``gr.State`` holding the last ``handlers.Analysis``; models stay in
the shared ``Registry``.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from . import handlers
from .handlers import Analysis
from .registry import Registry

INTRO = """
Type a sentence, pick a model and press **Run**. The model reads your text once and archplay
shows what happened inside: how the text was cut into **tokens**, where each token **looked**
while it was being processed (attention), and which token the model would **pick next** and
how temperature, top-k and top-p reshape that choice. The sliders redraw instantly from that
one run; **Generate** lets the model keep writing.
"""

SAMPLING_HELP = (
    "Temperature divides the model's scores: below 1 sharpens the choice, above 1 flattens it. "
    "Top-k keeps only the k likeliest tokens; top-p keeps the likeliest until together they hold p. "
    "Bars: raw → after temperature → final (what is actually sampled)."
)

EXAMPLES = [
    handlers.DEFAULT_TEXT,
    "The cat sat on the mat because it was tired.",
    "Once upon a time, in a small village by the sea, there lived a",
]

CSS = """
.ap-intro p { max-width: 95ch; }
.ap-tokens { display: flex; flex-wrap: wrap; gap: 6px 4px; max-height: 220px; overflow-y: auto;
  padding: 4px 2px; font-family: var(--font-mono); font-size: 0.95em; line-height: 1.2; }
.ap-tok { position: relative; display: inline-flex; align-items: baseline; gap: 3px;
  padding: 3px 7px; border-radius: 6px; white-space: pre;
  background: var(--color-accent-soft); color: var(--body-text-color);
  border: 1px solid var(--border-color-primary); cursor: default; }
.ap-tok:nth-child(even) { background: var(--background-fill-secondary); }
.ap-tok:hover { border-color: var(--color-accent); }
.ap-tok .ap-idx { font-size: 0.68em; color: var(--body-text-color-subdued); }
.ap-tok.ap-focus { border: 2px solid var(--color-accent); }
.ap-tokens-meta { margin-top: 4px; font-size: 0.85em; color: var(--body-text-color-subdued); }
.ap-empty { color: var(--body-text-color-subdued); font-family: var(--font); }
.ap-help { font-size: 0.92em; color: var(--body-text-color-subdued); }
.ap-status { min-height: 1.6em; }
"""


def default_text_for(entry) -> str:
    """The story sentence to continue, or for an encoder the same story with a blank to fill."""
    mask_id = getattr(entry.tokenizer, "mask_token_id", None)
    if entry.family == "encoder" and mask_id is not None:
        return f"Mia has a red {entry.tokenizer.tokens([mask_id])[0]}. She throws it to her dog."
    return handlers.DEFAULT_TEXT


def examples_for(registry: Registry) -> list[str]:
    """The example texts, plus a fill-in-the-blank one when an encoder with a mask token is loaded."""
    out = list(EXAMPLES)
    keys = registry.keys()
    if registry.default_key in keys:  # the page's own model's mask spelling first
        keys.insert(0, keys.pop(keys.index(registry.default_key)))
    for key in keys:
        entry = registry.get(key)
        mask_id = getattr(entry.tokenizer, "mask_token_id", None)
        if entry.family == "encoder" and mask_id is not None:
            mask = entry.tokenizer.tokens([mask_id])[0]
            out.append(f"The cat sat on the {mask} and fell asleep.")
            break
    return out


def build(registry: Registry, demo: gr.Blocks) -> SimpleNamespace:
    """Render the page inside the current Blocks context, wire its events, return the components."""
    ui = layout(registry)
    wire(registry, demo, ui)
    return ui


def layout(registry: Registry) -> SimpleNamespace:
    """Create the components (no events); they are returned by name in a namespace."""
    default = registry.get(registry.default_key)
    n_layer, n_head = default.config.n_layer, default.config.n_head
    ui = SimpleNamespace()

    gr.Markdown("# archplay — look inside a language model")
    gr.Markdown(INTRO, elem_classes="ap-intro")
    startup = "\n\n".join(handlers.warn(handlers.md_escape(e)) for e in registry.errors)

    ui.state = gr.State(None)  # handlers.Analysis | None: the last Run of this session
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui.text = gr.Textbox(
                value=default_text_for(default), label="Text", lines=2, max_lines=8, elem_id="text",
                placeholder="Type a sentence…", info="Shift+Enter runs it too.",
            )  # fmt: skip
        with gr.Column(scale=2, min_width=260):
            ui.model = gr.Dropdown(
                choices=registry.choices(), value=registry.default_key, label="Model", elem_id="model",
                info="Untrained models have random weights: the mechanics are real, the language is not.",
            )  # fmt: skip
            ui.run = gr.Button("Run", variant="primary", elem_id="run")
    gr.Examples(examples_for(registry), inputs=[ui.text], label="Try")
    ui.status = gr.Markdown(startup, label="Status", elem_id="status", elem_classes="ap-status")
    ui.tokens = gr.HTML(handlers.tokens_html([], []), label="Tokens",
                        show_label=True, container=True, padding=True, elem_id="tokens")  # fmt: skip

    # Each section: controls and their explanation on the left, the figure on the right.
    gr.Markdown("### Attention: where each token looks")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            ui.layer = gr.Slider(0, max(n_layer - 1, 0), value=0, step=1, precision=0, label="Layer",
                                 info="0 = nearest the input", elem_id="layer")  # fmt: skip
            ui.head = gr.Slider(0, max(n_head - 1, 0), value=0, step=1, precision=0, label="Head",
                                info="each head has its own pattern", elem_id="head")  # fmt: skip
            ui.attention_help = gr.Markdown(handlers.ATTENTION_HELP["causal"], label="Attention help",
                                            elem_id="attention-help", elem_classes="ap-help")  # fmt: skip
        with gr.Column(scale=3, min_width=420):
            ui.attention_plot = gr.Plot(label="Attention", show_label=False, elem_id="attention-plot")

    gr.Markdown("### Next token: how sampling settings reshape the choice")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            ui.temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="Temperature",
                                       info="0 = greedy", elem_id="temperature")  # fmt: skip
            ui.top_k = gr.Slider(0, 200, value=0, step=1, precision=0, label="Top-k",
                                 info="0 = off", elem_id="top-k")  # fmt: skip
            ui.top_p = gr.Slider(0.01, 1, value=1.0, step=0.01, label="Top-p",
                                 info="1 = off", elem_id="top-p")  # fmt: skip
            gr.Markdown(SAMPLING_HELP, elem_classes="ap-help")
            ui.distribution_note = gr.Markdown("", label="Distribution summary", elem_id="distribution-note")
        with gr.Column(scale=3, min_width=420):
            ui.distribution_plot = gr.Plot(label="Distribution", show_label=False,
                                           elem_id="distribution-plot")  # fmt: skip

    gr.Markdown("### Generate: let the model keep writing")
    with gr.Row(equal_height=True):
        ui.max_new_tokens = gr.Slider(1, 256, value=48, step=1, precision=0, label="Max new tokens",
                                      elem_id="max-new-tokens")  # fmt: skip
        ui.seed = gr.Number(0, precision=0, minimum=0, label="Seed", info="same seed, same text", elem_id="seed")
        with gr.Column(min_width=160):
            ui.generate = gr.Button("Generate", variant="primary", elem_id="generate")
            ui.stop = gr.Button("Stop", variant="stop", elem_id="stop")
    ui.generate_note = gr.Markdown("", label="Generation note", elem_id="generate-note", elem_classes="ap-help")
    ui.generated = gr.Textbox(label="Generated text", info="Sampled with the temperature, top-k and top-p above.",
                              lines=5, interactive=False, buttons=["copy"], elem_id="generated")  # fmt: skip
    ui.generate_status = gr.Markdown("", label="Generation status", elem_id="generate-status", elem_classes="ap-help")
    return ui


# --------------------------------------------------------------------------- wiring


def wire(registry: Registry, demo: gr.Blocks, ui: SimpleNamespace) -> None:
    """Connect events to thin adapters over ``app.handlers``; parameter names become the API's."""

    def analyse(model, text, layer, head, temperature, top_k, top_p):
        r = handlers.analyse(registry, model, text, layer, head, temperature, top_k, top_p)
        generate_button = gr.update(interactive=r.can_generate)
        if not r.ok:
            return (None, r.status, r.tokens_html, None, r.attention_help, gr.update(), gr.update(),
                    None, r.distribution_note, generate_button, r.generate_note)  # fmt: skip
        a: Analysis = r.analysis
        return (
            a,
            r.status,
            r.tokens_html,
            r.attention,
            r.attention_help,
            gr.update(maximum=max(a.n_layer - 1, 0), value=r.layer, interactive=a.n_layer > 1),
            gr.update(maximum=max(a.n_head - 1, 0), value=r.head, interactive=a.n_head > 1),
            r.distribution,
            r.distribution_note,
            generate_button,
            r.generate_note,
        )

    def attention(analysis, layer, head):
        try:
            return handlers.attention_figure(analysis, layer, head)
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def distribution(analysis, temperature, top_k, top_p):
        try:
            return handlers.distribution(registry, analysis, temperature, top_k, top_p)
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def generate(model, text, max_new_tokens, temperature, top_k, top_p, seed):
        yield from handlers.generate(registry, model, text, max_new_tokens, temperature, top_k, top_p, seed)

    gr.on(
        triggers=[demo.load, ui.run.click, ui.text.submit, ui.model.input],
        fn=analyse,
        inputs=[ui.model, ui.text, ui.layer, ui.head, ui.temperature, ui.top_k, ui.top_p],
        outputs=[ui.state, ui.status, ui.tokens, ui.attention_plot, ui.attention_help, ui.layer, ui.head,
                 ui.distribution_plot, ui.distribution_note, ui.generate, ui.generate_note],  # fmt: skip
        api_name="analyse",
        trigger_mode="always_last",
    )
    # Live redraws from the cached Analysis: never a model call, so no spinner.
    gr.on(
        triggers=[ui.layer.change, ui.head.change],
        fn=attention,
        inputs=[ui.state, ui.layer, ui.head],
        outputs=[ui.attention_plot],
        api_name="attention",
        trigger_mode="always_last",
        show_progress="hidden",
    )
    gr.on(
        triggers=[ui.temperature.change, ui.top_k.change, ui.top_p.change],
        fn=distribution,
        inputs=[ui.state, ui.temperature, ui.top_k, ui.top_p],
        outputs=[ui.distribution_plot, ui.distribution_note],
        api_name="distribution",
        trigger_mode="always_last",
        show_progress="hidden",
    )
    generating = ui.generate.click(
        generate,
        inputs=[ui.model, ui.text, ui.max_new_tokens, ui.temperature, ui.top_k, ui.top_p, ui.seed],
        outputs=[ui.generated, ui.generate_status],
        api_name="generate",
        show_progress="minimal",
    )
    ui.stop.click(None, cancels=[generating], api_visibility="private")
