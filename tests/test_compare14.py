"""Issue 14: Compare side by side, and a latency note that says what was measured.

Four panels stand in one row at 1024 px, each figure's title fits its ~230 px column, the
surprisal charts share one y range (so equal bars are equal surprise), and the note under the
latency chart states the slopes fitted to the timings it was given, not slopes it assumes.
"""

from __future__ import annotations

import math

import gradio as gr
import numpy as np
import pytest

from archplay.app import compare
from archplay.app.catalog import Catalog
from archplay.models.analysis.timing import LENGTHS, Timing, growth
from archplay.viz.compare import MAP_HEIGHT, SUB_CHARS, TITLE_CHARS, panel_title, shared_top, surprisal_bars

TEXT = "Sara has a pink letter. Then she reads her letter. Sara goes to the"
FOUR = ["gpt", "bert", "moe", "mamba"]
GAP_PX = 16  # Gradio's gap between the columns of a row


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_names([], device="cpu", log=lambda m: None)


@pytest.fixture(scope="module")
def four(catalog):
    status, panels = compare.compare(catalog, FOUR, TEXT)
    assert status.startswith("✓") and all(not p.message for p in panels), status
    return panels


def power_law(exponent: float, scale: float = 0.01) -> list[Timing]:
    return [Timing(n, scale * n**exponent, n > 1024) for n in LENGTHS]


# --------------------------------------------------------------------------- one scale for every panel


def test_four_panels_share_one_surprisal_scale(four):
    ranges = [tuple(p.surprisal.layout.yaxis.range) for p in four]
    assert len(set(ranges)) == 1, ranges
    low, high = ranges[0]
    largest = max(b for p in four for b in p.bits if math.isfinite(b))
    assert low == 0 and high >= largest
    assert any(max(b for b in p.bits if math.isfinite(b)) < largest for p in four)  # the scale is not each one's own
    spans = {tuple(p.surprisal.layout.xaxis.range) for p in four}  # position i sits at one place in every panel
    assert spans == {(-0.5, max(len(p.bits) for p in four) - 0.5)}
    for p in four:  # the figure still holds each model's own bits
        np.testing.assert_allclose(np.asarray(p.surprisal.data[0].y, dtype=float), p.bits, equal_nan=True)


def test_every_panel_has_the_same_plot_area():
    """A two-line title and a three-line one leave the same plot height: one scale, one size."""
    short = surprisal_bars([math.nan, 1.0], ["a", "b"], y_max=4)
    long = surprisal_bars([math.nan, 1.0], ["a", "b"], title="Pseudo-surprisal", note="each token masked in turn",
                          y_max=4)  # fmt: skip
    assert short.layout.margin.t == long.layout.margin.t and short.layout.height == long.layout.height


@pytest.mark.parametrize("lists, top", [
    ([[math.nan, 2.2], [7.9, 1.0]], 9.0), ([[math.nan], []], None), ([[0.1]], 1.0), ([[8.0], [math.nan]], 9.0),
])  # fmt: skip
def test_shared_top_covers_the_largest_bits(lists, top):
    assert shared_top(lists) == top


# --------------------------------------------------------------------------- titles that fit


def test_panel_maps_have_short_titles_and_one_height(four):
    for p in four:
        lines = p.view.layout.title.text.split("<br>")
        assert len(lines[0]) <= TITLE_CHARS, lines
        assert all(len(line.removeprefix("<sup>").removesuffix("</sup>")) <= SUB_CHARS for line in lines[1:]), lines
        assert p.view.layout.height == MAP_HEIGHT
        assert p.view.layout.margin.t >= 16 + 13 * (len(lines) - 1)  # room for every line above the plot
    assert four[0].view.layout.title.text.startswith("Attention, layer 3, mean of heads")
    assert four[3].view.layout.title.text.startswith("Hidden attention, layer 5")  # Mamba's, once cut off


def test_panel_title_wraps_long_text():
    text = panel_title("Router, block 3 (MoE layer 2 of 3) with a longer name", "a note " * 10)
    lines = text.split("<br>")
    assert len(lines) >= 4 and all(len(line) <= SUB_CHARS + len("<sup></sup>") for line in lines)


def test_the_panel_header_is_short_lines(four):
    gpt, _, moe, _ = four
    assert gpt.title.startswith("#### gpt\n") and "0.99 M parameters" in gpt.title
    assert "active per token" in moe.title and "active" not in gpt.title
    assert all(len(line) <= 40 for line in moe.title.split("\n")[1:]), moe.title  # fits a ~230 px column


# --------------------------------------------------------------------------- one row


def test_four_panels_fit_one_row_at_1024_px(catalog):
    assert 4 * compare.PANEL_MIN_WIDTH + 3 * GAP_PX <= 1000
    with gr.Blocks() as demo:
        ui = compare.build(catalog, demo)
    rows = {id(slot.column.parent) for slot in ui.slots}
    assert len(rows) == 1 and isinstance(ui.slots[0].column.parent, gr.Row)
    assert [slot.column.min_width for slot in ui.slots] == [compare.PANEL_MIN_WIDTH] * compare.MAX_MODELS
    assert len({slot.column.scale for slot in ui.slots}) == 1  # equal columns


# --------------------------------------------------------------------------- the latency note


def test_latency_note_states_the_slopes_of_its_timings():
    measured = {"gpt": (power_law(0.62), 2), "mamba": (power_law(0.85), 1)}
    note = compare.latency_note(measured)
    assert f"gpt {growth(measured['gpt'][0]):.2f}" in note and "gpt 0.62" in note and "mamba 0.85" in note
    assert "512 to 2048 tokens" in note
    assert "below the asymptotic 2 (attention) and 1 (scan)" in note and "fixed per-call costs" in note


def test_latency_note_claims_nothing_the_numbers_do_not_show():
    note = compare.latency_note({"gpt": (power_law(2.0), 2), "mamba": (power_law(0.5), 1)})
    assert "gpt 2.00" in note and "mamba 0.50" in note
    assert note.rstrip(".").endswith("mamba") and "gpt" not in note.split("Below")[1]  # only mamba is below
    reached = compare.latency_note({"gpt": (power_law(1.97), 2), "mamba": (power_law(0.95), 1)})
    assert "gpt 1.97, mamba 0.95." in reached and "below" not in reached.lower()  # 0.95 is within noise of 1
    assert "At or above the asymptotic 2 (attention): gpt. At or above the asymptotic 1 (scan): mamba." in reached
    assert "too few lengths" in compare.latency_note({"gpt": (power_law(1.0)[:4], 2)})  # one point from 512 up


def test_latency_reports_the_measured_slopes(catalog, monkeypatch):
    exponents = {"gpt": 0.7, "mamba": 1.2}
    monkeypatch.setattr(compare, "forward_latency",
                        lambda model, lengths, stop=None: power_law(exponents[model.config.name]))  # fmt: skip
    chart, note = compare.latency(catalog, ["gpt", "mamba"])
    assert note.startswith("✓ Measured log-log slopes, 512 to 2048 tokens: gpt 0.70, mamba 1.20.")
    assert "Below the asymptotic 2 (attention), fixed per-call costs still dominating: gpt." in note
    assert "At or above the asymptotic 1 (scan): mamba." in note
    assert len([t for t in chart.data if not t.name.startswith("∝")]) == 2
    _, unknown = compare.latency(catalog, ["nope"])
    assert unknown.startswith("✕") and "Unknown model" in unknown and "✓" not in unknown


def test_latency_help_makes_no_claim_about_measured_slopes(catalog):
    assert "stays at slope" not in compare.LATENCY_HELP and "bend" not in compare.LATENCY_HELP
    assert "measured slope" in compare.LATENCY_HELP
    slopes = {key: compare.asymptotic_slope(catalog.get(key)) for key in ("gpt", "bert", "t5", "moe", "mamba")}
    assert slopes == {"gpt": 2, "bert": 2, "t5": 2, "moe": 2, "mamba": 1}
