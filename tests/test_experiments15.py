"""Issue 15 item 4: one-click experiments (recipes that differ in one option), precomputed and reproducible."""

from __future__ import annotations

import json

import pytest

from archplay.app import lab
from archplay.models.analysis.scaling import fit_power_law
from archplay.models.training import experiments
from archplay.models.training.recipe import Recipe, flops_per_token, parameter_count
from archplay.viz import style

KEYS = tuple(experiments.EXPERIMENTS)


def test_the_registry_ships_the_five_experiments():
    assert set(KEYS) == {"positions", "experts", "norm", "attention", "scaling"}
    for exp in experiments.EXPERIMENTS.values():
        assert 2 <= len(exp.variants) <= 4 and exp.question.endswith("?") and exp.title
        assert len({v.name for v in exp.variants}) == len(exp.variants)


@pytest.mark.parametrize("key", KEYS)
def test_each_variant_differs_from_the_base_in_exactly_its_declared_keys(key):
    exp = experiments.EXPERIMENTS[key]
    base = Recipe.from_dict(exp.base).to_dict()
    for v in exp.variants:
        r = exp.recipe(v)  # a valid recipe (ValueError otherwise)
        d = r.to_dict()
        changed = {k for k in set(base) | set(d) if k != "name" and base.get(k) != d.get(k)}
        assert changed <= set(v.changes) and exp.option in v.changes, (v.name, changed)
        assert all(d[k] == x for k, x in v.changes.items())
        assert set(v.changes) - changed <= {exp.option}  # only the base's own value may be "changed" to itself
    # the variants disagree on the option and nothing else
    assert len({exp.recipe(v).to_dict()[exp.option] if exp.option in exp.recipe(v).to_dict() else None
                for v in exp.variants}) == len(exp.variants)  # fmt: skip


def test_every_run_is_small():
    for exp in experiments.EXPERIMENTS.values():
        for v in exp.variants:
            r = exp.recipe(v)
            assert r.layers <= 2 and r.batch <= 16 and r.context <= 128 and r.steps <= 400
            assert r.width <= (192 if exp.key == "scaling" else 128)


@pytest.mark.parametrize("key", KEYS)
def test_every_shipped_result_loads_with_one_run_per_variant(key):
    exp = experiments.EXPERIMENTS[key]
    result = experiments.load_result(key)
    assert result is not None, f"assets/experiments/{key}.json is missing"
    assert [v["name"] for v in result["variants"]] == [v.name for v in exp.variants]
    assert result["command"].startswith("python -m archplay.models.training.experiments " + key)
    assert 1.0 < result["entropy_floor"] < 3.0
    for v, want in zip(result["variants"], exp.variants):
        r = Recipe.from_dict(v["recipe"])
        assert r.replace(name=None) == exp.recipe(want).replace(name=None, steps=r.steps)  # the registry's recipe
        assert len(v["losses"]) * v["loss_stride"] >= r.steps and all(0 < x < 10 for x in v["losses"])
        assert v["params"]["total"] == parameter_count(r)["total"] and v["params"]["active"] <= v["params"]["total"]
        assert v["train_flops"] == pytest.approx(flops_per_token(r)["train"] * v["tokens"])
        lm = v["evaluation"]["lm"]
        assert lm["cross_entropy"] > lm["entropy_floor"] == pytest.approx(result["entropy_floor"], abs=1e-5)
        assert v["tokens_per_s"] > 0 and v["validation"]
    if key == "experts":
        assert all("routing" in v["evaluation"] for v in result["variants"])


def test_the_scaling_fit_is_the_power_law_of_its_points():
    s = experiments.load_result("scaling")["scaling"]
    losses = [p["loss"] for p in s["points"]]
    for x, fit in (("params", s["fit_params"]), ("compute", s["fit_compute"])):
        again = fit_power_law([p[x] for p in s["points"]], losses, floor=s["floor"])
        assert fit == pytest.approx(again, rel=1e-6)
        assert fit["alpha"] > 0
    params = [p["params"] for p in s["points"]]
    assert params == sorted(params) and len(set(params)) == len(params)


def _write(folder, key, data):
    (folder / f"{key}.json").write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


def test_a_broken_or_hostile_result_is_a_clear_error_never_a_crash(tmp_path):
    assert experiments.load_result("norm", tmp_path) is None  # none there
    with pytest.raises(ValueError, match="no experiment"):
        experiments.load_result("../../etc/passwd", tmp_path)
    good = json.loads((experiments.RESULT_DIR / "norm.json").read_text(encoding="utf-8"))
    cases = {
        "{not json": "not readable JSON",
        "[" * 100_000 + "]" * 100_000: "not readable JSON|must be a JSON object",
        json.dumps([1, 2]): "must be a JSON object",
        json.dumps({**good, "format": "other/9"}): "format",
        json.dumps({**good, "key": "positions"}): "not of 'norm'",
        json.dumps({**good, "variants": [good["variants"][0]] * 9}): "1 to 8",
        json.dumps({**good, "variants": [{**good["variants"][0], "losses": "lots"}]}): "losses",
        json.dumps({**good, "variants": [{**good["variants"][0], "name": {"x": 1}}]}): "name",
        json.dumps({**good, "variants": [{**good["variants"][0], "params": {"total": -1}}]}): "params",
        json.dumps({**good, "variants": [{**good["variants"][0], "evaluation": {"lm": {"gap": "x"}}}]}): "lm",
        json.dumps({**good, "variants": [{**good["variants"][0], "losses": [1.0, float("nan")]}]}): "NaN|finite",
    }
    for text, message in cases.items():
        _write(tmp_path, "norm", text)
        with pytest.raises(ValueError, match=message):
            experiments.load_result("norm", tmp_path)
    big = tmp_path / "big"
    big.mkdir()
    _write(big, "norm", " " * (experiments.MAX_FILE_BYTES + 1))
    with pytest.raises(ValueError, match="larger than"):
        experiments.load_result("norm", big)


def test_a_loaded_result_keeps_only_checked_fields(tmp_path):
    good = json.loads((experiments.RESULT_DIR / "norm.json").read_text(encoding="utf-8"))
    good["variants"][0]["name"] = "<img src=x onerror=alert(1)>"
    good["variants"][0]["evil"] = "x" * 100
    good["title"] = "<script>"
    _write(tmp_path, "norm", good)
    result = experiments.load_result("norm", tmp_path)
    assert "evil" not in result["variants"][0]
    fig = lab.loss_curves([{"name": result["variants"][0]["name"], "losses": [1.0]}])
    assert "<img" not in fig.data[-1].name and style.safe_label("<img") in fig.data[-1].name
    assert "<img" not in lab.experiment_table(result)


def test_thin_keeps_at_most_500_block_means():
    losses, stride = experiments.thin([float(i) for i in range(1200)])
    assert stride == 3 and len(losses) == 400 and losses[0] == pytest.approx(1.0)
    assert experiments.thin([1.0, 2.0]) == ([1.0, 2.0], 1)


def test_run_trains_every_variant_and_writes_the_result(tmp_path):
    result = experiments.run("norm", tmp_path, steps=2, stories=40, evaluate=20, parallel=2)
    written = experiments.load_result("norm", tmp_path)
    assert written["variants"] and [v["name"] for v in written["variants"]] == ["post-norm", "pre-norm"]
    assert result["command"] == "python -m archplay.models.training.experiments norm --steps 2"
    for v in result["variants"]:
        assert len(v["losses"]) == 2 and v["recipe"]["steps"] == 2 and v["tokens"] == 2 * 16 * 64
        assert v["evaluation"]["lm"]["gap"] > 0 and v["params"]["total"] > 0 and v["train_flops"] > 0
    assert written["variants"][1]["losses"] == result["variants"][1]["losses"]


def test_a_scaling_result_is_fitted_against_parameters_and_compute():
    variants = [{"name": f"w{n}", "params": {"non_embedding": n}, "train_flops": 6.0 * n * 1e5,
                 "evaluation": {"lm": {"cross_entropy": 1.5 + 30 * n ** -0.3}}} for n in (1e4, 1e5, 1e6)]  # fmt: skip
    s = experiments.scaling_fit(variants, 1.5)
    assert s["fit_params"]["alpha"] == pytest.approx(0.3) and s["fit_params"]["r2"] == pytest.approx(1.0)
    assert s["fit_compute"]["alpha"] == pytest.approx(0.3)


@pytest.mark.parametrize("key", KEYS)
def test_the_labs_experiment_view_draws_the_variants_losses(key):
    result = experiments.load_result(key)
    view = lab.experiment_view(key)
    assert set(view) == set(lab.EXPERIMENT_FIELDS)
    traces = {t.name: t for t in view["curves"].data}
    for v in result["variants"]:
        name = style.safe_label(v["name"])
        assert list(traces[f"{name} (each step)"].y) == pytest.approx(v["losses"])
        assert name in traces
    floor = result["entropy_floor"]
    assert list(view["finals"].data[0].y) == pytest.approx(  # the gap to the floor, per variant
        [v["evaluation"]["lm"]["cross_entropy"] - floor for v in result["variants"]])
    assert not any(t.showlegend is not False for t in view["curves"].data if t.name.endswith("(validation)"))
    assert experiments.command(key) in view["command"] and result["question"] in view["about"].replace("\\", "")
    assert view["table"].count("\n| **") == len(result["variants"])
    if key == "scaling":
        pts = result["scaling"]["points"]
        assert list(view["scaling_params"].data[0].x) == [p["params"] for p in pts]
        assert list(view["scaling_compute"].data[0].x) == [p["compute"] for p in pts]
        assert len(view["scaling_params"].data) == 2  # the points and the fitted law
    else:
        assert view["scaling_params"] is None and view["scaling_compute"] is None


def test_showing_an_experiment_is_instant_after_the_first_read():
    import time

    lab.experiment_view("positions")
    t = time.perf_counter()
    lab.experiment_result("positions")
    assert time.perf_counter() - t < 0.05
    assert lab.experiment_view("nope")["curves"] is None


def test_experiment_figures_escape_names_and_zoom_to_where_the_runs_end():
    from archplay.viz.lab import experiment_curves, gap_bars

    runs = [{"name": "<b>a</b>", "losses": [7.0, 3.0, 2.2, 2.2], "validation": [[4, 2.3]], "cross_entropy": 2.3},
            {"name": "b", "losses": [7.0, 4.0, 2.5, 2.4], "cross_entropy": 2.5}]  # fmt: skip
    fig = experiment_curves(runs, floor=1.7, title="t")
    assert fig.layout.yaxis.range[0] < 1.7 and fig.layout.yaxis.range[1] < 7.0  # zoomed to the ends (+1 nat)
    assert fig.layout.legend.y < 0 and "<b>" not in "".join(t.name for t in fig.data)
    bars = gap_bars(runs, 1.7)
    assert list(bars.data[0].y) == pytest.approx([0.6, 0.8]) and list(bars.data[0].x) == ["&lt;b&gt;a&lt;/b&gt;", "b"]
