"""Issue 15: the Lab's figures (loss curves against the floor, runs side by side, a scaling fit)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from archplay.models.analysis.scaling import fit_power_law, predict
from archplay.viz import lab


def test_smooth_is_a_debiased_moving_average():
    assert lab.smooth([2.0, 2.0, 2.0]).tolist() == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    s = lab.smooth([4.0, 0.0], weight=0.5)
    assert s.tolist() == pytest.approx([4.0, (0.5 * 0.5 * 4.0) / 0.75])


def test_loss_curves_draw_each_run_its_average_the_floor_and_the_reference():
    runs = [{"name": "rope", "losses": [5.0, 4.0, 3.0, 2.5], "validation": [[4, 2.6]]},
            {"name": "<b>none</b>", "losses": [5.0, 4.5, 4.0, 3.8]}]  # fmt: skip
    fig = lab.loss_curves(runs, floor=2.1, reference={"name": "built-in gpt", "losses": [5.0, 3.0, 2.4, 2.3]})
    names = [t.name for t in fig.data]
    assert names == ["built-in gpt", "rope (each step)", "rope", "rope (validation)",
                     "&lt;b&gt;none&lt;/b&gt; (each step)", "&lt;b&gt;none&lt;/b&gt;"]  # markup escaped
    assert list(fig.data[1].y) == [5.0, 4.0, 3.0, 2.5]  # the raw losses, step by step
    assert list(fig.data[2].y) == pytest.approx(lab.smooth([5.0, 4.0, 3.0, 2.5]).tolist())
    assert list(fig.data[2].x) == [1, 2, 3, 4]
    (floor,) = fig.layout.shapes
    assert floor.y0 == floor.y1 == 2.1
    assert "2.100" in fig.layout.annotations[0].text
    assert fig.layout.yaxis.range[0] < 2.1 < fig.layout.yaxis.range[1]  # the floor is on screen


def test_a_long_run_is_thinned_but_keeps_its_last_step():
    losses = np.linspace(6, 2, 10_000)
    fig = lab.loss_curves([{"name": "long", "losses": losses}])
    assert len(fig.data[0].x) <= 2000 and fig.data[0].x[-1] == 10_000 and fig.data[0].y[-1] == pytest.approx(2.0)


def test_final_losses_show_the_gap_to_the_floor():
    fig = lab.final_losses([{"name": "a", "cross_entropy": 2.5}, {"name": "b", "losses": [3.0, 3.0]}], floor=2.0)
    assert list(fig.data[0].y) == pytest.approx([2.5, 3.0])
    assert list(fig.data[0].text) == ["2.500 (gap +0.500)", "3.000 (gap +1.000)"]


def test_power_law_fit_recovers_a_known_law():
    xs = [1e5, 3e5, 1e6, 3e6]
    law = {"a": 40.0, "alpha": 0.3, "floor": 1.7}
    ys = [predict(law, x) for x in xs]
    fit = fit_power_law(xs, ys, floor=1.7)
    assert fit["a"] == pytest.approx(40.0, rel=1e-9) and fit["alpha"] == pytest.approx(0.3, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    fig = lab.scaling_chart([{"name": f"w{i}", "params": x, "compute": 6 * x * 1e6, "loss": y}
                             for i, (x, y) in enumerate(zip(xs, ys))], fit)  # fmt: skip
    assert fig.layout.xaxis.type == "log" and "0.300" in fig.layout.title.text
    line = fig.data[1]
    assert line.y[0] == pytest.approx(predict(fit, line.x[0]))


@pytest.mark.parametrize("xs, ys", [([1e5], [3.0]), ([1e5, 1e5], [3.0, 2.9]), ([1e5, 1e6], [1.0, 0.5])])
def test_power_law_fit_refuses_what_it_cannot_fit(xs, ys):
    with pytest.raises(ValueError, match="at least two runs"):
        fit_power_law(xs, ys, floor=1.5)


def test_scaling_chart_checks_its_axis():
    with pytest.raises(ValueError, match="params"):
        lab.scaling_chart([], None, x="tokens")
    assert math.isfinite(lab.scaling_chart([{"name": "a", "params": 1e5, "compute": 1e12, "loss": 3.0}]).data[0].y[0])
