"""Issue 15: the Lab tab's handlers and its server-side runs (a real tiny training that joins the model lists)."""

from __future__ import annotations

import time

import pytest

from archplay.app import lab
from archplay.app.catalog import Catalog
from archplay.models import load
from archplay.models.architectures.layers import count_parameters


def test_a_builtins_recipe_shows_the_builtins_own_size():
    family, values = lab.start_values("gpt")
    md, recipe_json = lab.summary(family, values)
    net, _ = load("gpt")
    assert f"**{count_parameters(net):,} parameters**" in md
    assert '"positions": "learned"' in recipe_json and family == "decoder"
    assert values["steps"] <= 600  # a start from a built-in is a short run, not its 2,000 steps


def test_options_that_do_not_fit_say_why():
    family, values = lab.start_values("blank:decoder")
    md, recipe_json = lab.summary(family, {**values, "heads": 3})  # 128 does not split into 3 heads
    assert recipe_json == "" and md.startswith("✕") and "multiple of heads (3)" in md
    md, _ = lab.summary(family, {**values, "attention": "sliding", "window": None})
    assert "window" in md
    md, js = lab.summary(family, {**values, "attention": "strided", "window": 8})
    assert '"window": 8' in js


def test_only_a_familys_options_are_shown_and_used():
    assert {"experts", "top_k", "d_state"}.isdisjoint(lab.applies("decoder"))
    assert {"experts", "top_k", "shared_expert", "load_balancing"} <= lab.applies("moe")
    assert {"d_state", "expand"} <= lab.applies("ssm") and "heads" not in lab.applies("ssm")
    family, values = lab.start_values("blank:ssm")
    r = lab.recipe_from(family, {**values, "experts": 8, "heads": 2})  # hidden controls are left out
    assert r.family == "ssm" and r.experts is None


def test_progress_and_evaluation_are_escaped_text():
    html = lab.progress_html({"state": "running", "step": 30, "steps": 120, "losses": [3.25], "tokens_per_s": 9000.0,
                              "eta_s": 75})  # fmt: skip
    assert 'aria-valuenow="30"' in html and "width:25.0%" in html and "1 min 15 s left" in html and "3.250" in html
    md = lab.evaluation_md({"family": "decoder", "lm": {"cross_entropy": 2.0, "entropy_floor": 1.7, "gap": 0.3,
                                                       "tokens": 10}}, "<b>x</b>")  # fmt: skip
    assert "<b>" not in md and "gap 0.300" in md


def test_a_lab_run_trains_in_the_background_and_joins_the_model_lists(tmp_path):
    catalog = Catalog.from_names([], builtins=("gpt",))
    runs = lab.Lab(catalog, tmp_path / "lab", stories=40)
    family, values = lab.start_values("blank:decoder")
    r = lab.recipe_from(family, {**values, "layers": 1, "width": 32, "heads": 2, "kv_heads": 2, "steps": 4,
                                 "batch": 2, "positions": "alibi"})  # fmt: skip
    run_id = runs.start(r)
    with pytest.raises(ValueError, match="already trains 1 model"):
        runs.start(r)  # one at a time on this server
    run = runs.get(run_id)
    deadline = time.monotonic() + 240
    while run.job.state == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
    state = run.job.poll()
    assert state["state"] == "done", state
    assert len(state["losses"]) == 4 and state["tokens_per_s"] > 0
    runs.finish(run)
    assert run.key in catalog.keys() and run.key.startswith(str((tmp_path / "lab").resolve()))
    entry = catalog.get(run.key)
    assert entry.config.positions == "alibi" and entry.config.n_layer == 1
    assert run.evaluation["lm"]["gap"] > 0 and run.evaluation["lm"]["entropy_floor"] > 1
    assert "entropy floor" in lab.evaluation_md(run.evaluation, "x")


def test_training_can_be_turned_off(tmp_path):
    runs = lab.Lab(Catalog.from_names([], builtins=("gpt",)), tmp_path, max_running=0)
    family, values = lab.start_values("blank:decoder")
    with pytest.raises(ValueError, match="turned off"):
        runs.start(lab.recipe_from(family, values))
