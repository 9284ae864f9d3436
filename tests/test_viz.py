"""viz builders: figures must carry exactly the data they were given, labelled at the right places."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from archplay.models.sampling import entropy, staged_distribution
from archplay.viz import (
    attention_heatmap,
    attention_mask_heatmap,
    delta_bars,
    distribution_figure,
    expert_load_bars,
    hidden_attention_heatmap,
    routing_heatmap,
)
from archplay.viz.style import expert_colour

SENTENCE = "the cat sat on the mat because the cat was tired".split()  # "the" x3, "cat" x2


# ---------------------------------------------------------------- helpers


def random_attention(tq: int, tk: int, seed: int = 0, causal: bool = False) -> torch.Tensor:
    """A (tq, tk) row-stochastic matrix from a seeded softmax; causal puts exact zeros above the diagonal."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(tq, tk, generator=g) * 2
    if causal:
        scores = scores.masked_fill(torch.ones(tq, tk, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


def staged(vocab: int = 99, seed: int = 0, temperature=0.8, top_k=50, top_p=0.9, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, generator=g) * scale
    return staged_distribution(logits, temperature, top_k, top_p)


class LabelRecorder:
    """A labels_for that records every call and labels id i as "t<i>"."""

    def __init__(self, fmt="t{}"):
        self.calls: list[list[int]] = []
        self.fmt = fmt

    def __call__(self, ids):
        self.calls.append(list(ids))
        return [self.fmt.format(i) for i in ids]


def expected_top_ids(p: torch.Tensor, n: int) -> list[int]:
    """Reference ranking: probability descending, ties by smaller id (a plain Python sort)."""
    values = p.tolist()
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:n]


def trace(fig: go.Figure, name: str):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, f"expected one trace named {name!r}, got {[t.name for t in fig.data]}"
    return matches[0]


def shown_ids(fig: go.Figure) -> list[int]:
    return [int(row[1]) for row in trace(fig, "final").customdata]


# ---------------------------------------------------------------- attention heatmap


@pytest.mark.parametrize("as_numpy", [False, True])
def test_heatmap_z_is_exactly_the_weights(as_numpy):
    w = random_attention(7, 9, seed=1)
    given = w.numpy().astype(np.float64) if as_numpy else w
    labels_q, labels_k = [f"q{i}" for i in range(7)], [f"k{j}" for j in range(9)]
    fig = attention_heatmap(given, labels_q, labels_k, title="L0 H1")
    hm = fig.data[0]
    assert hm.type == "heatmap"
    z = np.asarray(hm.z)
    assert z.shape == (7, 9)  # row i = query i
    np.testing.assert_array_equal(z, w.numpy().astype(z.dtype))
    np.testing.assert_array_equal(np.asarray(hm.x), np.arange(9))
    np.testing.assert_array_equal(np.asarray(hm.y), np.arange(7))
    assert hm.zmin == 0
    assert hm.zmax == pytest.approx(float(w.max()))
    assert hm.colorbar.title.text == "weight"
    assert fig.layout.title.text == "L0 H1"
    assert fig.layout.template == pio.templates["plotly_white"]


def test_heatmap_axes_labels_and_hover_keep_repeated_tokens_apart():
    n = len(SENTENCE)
    fig = attention_heatmap(random_attention(n, n, seed=2, causal=True), SENTENCE, SENTENCE)
    xa, ya = fig.layout.xaxis, fig.layout.yaxis
    assert list(xa.tickvals) == list(range(n)) and list(ya.tickvals) == list(range(n))
    assert list(xa.ticktext) == SENTENCE and list(ya.ticktext) == SENTENCE
    assert ya.autorange == "reversed"  # first token at the top
    assert ya.scaleanchor == "x" and ya.scaleratio == 1  # square cells
    assert xa.title.text and ya.title.text

    cd = np.asarray(fig.data[0].customdata)
    assert cd.shape == (n, n)
    for i in range(n):
        for j in range(n):
            assert cd[i][j] == f"‘{SENTENCE[i]}’ → ‘{SENTENCE[j]}’"
    # The three "the" (positions 0, 4, 7) stay three separate rows and columns.
    assert cd[4][1] == "‘the’ → ‘cat’" and cd[1][4] == "‘cat’ → ‘the’"
    assert cd[8][7] == "‘cat’ → ‘the’"

    template = fig.data[0].hovertemplate
    for part in ("%{y:d}", "%{x:d}", "%{customdata}", "weight %{z:.4f}"):
        assert part in template
    assert template.endswith("<extra></extra>")


def test_heatmap_causal_zeros_stay_zero_and_colour_starts_at_zero():
    w = random_attention(6, 6, seed=3, causal=True)
    fig = attention_heatmap(w, SENTENCE[:6], SENTENCE[:6])
    z = np.asarray(fig.data[0].z)
    assert np.all(z[np.triu_indices(6, 1)] == 0)
    assert fig.data[0].zmin == 0 and fig.data[0].zmax == pytest.approx(float(w.max()))


def test_heatmap_ticks_thin_out_evenly_on_long_sequences():
    n = 200
    labels = [f"w{i % 13}" for i in range(n)]
    fig = attention_heatmap(random_attention(n, n, seed=4), labels, labels, max_ticks=48)
    tickvals = list(fig.layout.xaxis.tickvals)
    assert 2 <= len(tickvals) <= 48
    assert tickvals[0] == 0 and tickvals[-1] == n - 1
    gaps = np.diff(tickvals)
    assert gaps.max() - gaps.min() <= 1
    assert list(fig.layout.xaxis.ticktext) == [labels[v] for v in tickvals]
    assert list(fig.layout.yaxis.ticktext) == [labels[v] for v in fig.layout.yaxis.tickvals]
    # Hover still names every cell, not only the ticked ones.
    cd = np.asarray(fig.data[0].customdata)
    assert cd[101][57] == f"‘{labels[101]}’ → ‘{labels[57]}’"


def test_heatmap_escapes_html_in_labels():
    labels = ["<br>", "a&b", "x"]
    fig = attention_heatmap(random_attention(3, 3), labels, labels)
    assert list(fig.layout.xaxis.ticktext) == ["&lt;br&gt;", "a&amp;b", "x"]
    assert np.asarray(fig.data[0].customdata)[0][1] == "‘&lt;br&gt;’ → ‘a&amp;b’"


def test_heatmap_rejects_label_shape_mismatch():
    with pytest.raises(ValueError):
        attention_heatmap(random_attention(3, 4), ["a", "b", "c"], ["a", "b", "c"])
    with pytest.raises(ValueError):
        attention_heatmap(torch.rand(2, 3, 3), ["a", "b", "c"], ["a", "b", "c"])


def test_mask_heatmap_is_the_tril_as_ints():
    n = 8
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    labels = SENTENCE[:n]
    fig = attention_mask_heatmap(allowed, labels, labels, title="Causal mask")
    hm = fig.data[0]
    z = np.asarray(hm.z)
    assert np.issubdtype(z.dtype, np.integer)
    np.testing.assert_array_equal(z, np.tril(np.ones((n, n), dtype=int)))
    assert (hm.zmin, hm.zmax) == (0, 1)
    assert hm.customdata is None and "1 = may attend" in hm.hovertemplate  # positions, not per-cell strings
    assert fig.layout.yaxis.autorange == "reversed"
    assert list(fig.layout.xaxis.ticktext) == labels
    assert fig.layout.title.text == "Causal mask"
    assert hm.hovertemplate.endswith("<extra></extra>")


# ---------------------------------------------------------------- sampling distribution


def test_bars_are_the_true_top_n_with_exact_stage_values():
    st = staged(99, seed=5)
    labels_for = LabelRecorder()
    fig = distribution_figure(st, labels_for, top_n=20)
    ids = expected_top_ids(st.raw, 20)
    assert shown_ids(fig) == ids
    for name, values in (("raw", st.raw), ("after temperature", st.tempered), ("final", st.final)):
        bar = trace(fig, name)
        assert bar.type == "bar"
        np.testing.assert_array_equal(np.asarray(bar.x), np.arange(20))
        np.testing.assert_array_equal(np.asarray(bar.y), values.numpy()[ids])
        assert [int(r[1]) for r in bar.customdata] == ids
        assert "%{y:.4f}" in bar.hovertemplate and "%{customdata[0]}" in bar.hovertemplate
    assert list(fig.layout.xaxis.tickvals) == list(range(20))
    assert list(fig.layout.xaxis.ticktext) == [f"t{i}" for i in ids]
    assert fig.layout.barmode == "group"


def test_ties_are_ranked_by_smaller_id():
    logits = torch.zeros(99)
    logits[[50, 7, 30]] = 2.0
    st = staged_distribution(logits, 1.0, 0, 1.0)
    fig = distribution_figure(st, LabelRecorder(), top_n=6)
    assert shown_ids(fig) == [7, 30, 50, 0, 1, 2]


@pytest.mark.parametrize(
    "settings, n_kept",
    [
        (dict(temperature=1.0, top_k=3, top_p=1.0), 3),
        (dict(temperature=1.0, top_k=0, top_p=0.5), None),
        (dict(temperature=0.7, top_k=10, top_p=0.8), None),
        (dict(temperature=0.0, top_k=0, top_p=1.0), 1),  # greedy
    ],
)
def test_kept_markers_match_the_kept_set(settings, n_kept):
    st = staged(99, seed=6, **settings)
    fig = distribution_figure(st, LabelRecorder(), top_n=20)
    ids = shown_ids(fig)
    kept = st.kept.numpy()[ids]
    if n_kept is not None:
        assert int(st.kept.sum()) == n_kept
        assert int(kept.sum()) == n_kept  # all kept tokens are among the top 20 by raw
    assert 0 < kept.sum() < 20  # the test exercises both kept and removed tokens
    ranks = np.arange(20)
    np.testing.assert_array_equal(np.asarray(trace(fig, "kept").x), ranks[kept])
    np.testing.assert_array_equal(np.asarray(trace(fig, "removed").x), ranks[~kept])
    for name in ("raw", "after temperature", "final"):
        flags = [row[2] for row in trace(fig, name).customdata]
        assert flags == ["kept" if k else "removed" for k in kept]
    final = np.asarray(trace(fig, "final").y)
    assert np.all(final[~kept] == 0) and np.all(final[kept] > 0)
    # Removed tokens' raw bars are drawn faded, kept ones in the solid stage colour.
    colours = list(trace(fig, "raw").marker.color)
    assert len({colours[r] for r in ranks[kept]}) == 1 and len({colours[r] for r in ranks[~kept]}) == 1
    assert colours[int(ranks[kept][0])] != colours[int(ranks[~kept][0])]


def test_greedy_keeps_exactly_the_argmax():
    st = staged(99, seed=7, temperature=0.0, top_k=0, top_p=1.0)
    fig = distribution_figure(st, LabelRecorder())
    assert list(trace(fig, "kept").x) == [0]
    assert shown_ids(fig)[0] == int(st.raw.argmax())
    assert "1 of 99 tokens kept" in fig.layout.title.text
    assert "T=0" in fig.layout.title.text


def test_cumulative_is_the_sorted_tempered_cumsum_over_the_full_vocab():
    st = staged(99, seed=8, temperature=1.5, top_k=0, top_p=0.9)
    fig = distribution_figure(st, LabelRecorder(), top_n=15)
    cum = trace(fig, "cumulative")
    assert cum.yaxis == "y2"
    expected = torch.sort(st.tempered.double(), descending=True).values.cumsum(0)[:15].numpy()
    np.testing.assert_allclose(np.asarray(cum.y, dtype=float), expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(cum.x), np.arange(15))
    assert fig.layout.yaxis2.overlaying == "y" and tuple(fig.layout.yaxis2.range) == (0, 1.05)


@pytest.mark.parametrize("top_p, text", [(0.9, "top-p = 0.90"), (0.5, "top-p = 0.50"), (1.0, "top-p off")])
def test_top_p_threshold_line(top_p, text):
    st = staged(99, seed=9, temperature=1.0, top_k=0, top_p=top_p)
    fig = distribution_figure(st, LabelRecorder(), top_n=10)
    line = trace(fig, "top-p threshold")
    assert line.yaxis == "y2"
    assert list(line.y) == [top_p, top_p]
    assert line.line.dash == "dash"
    assert [a.text for a in fig.layout.annotations if a.yref == "y2" and a.y == top_p] == [text]


def test_full_vocab_labels_once_and_figure_stays_small():
    st = staged(50257, seed=10, temperature=0.8, top_k=50, top_p=0.9, scale=3.0)
    labels_for = LabelRecorder(fmt="tok{}")
    fig = distribution_figure(st, labels_for, top_n=20)
    ids = expected_top_ids(st.raw, 20)
    assert labels_for.calls == [ids]  # once, with exactly the shown ids, in rank order
    assert all(type(i) is int for i in labels_for.calls[0])
    assert list(fig.layout.xaxis.ticktext) == [f"tok{i}" for i in ids]
    np.testing.assert_array_equal(np.asarray(trace(fig, "final").y), st.final.numpy()[ids])
    assert max(len(t.x) for t in fig.data) <= 20
    assert len(fig.to_json()) < 40_000


def test_title_reports_settings_kept_count_and_entropies():
    st = staged(50257, seed=11, temperature=0.8, top_k=50, top_p=0.9, scale=3.0)
    fig = distribution_figure(st, LabelRecorder(), title="Next token after 'the'")
    title = fig.layout.title.text
    assert title.startswith("Next token after 'the'")
    assert "T=0.80 · top-k 50 · top-p 0.90" in title
    match = re.search(r"(\d[\d ]*) of ([\d ]+) tokens kept", title)
    assert match, title
    assert int(match.group(1).replace(" ", "")) == int(st.kept.sum())
    assert match.group(2) == "50 257"
    match = re.search(r"entropy ([\d.]+) → ([\d.]+) nats", title)
    assert match, title
    assert float(match.group(1)) == pytest.approx(float(entropy(st.raw)), abs=0.006)
    assert float(match.group(2)) == pytest.approx(float(entropy(st.final)), abs=0.006)


def test_switched_off_stages_read_off():
    st = staged(99, seed=12, temperature=1.0, top_k=0, top_p=1.0)
    fig = distribution_figure(st, LabelRecorder())
    assert "top-k off · top-p off · 99 of 99 tokens kept" in fig.layout.title.text
    assert len(trace(fig, "removed").x) == 0


def test_numpy_staged_and_short_vocab():
    st = staged(99, seed=13, temperature=1.0, top_k=5, top_p=1.0)
    as_numpy = SimpleNamespace(
        raw=st.raw.numpy(), tempered=st.tempered.numpy(), final=st.final.numpy(), kept=st.kept.numpy(),
        temperature=1.0, top_k=5, top_p=1.0, entropy=float(st.entropy), raw_entropy=float(st.raw_entropy),
    )
    fig = distribution_figure(as_numpy, LabelRecorder(), top_n=500)
    assert shown_ids(fig) == expected_top_ids(st.raw, 99)  # top_n beyond the vocabulary shows it all
    np.testing.assert_array_equal(np.asarray(trace(fig, "final").y), st.final.numpy()[shown_ids(fig)])
    assert len(trace(fig, "kept").x) == 5


def test_labels_for_must_return_one_label_per_id():
    with pytest.raises(ValueError):
        distribution_figure(staged(99), lambda ids: ["only one"])


def test_viz_imports_no_gradio_or_models():
    import archplay.viz

    modules = sorted(Path(archplay.viz.__file__).parent.glob("*.py"))
    assert len(modules) >= 8
    for path in modules:
        source = path.read_text(encoding="utf-8")
        pattern = r"^\s*(import|from)\s+(gradio|(archplay\.)?models|\.\.models)\b"
        assert not re.search(pattern, source, re.M), path.name


def test_heatmap_axis_titles_and_hover_words_are_configurable():
    w = random_attention(3, 5, seed=6)
    fig = attention_heatmap(w, ["a", "b", "c"], list("vwxyz"), value_name="p", query_title="target",
                            key_title="source", query_word="step", key_word="src")  # fmt: skip
    assert fig.layout.yaxis.title.text == "target" and fig.layout.xaxis.title.text == "source"
    assert fig.data[0].hovertemplate.startswith("step %{y:d} → src %{x:d}<br>")
    assert "p %{z:.4f}" in fig.data[0].hovertemplate and fig.data[0].colorbar.title.text == "p"
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), w.numpy())


# ---------------------------------------------------------------- mixture-of-experts routing


def router(tokens: int, experts: int, k: int, seed: int = 0):
    """Router probabilities (T, E) and the top-k experts (T, k), largest first, as the model picks them."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(tokens, experts, generator=g) * 2, dim=-1)
    return probs, torch.topk(probs, k, dim=-1).indices


def test_routing_heatmap_z_is_the_probabilities_and_rings_are_exactly_the_chosen_experts():
    probs, chosen = router(7, 5, 2, seed=1)
    labels = ["the", "cat", "<b>", "sat", "on", "the", "mat"]
    fig = routing_heatmap(probs, chosen, labels, title="Router")
    hm = trace(fig, "router probability")
    z = np.asarray(hm.z)
    assert z.shape == (7, 5)  # row = token, column = expert
    np.testing.assert_array_equal(z, probs.numpy())
    np.testing.assert_allclose(z.sum(1), 1.0, rtol=1e-6)
    assert hm.zmin == 0 and hm.zmax == pytest.approx(float(probs.max()))
    assert fig.layout.yaxis.autorange == "reversed"  # first token at the top

    marks = trace(fig, "chosen")
    xs, ys = np.asarray(marks.x), np.asarray(marks.y)
    assert len(xs) == 7 * 2
    np.testing.assert_array_equal(xs, chosen.reshape(-1).numpy())  # row-major over (token, slot)
    np.testing.assert_array_equal(ys, np.repeat(np.arange(7), 2))
    assert {(int(y), int(x)) for x, y in zip(xs, ys)} == {(t, int(e)) for t in range(7) for e in chosen[t]}
    cd = np.asarray(marks.customdata, dtype=object)
    assert [row[0] for row in cd[4:6]] == ["&lt;b&gt;", "&lt;b&gt;"]  # labels escaped
    np.testing.assert_allclose(cd[:, 2].astype(float), probs[ys, xs].numpy(), rtol=1e-6)
    # rank 1 = the larger probability of the token's two; topk already orders them so
    assert list(cd[:, 1]) == [1, 2] * 7
    assert list(marks.marker.symbol) == ["circle", "circle-open"] * 7


def test_routing_heatmap_ranks_follow_probability_not_slot_order_and_hover_names_cells():
    probs, chosen = router(4, 3, 2, seed=2)
    swapped = chosen.flip(-1)  # smallest first: the ranks must still put the larger one first
    fig = routing_heatmap(probs, swapped, ["a", "b", "c", "d"], experts=["E0", "E<1>", "E2"])
    cd = np.asarray(trace(fig, "chosen").customdata, dtype=object)
    assert list(cd[:, 1]) == [2, 1] * 4
    cells = np.asarray(trace(fig, "router probability").customdata)
    assert cells[2][1] == "‘c’ → ‘E&lt;1&gt;’"
    assert "router probability %{z:.4f}" in trace(fig, "router probability").hovertemplate
    assert "E&lt;1&gt;" in fig.layout.xaxis.ticktext[1] and expert_colour(1) in fig.layout.xaxis.ticktext[1]


def test_routing_heatmap_rejects_mismatched_inputs():
    probs, chosen = router(4, 3, 2)
    with pytest.raises(ValueError):
        routing_heatmap(probs, chosen[:3], list("abcd"))
    with pytest.raises(ValueError):
        routing_heatmap(probs, chosen, list("abc"))
    with pytest.raises(ValueError):
        routing_heatmap(probs, chosen + 5, list("abcd"))  # no expert 5
    with pytest.raises(ValueError):
        routing_heatmap(probs, chosen.float(), list("abcd"))


def test_expert_load_bars_are_the_shares_with_counts_and_the_even_line():
    slots = torch.tensor([5, 0, 2, 1])
    load = slots.float() / slots.sum()
    fig = expert_load_bars(load, slots=slots, title="Load")
    bars = trace(fig, "load")
    np.testing.assert_array_equal(np.asarray(bars.y), load.numpy())
    np.testing.assert_array_equal(np.asarray(bars.x), np.arange(4))
    assert [int(row[1]) for row in bars.customdata] == [5, 0, 2, 1]
    assert [row[0] for row in bars.customdata] == ["expert 0", "expert 1", "expert 2", "expert 3"]
    assert list(bars.marker.color) == [expert_colour(e) for e in range(4)]
    (even,) = fig.layout.shapes
    assert even.y0 == even.y1 == 0.25
    assert "balanced 25%" in fig.layout.annotations[0].text
    with pytest.raises(ValueError):
        expert_load_bars(torch.ones(2, 2))


def test_expert_colours_repeat_after_ten():
    assert expert_colour(0) == expert_colour(10) and expert_colour(0) != expert_colour(1)
    assert re.fullmatch(r"#[0-9a-f]{6}", expert_colour(13))


# ---------------------------------------------------------------- state-space: hidden attention and Δ


def test_hidden_attention_heatmap_is_the_matrix_with_an_empty_upper_triangle():
    g = torch.Generator().manual_seed(5)
    alpha = (torch.rand(6, 6, generator=g) * 3).tril()  # not a probability: may exceed 1
    labels = ["a", "<i>", "c", "a", "&", "f"]
    fig = hidden_attention_heatmap(alpha, labels, title="Layer 1")
    hm = fig.data[0]
    z = np.asarray(hm.z)
    np.testing.assert_array_equal(z, alpha.numpy())
    assert np.all(z[np.triu_indices(6, 1)] == 0)
    assert hm.zmax == pytest.approx(float(alpha.max()))
    assert hm.hovertemplate.startswith("output %{y:d} → input %{x:d}") and "mean |α|" in hm.hovertemplate
    assert np.asarray(hm.customdata)[3][1] == "‘a’ → ‘&lt;i&gt;’"
    assert list(fig.layout.xaxis.ticktext) == ["a", "&lt;i&gt;", "c", "a", "&amp;", "f"]
    assert fig.layout.title.text == "Layer 1"


def test_delta_bars_are_one_value_per_token():
    delta = torch.tensor([0.1, 0.5, 0.02, 1.3])
    labels = ["x", "<br>", "y", "z"]
    fig = delta_bars(delta, labels, title="Δ")
    bars = trace(fig, "mean Δ")
    np.testing.assert_array_equal(np.asarray(bars.y), delta.numpy())
    np.testing.assert_array_equal(np.asarray(bars.x), np.arange(4))
    assert list(bars.customdata) == ["x", "&lt;br&gt;", "y", "z"]
    assert list(fig.layout.xaxis.ticktext) == ["x", "&lt;br&gt;", "y", "z"]
    with pytest.raises(ValueError):
        delta_bars(delta, labels[:3])
    with pytest.raises(ValueError):
        delta_bars(torch.ones(4, 2), labels)


def test_long_inputs_hover_by_position_to_keep_the_response_small():
    from archplay.viz.attention import LABELLED_CELLS

    n = int(LABELLED_CELLS**0.5) + 1
    labels = [f"t{i}" for i in range(n)]
    weights = torch.rand(n, n)
    fig = attention_heatmap(weights, labels, labels)
    assert fig.data[0].customdata is None and "%{customdata}" not in fig.data[0].hovertemplate
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), weights.numpy())  # the values are all still there
    small = attention_heatmap(weights[:8, :8], labels[:8], labels[:8])
    assert np.asarray(small.data[0].customdata)[2][5] == "‘t2’ → ‘t5’"
