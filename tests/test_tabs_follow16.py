"""The tabs that draw from the Explore tab's Run show the session's latest Run whenever they are
opened, whatever started it (the page's first, Run, Shift+Enter, a new model, an example); before,
the Logit lens and Embeddings tabs followed only the page's first Run. And a Run costs only what
Explore shows (``app.follow``): before, each of those five tabs redrew after every Run, hidden or
not, and each such event made Gradio's page walk its whole state (most of a page Run's second)."""

from __future__ import annotations

import pytest

from archplay.app.catalog import Catalog
from archplay.app.follow import TABS
from archplay.app.main import build_app

# a view of each tab that draws the Run -> the tab's id
FOLLOWERS = {"lens-plot": "lens", "steps-attention": "steps", "ablate-kind": "ablate", "anatomy-note": "anatomy",
             "emb-layer": "embeddings"}  # fmt: skip


@pytest.fixture(scope="module")
def built():
    catalog = Catalog.from_names([], builtins=("gpt",))
    return catalog, build_app(catalog)


@pytest.fixture(scope="module")
def config(built):
    return built[1].get_config_file()


def _ids(config) -> dict:
    return {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}


def _runs(config) -> list[int]:
    runs = [d["id"] for d in config["dependencies"] if str(d.get("api_name", "")).startswith("run_page")]
    assert len(runs) == 3  # the page's first Run, Run (click, Shift+Enter, a new model), an example
    return runs


def _after(config, dep_id: int, seen=()) -> list[dict]:
    """Every event a chain of .then() from ``dep_id`` runs."""
    out = []
    for d in config["dependencies"]:
        if d.get("trigger_after") == dep_id and d["id"] not in seen:
            out += [d, *_after(config, d["id"], (*seen, d["id"]))]
    return out


def test_the_worlds_answer_follows_every_run(config):
    ids = _ids(config)
    for r in _runs(config):
        assert any(ids.get(o) == "truth-note" for d in _after(config, r) for o in d["outputs"])


def test_a_run_sends_one_follow_up_and_draws_no_hidden_tab(config):
    """After a Run: the page's own drawing (in the browser) and one server event (the world's answer and the
    corpus routing); no event draws a view of the five tabs that follow it (they draw when opened)."""
    ids = _ids(config)
    views = {i for i, e in ids.items() if e and e.split("-")[0] in ("lens", "steps", "ablate", "anatomy", "emb")}
    for r in _runs(config):
        after = _after(config, r)
        assert not [d for d in after if views & set(d["outputs"])], "a hidden tab is drawn after a Run"
        assert len([d for d in after if d.get("backend_fn")]) == 1, [d.get("api_name") for d in after]


@pytest.mark.parametrize("first_output", list(FOLLOWERS))
def test_a_tab_draws_the_sessions_run_when_opened_once_per_run(built, config, first_output):
    """Opening the tab draws the session's Run (its select event), once: opened again on the same Run it
    sends back nothing but its bookkeeping; a new Run (not a new position) is drawn at the next opening."""
    import dataclasses

    from archplay.app.explore import run

    catalog, demo = built
    name = FOLLOWERS[first_output]
    assert name in TABS
    (shown,) = [f for f in demo.fns.values() if f.outputs and getattr(f.outputs[0], "elem_id", None) == first_output
                and f.fn.__name__ == "shown"]  # fmt: skip
    tab_ids = {c["id"]: c.get("props", {}).get("id") for c in config["components"]}
    key = next(k for k, f in demo.fns.items() if f is shown)
    dep = next(d for d in config["dependencies"] if d["id"] == key)
    ids = _ids(config)  # opening the tab, or page.js pressing its hidden redraw button (a Run landed while open)
    assert [(tab_ids.get(t[0]) or ids.get(t[0]), t[1]) for t in dep["targets"]] == [(name, "select"),
                                                                                    (f"{name}-redraw", "click")]
    views = {id(o) for o in shown.outputs[:-1]}  # all but the tab's "drawn"
    rest = [getattr(c, "value", None) for c in shown.inputs[2:]]  # the inputs after the Run and "drawn"

    def drawn_views(result: dict) -> set:
        return {id(k) for k in result} & views

    first = run.analyse(catalog, "gpt", "mia has a red ball", layer=0, head=0).analysis
    second = run.analyse(catalog, "gpt", "the cat sat on the mat", layer=0, head=0).analysis
    assert first.serial != second.serial
    assert dataclasses.replace(first, predict_at=0).serial == first.serial  # a new position is the same Run
    out = shown.fn(first, None, *rest)  # opened: the Run is drawn
    assert drawn_views(out) and list(out.values())[-1] == first.serial
    out = shown.fn(first, first.serial, *rest)  # opened again, same Run: nothing redrawn
    assert not drawn_views(out) and list(out.values()) == [first.serial]
    out = shown.fn(second, first.serial, *rest)  # a new Run since: drawn
    assert drawn_views(out) and list(out.values())[-1] == second.serial


def test_the_page_reselects_exactly_the_following_tabs():
    """page.js draws a Run that lands while one of these tabs is open by selecting it again: its list is
    app.follow's."""
    import json
    import re
    from pathlib import Path

    import archplay.app.explore as explore

    js = (Path(explore.__file__).parent / "page.js").read_text()
    listed = re.search(r"const FOLLOWING = (\[[^\]]*\]);", js).group(1)
    assert tuple(json.loads(listed)) == TABS
