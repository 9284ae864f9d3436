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
