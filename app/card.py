"""The Architecture tab: the chosen model's configuration and where its parameters sit."""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go

from archplay.models.analysis.card import active_parameters, architecture, parameter_breakdown
from archplay.models.architectures.layers import count_parameters
from archplay.viz.card import parameter_figure

from .catalog import Catalog, UnknownModelError
from .messages import error, md_escape

HELP = (
    "What the model is made of: its configuration as the architecture names it, and its parameters "
    "by component. In these small models the embeddings are a large share; in big ones the "
    "feed-forward layers (or experts) dominate. A mixture of experts **holds** every expert but "
    "**runs** only top-k of them per token: its active parameters are fewer than its total."
)

# Gradio's markdown sets ``overflow-wrap: anywhere`` (and ``word-break: break-word`` on tables), which
# lets a table column shrink below its longest word, so at 1024 px the key column read "vocabula/ry".
# Here cells break only between words (a long unbroken value may still wrap rather than overflow), and
# the key column keeps each name on one line.
CSS = """
#card-table table { table-layout: auto; width: 100%; }
#card-table th, #card-table td { overflow-wrap: normal; word-break: normal; }
#card-table td:last-child { overflow-wrap: break-word; }
#card-table th:first-child, #card-table td:first-child { white-space: nowrap; width: 1%; }
"""


def card(catalog: Catalog, key: str | None) -> tuple[str, go.Figure | None]:
    """(the configuration as a markdown table, the parameter breakdown figure)."""
    try:
        entry = catalog.get(key)
    except UnknownModelError as e:
        return error(md_escape(str(e))), None
    rows = "\n".join(f"| {md_escape(k)} | {md_escape(str(v))} |" for k, v in architecture(entry.model))
    table = f"#### {md_escape(entry.label)}\n\n| | |\n|---|---|\n{rows}"
    model = entry.model
    total = count_parameters(model)
    fig = parameter_figure(parameter_breakdown(model), active=active_parameters(model), total=total,
                           title=f"Parameters by component: {html.escape(entry.label)}")  # fmt: skip
    return table, fig


def build(catalog: Catalog, demo: gr.Blocks, explore_ui: SimpleNamespace) -> SimpleNamespace:
    ui = SimpleNamespace()
    gr.Markdown("### Architecture card")
    gr.Markdown(HELP, elem_classes="ap-help")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            ui.model = gr.Dropdown(catalog.choices(), value=catalog.default_key, label="Model", elem_id="card-model")
            ui.table = gr.Markdown("", elem_id="card-table")
        with gr.Column(scale=3, min_width=420):
            ui.plot = gr.Plot(show_label=False, elem_id="card-plot")
    # The card follows the Explore tab's model choice, and its own dropdown.
    # (with the list as it is now: Explore may have just loaded a checkpoint this dropdown has not seen)
    explore_ui.model.change(lambda key: gr.update(choices=catalog.choices(), value=key), inputs=[explore_ui.model],
                            outputs=[ui.model], show_progress="hidden")  # fmt: skip
    gr.on(triggers=[demo.load, ui.model.change], fn=lambda key: card(catalog, key), inputs=[ui.model],
          outputs=[ui.table, ui.plot], api_name="card", show_progress="hidden")  # fmt: skip
    return ui
