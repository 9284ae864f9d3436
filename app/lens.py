"""The Logit lens tab: what every layer of a decoder would predict if the model stopped there.

Drawn from the Explore tab's Run (the session's cached hidden states): the shared model's final
norm and LM head read out each layer (``archplay.models.analysis.lens``), which is arithmetic on the cached states,
not a new forward pass. A family whose registry entry has no lens (``Family.lens``: encoders,
encoder-decoders) gets a sentence saying why.
"""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go

from archplay.models import BUILTIN_NAMES
from archplay.models.analysis.lens import logit_lens
from archplay.viz.lens import logit_lens_heatmap

from .catalog import Catalog, UnknownModelError
from .follow import follow
from .messages import error, md_escape, note, ok
from .session import Analysis

HELP = (
    "Each row reads the residual stream after one layer through the model's **final norm and LM "
    "head**, the read-out it normally applies only at the top (the *logit lens*). The cell shows "
    "that layer's top guess for the **next** token after the input token below it, shaded by its "
    "probability; hover for the top 5. Early rows often echo the current token; watch the "
    "model's answer (the top row) appear with depth."
)


def lens_view(catalog: Catalog, analysis: Analysis | None) -> tuple[go.Figure | None, str]:
    """The logit-lens heatmap of the session's Run and a sentence on it."""
    if analysis is None:
        return None, note("Run a model on the Explore tab first.")
    if not analysis.spec.lens:
        with_lens = [key for key in catalog.keys() if key in BUILTIN_NAMES and catalog.get(key).spec.lens]
        return None, note(f"The logit lens reads a decoder's layers through its output head; "
                          f"{md_escape(analysis.model_label)} is an {analysis.family} model."
                          + (f" Choose {_either(with_lens)}." if with_lens else ""))  # fmt: skip
    if not analysis.hidden_states:
        return None, note("This Run kept no hidden states.")
    try:
        entry = catalog.get(analysis.model_key)
    except UnknownModelError as e:
        return None, error(md_escape(str(e)))
    try:
        lens = logit_lens(entry.model, [h.to(entry.device) for h in analysis.hidden_states])
    except ValueError as e:  # a read-out the model lacks (no final norm or LM head of the usual shape)
        return None, note(f"No logit lens for {md_escape(entry.label)}: {md_escape(str(e))}")
    fig = logit_lens_heatmap(lens, analysis.labels, entry.tokenizer.tokens,
                             title=f"Logit lens: {html.escape(entry.label)}")  # fmt: skip
    final = lens.final_rank  # (L+1, T): 0 where a layer already has the model's answer on top
    settled = [int(next((i for i in range(final.shape[0]) if (final[i:, t] == 0).all()), final.shape[0] - 1))
               for t in range(final.shape[1])]  # fmt: skip
    mean = sum(settled) / len(settled)
    return fig, ok(f"{len(analysis.ids)} positions × {final.shape[0]} rows. On average the model's final answer "
                   f"is on top from row {mean:.1f} of {final.shape[0] - 1} upward.")  # fmt: skip


def _either(keys: list[str]) -> str:
    """``gpt``, ``gpt or moe``, ``gpt, moe or mamba``."""
    return keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} or {keys[-1]}"


def build(catalog: Catalog, explore_ui: SimpleNamespace) -> SimpleNamespace:
    ui = SimpleNamespace()
    gr.Markdown("### Logit lens: the prediction forming layer by layer")
    gr.Markdown(HELP, elem_classes="ap-help")
    ui.note = gr.Markdown("", elem_id="lens-note")
    ui.plot = gr.Plot(show_label=False, elem_id="lens-plot")
    # The session's Run, drawn when this tab is open (a Run while it is hidden: when it is opened).
    follow(explore_ui, "lens", lambda a: lens_view(catalog, a), inputs=[explore_ui.state],
           outputs=[ui.plot, ui.note], api_name="lens")  # fmt: skip
    return ui
