"""Tabs that draw the Explore tab's Run (Logit lens, Inside a step, Interventions, Anatomy,
Embeddings) draw it when it is seen: when a Run lands while the tab is open, and otherwise when the
tab is next opened, once per Run.

A Run happens on the Explore tab, so drawing every such tab after it would redraw five hidden tabs
(server work, and then the browser's layout of each figure: most of a page Run's time) for views
the visitor may never open. Each tab keeps the ``serial`` of the Run it last drew (``Analysis.serial``,
kept when a position moves, new for each Run) and the session keeps which tab is open
(``explore_ui.open_tab``: set by each tab's select event); opening a tab whose Run is already drawn
sends nothing new.

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


def follow(explore_ui: SimpleNamespace, name: str, draw: Callable, *, inputs: list, outputs: list,
           api_name: str | None = None, **event) -> list:
    """Wire ``draw`` to the tab being built (the ``gr.Tab`` around this call, called ``name``): on its
    select, and after every Run while it is open. Returns the events that draw, for ``.then`` chains."""
    if inputs[:1] != [explore_ui.state]:
        raise ValueError("a following tab's first input is the Explore tab's state (the Run)")
    event = {"show_progress": "hidden", **event}
    if api_name:
        explore_ui.api.click(draw, inputs=inputs, outputs=outputs, api_name=api_name, **event)
    tab = Context.block
    if not isinstance(tab, gr.Tab):  # views outside any tab (a page of their own) are always in sight
        return [ran.then(draw, inputs=inputs, outputs=outputs, api_name=False, **event) for ran in explore_ui.runs]
    drawn = gr.State(None)  # the serial of the Run this tab last drew
    opened, state = explore_ui.open_tab, explore_ui.state

    def values(analysis, rest) -> dict:
        result = draw(analysis, *rest)
        return result if isinstance(result, dict) else dict(zip(outputs, result if len(outputs) > 1 else [result],
                                                                strict=True))  # fmt: skip

    def shown(analysis, seen, *rest):
        """The tab is opened: draw the Run unless it is the one drawn already."""
        serial = getattr(analysis, "serial", None)
        if analysis is not None and serial == seen:
            return {opened: name}
        return {**values(analysis, rest), drawn: serial, opened: name}

    def landed(analysis, seen, where, *rest):
        """A Run landed: drawn now only if this tab is the one open (else when it is opened)."""
        if where != name:
            return {drawn: seen}
        return {**values(analysis, rest), drawn: getattr(analysis, "serial", None)}

    events = [tab.select(shown, inputs=[state, drawn, *inputs[1:]], outputs=[*outputs, drawn, opened],
                         api_name=False, **event)]  # fmt: skip
    for ran in explore_ui.runs:
        events.append(ran.then(landed, inputs=[state, drawn, opened, *inputs[1:]], outputs=[*outputs, drawn],
                               api_name=False, **event))  # fmt: skip
    return events


def track(explore_ui: SimpleNamespace) -> None:
    """Inside the Explore tab: selecting it marks it the open one (a Run there draws no other tab)."""
    tab = Context.block
    if isinstance(tab, gr.Tab):
        tab.select(lambda: "explore", outputs=explore_ui.open_tab, api_name=False, show_progress="hidden")


__all__ = ["follow", "track"]
