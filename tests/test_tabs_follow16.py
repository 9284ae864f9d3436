"""Every tab that draws from the Explore tab's Run follows every Run: the page's first, Run (and
Shift+Enter, a new model) and an example. Before, the Logit lens and Embeddings tabs followed only
the page's first Run and kept showing its text after the user's own."""

from __future__ import annotations

import pytest

from archplay.app.catalog import Catalog
from archplay.app.main import build_app


@pytest.fixture(scope="module")
def config():
    return build_app(Catalog.from_names([], builtins=("gpt",))).get_config_file()


@pytest.mark.parametrize("elem_id", ["lens-plot", "truth-note", "steps-flow"])
def test_a_tab_view_is_redrawn_after_every_run(config, elem_id):
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    if elem_id not in ids.values():
        pytest.skip(f"no #{elem_id} in this build")
    deps = config["dependencies"]
    runs = [d["id"] for d in deps if str(d.get("api_name", "")).startswith("run_page")]
    assert len(runs) == 3  # the page's first Run, Run (click, Shift+Enter, a new model), an example

    def follows(dep_id: int, seen=()) -> bool:  # a chain of .then() from this event reaches the view
        for d in deps:
            if d.get("trigger_after") == dep_id and d["id"] not in seen:
                if any(ids.get(o) == elem_id for o in d["outputs"]) or follows(d["id"], (*seen, d["id"])):
                    return True
        return False

    assert all(follows(r) for r in runs), f"#{elem_id} is not redrawn after every Run"


def test_embeddings_follow_every_run(config):
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    deps = config["dependencies"]
    runs = [d["id"] for d in deps if str(d.get("api_name", "")).startswith("run_page")]
    scatter = {i for i, e in ids.items() if e and e.startswith("emb")}
    followers = {d.get("trigger_after") for d in deps if scatter & set(d["outputs"])}
    assert set(runs) <= followers


# --------------------------------------------------------------------------- drawn when seen (app.follow)

FOLLOWERS = {"lens-plot": "lens", "steps-attention": "steps", "ablate-kind": "ablate", "anatomy-note": "anatomy",
             "emb-layer": "embeddings"}  # a view of each tab that draws the Run -> the tab's name  # fmt: skip


@pytest.fixture(scope="module")
def built():
    catalog = Catalog.from_names([], builtins=("gpt",))
    return catalog, build_app(catalog)


def _handlers(demo, first_output: str):
    """The tab's handler for its select event and those for each Run landing."""
    fns = [f for f in demo.fns.values() if f.outputs and getattr(f.outputs[0], "elem_id", None) == first_output]
    shown = [f for f in fns if f.fn.__name__ == "shown"]
    landed = [f for f in fns if f.fn.__name__ == "landed"]
    return shown, landed


@pytest.mark.parametrize("first_output", list(FOLLOWERS))
def test_a_hidden_tab_draws_a_run_only_when_it_is_opened(built, first_output):
    """A Run on the Explore tab draws no hidden tab (before, all five redrew on every Run: server work and
    the browser's layout of each figure); opening the tab draws that Run, once; a Run landing while
    the tab is open draws it at once."""
    import dataclasses

    from archplay.app.explore import run

    catalog, demo = built
    name = FOLLOWERS[first_output]
    shown, landed = _handlers(demo, first_output)
    assert len(shown) == 1 and len(landed) == 3  # opened; after each of the three kinds of Run
    views = {id(o) for o in shown[0].outputs[:-2]}  # all but the tab's "drawn" and the session's open tab

    def drawn_views(result: dict) -> set:
        return {id(k) for k in result} & views

    def rest(fn):  # the inputs after the Run (and after "drawn"/"open tab"): their defaults
        skip = 2 if fn.fn.__name__ == "shown" else 3
        return [getattr(c, "value", None) for c in fn.inputs[skip:]]

    first = run.analyse(catalog, "gpt", "mia has a red ball", layer=0, head=0).analysis
    second = run.analyse(catalog, "gpt", "the cat sat on the mat", layer=0, head=0).analysis
    assert first.serial != second.serial
    assert dataclasses.replace(first, predict_at=0).serial == first.serial  # a new position is the same Run

    for on_run in landed:  # the Explore tab is open: the Run is not drawn here
        out = on_run.fn(first, None, "explore", *rest(on_run))
        assert not drawn_views(out), f"{name} drew a Run while hidden"
    out = shown[0].fn(first, None, *rest(shown[0]))  # the tab is opened: the Run is drawn
    assert drawn_views(out) and list(out.values())[-2:] == [first.serial, name]
    out = shown[0].fn(first, first.serial, *rest(shown[0]))  # opened again, same Run: nothing redrawn
    assert not drawn_views(out) and list(out.values()) == [name]
    out = landed[1].fn(second, first.serial, name, *rest(landed[1]))  # a Run lands while it is open
    assert drawn_views(out) and list(out.values())[-1] == second.serial
