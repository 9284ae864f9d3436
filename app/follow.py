"""Tabs that draw the Explore tab's Run (Logit lens, Inside a step, Interventions, Anatomy,
Embeddings) draw it when they are opened, once per Run.

A Run happens on the Explore tab. Drawing every such tab after it cost twice: the server's work
for views nobody may open, and in the page one event per tab per Run, each of whose status
messages makes Gradio's page walk its whole state (measured in Chromium: most of a page Run's
second went there, not into any figure). So a Run sends none: each tab keeps the ``serial`` of the
Run it last drew (``Analysis.serial``: new for each Run, kept when a position moves) and draws the
session's Run on its select event when that differs; opening a tab whose Run is drawn sends nothing
new. A Run that lands while such a tab is open (Run pressed, then the tab opened before the answer)
is drawn there by the page's script: after each Run, when the open tab is one of ``TABS``, it
presses that tab's hidden "#<tab>-redraw" button, which runs the same handler as opening it
(``app/explore/page.js``, ``refollow``; clicking the tab that is already open sends nothing).

    follow(explore_ui, "lens", draw, inputs=[explore_ui.state], outputs=[plot, note])

``draw(analysis, *other_inputs)`` returns the outputs' values: a dict (component → value, as the
tabs' own handlers do) or one value per output in order. ``api_name``: the same draw as an API
endpoint (for scripts, ``gradio_client``), on the Explore tab's invisible API button.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import gradio as gr
from gradio.context import Context

TABS = ("lens", "steps", "ablate", "anatomy", "embeddings")  # the tabs' ids (page.js's FOLLOWING re-selects them)


def follow(explore_ui: SimpleNamespace, name: str, draw: Callable, *, inputs: list, outputs: list,
           api_name: str | None = None, **event) -> list:
    """Wire ``draw`` to the tab being built (the ``gr.Tab`` around this call, whose id is ``name``, one of
    ``TABS``): on its select. Returns the events that draw, for ``.then`` chains."""
    if name not in TABS:
        raise ValueError(f"{name!r} is not one of the following tabs {TABS} (page.js re-selects those)")
    if inputs[:1] != [explore_ui.state]:
        raise ValueError("a following tab's first input is the Explore tab's state (the Run)")
    event = {"show_progress": "hidden", **event}
    if api_name:
        explore_ui.api.click(draw, inputs=inputs, outputs=outputs, api_name=api_name, **event)
    tab = Context.block
    if not isinstance(tab, gr.Tab):  # views outside any tab (a page of their own) are always in sight
        return [ran.then(draw, inputs=inputs, outputs=outputs, api_name=False, **event) for ran in explore_ui.runs]
    if getattr(tab, "id", None) != name:
        raise ValueError(f"follow({name!r}) is called inside the tab {getattr(tab, 'id', None)!r}")
    drawn = gr.State(None)  # the serial of the Run this tab last drew

    def shown(analysis, seen, *rest):
        """The tab is opened: draw the Run unless it is the one drawn already."""
        serial = getattr(analysis, "serial", None)
        if analysis is not None and serial == seen:
            return {drawn: seen}  # (an empty dict would be taken for one output's value)
        result = draw(analysis, *rest)
        if not isinstance(result, dict):
            result = dict(zip(outputs, result if len(outputs) > 1 else [result], strict=True))
        return {**result, drawn: serial}

    again = gr.Button(visible="hidden", elem_id=f"{name}-redraw")  # in the page, not seen: page.js presses it
    return [gr.on(triggers=[tab.select, again.click], fn=shown, inputs=[explore_ui.state, drawn, *inputs[1:]],
                  outputs=[*outputs, drawn], api_name=False, **event)]  # fmt: skip


__all__ = ["TABS", "follow"]
