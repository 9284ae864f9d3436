"""The views added around the Explore page: the layer × head grid, the mask pattern, predictions at
any position, sampling histograms, coloured generation, and the Compare tab (handlers and figures).

Every expectation is recomputed from the models or the inputs themselves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from archplay.app import compare, session
from archplay.app.catalog import Catalog
from archplay.app.explore import attention, generation, routing, run, sampling
from archplay.models.analysis import timing
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.viz.attention import attention_grid, downsample
from archplay.viz.compare import latency_chart, surprisal_bars
from archplay.viz.sampling import sample_histogram

TEXT = "Mia has a red ball. She throws the ball to Tom. Then Tom"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_names([], device="cpu")


@pytest.fixture(scope="module")
def gpt_run(catalog):
    r = run.analyse(catalog, "gpt", TEXT)
    assert r.ok
    return r


# --------------------------------------------------------------------------- grid and mask


def test_downsample_averages_contiguous_blocks():
    z = np.arange(36, dtype=float).reshape(6, 6)
    assert downsample(z, 8) is z  # fits: untouched
    small = downsample(z, 3)  # 2 × 2 blocks
    assert small.shape == (3, 3)
    assert small[0, 0] == np.mean([0, 1, 6, 7]) and small[2, 1] == np.mean([26, 27, 32, 33])
    rows = np.full((5, 5), 0.2)  # attention-like rows summing to one stay so after averaging
    np.testing.assert_allclose(downsample(rows, 2).sum(1) * (5 / 2), 1.0)


def test_grid_thumbnails_equal_the_trace_and_frame_the_chosen_head(gpt_run):
    a = gpt_run.analysis
    fig = attention.grid_figure(a, 2, 1)
    L, H = a.n_layer, a.n_head
    assert len(fig.data) == L * H
    for i, tr in enumerate(fig.data):
        layer, head = divmod(i, H)
        assert tr.name == f"layer {layer}, head {head}"
        np.testing.assert_allclose(np.asarray(tr.z), downsample(a.attentions[layer][head].numpy(), 32), atol=1e-7)
    (frame,) = fig.layout.shapes
    x_domain = fig.layout[f"xaxis{2 * H + 1 + 1}"].domain  # layer 2, head 1 is trace 2H + 1, axis 2H + 2
    assert frame.x0 < x_domain[0] < x_domain[1] < frame.x1


def test_grid_downsamples_long_inputs():
    maps = torch.rand(2, 3, 100, 100)
    fig = attention_grid(maps, max_cells=20)
    assert all(np.asarray(t.z).shape == (20, 20) for t in fig.data)
    np.testing.assert_allclose(np.asarray(fig.data[4].z)[0, 0], maps[1, 1, :5, :5].mean().item(), rtol=1e-6)


def test_mask_patterns_follow_the_architecture(catalog, gpt_run):
    fig, text = attention.mask_figure(gpt_run.analysis, 0)
    z = np.asarray(fig.data[0].z)
    assert np.array_equal(z, np.tril(np.ones_like(z))) and "Causal" in text
    bert = run.analyse(catalog, "bert", "Sara has a pink letter. Then Sara reads her <mask>.").analysis
    fig, text = attention.mask_figure(bert, 0)
    assert np.asarray(fig.data[0].z).all() and "Bidirectional" in text
    t5 = run.analyse(catalog, "t5", "Mia has a red ball.").analysis
    cross, text = attention.mask_figure(t5, 0, "cross")
    assert np.asarray(cross.data[0].z).shape == (t5.n_steps, len(t5.ids)) and np.asarray(cross.data[0].z).all()
    dec, _ = attention.mask_figure(t5, 0, "decoder")
    zd = np.asarray(dec.data[0].z)
    assert np.array_equal(zd, np.tril(np.ones_like(zd)))


def test_sliding_window_mask(gpt_run):
    a = gpt_run.analysis
    windowed = session.Analysis(**{**a.__dict__, "windows": [3] * a.n_layer})
    fig, text = attention.mask_figure(windowed, 1)
    z = np.asarray(fig.data[0].z).astype(bool)
    i, j = np.indices(z.shape)
    assert np.array_equal(z, (j <= i) & (i - j < 3)) and "last 3 tokens" in text


@pytest.mark.parametrize("pattern, causal, rule, words", [
    ("strided", True, lambda i, j: (j <= i) & (((i - j) < 3) | ((i - j) % 3 == 0)), "a multiple of 3 back"),
    ("block", True, lambda i, j: (j <= i) & (i // 3 == j // 3), "block of 3"),
    ("strided", False, lambda i, j: (abs(i - j) < 3) | (abs(i - j) % 3 == 0), "Bidirectional strided"),
    ("block", False, lambda i, j: i // 3 == j // 3, "block of 3"),
    ("sliding", False, lambda i, j: abs(i - j) < 3, "either side"),
])  # fmt: skip
def test_local_attention_patterns_show_their_own_mask(catalog, gpt_run, pattern, causal, rule, words):
    """Issue 15: a Lab model's strided or block-local layers show that mask (they showed "causal")."""
    a = gpt_run.analysis if causal else run.analyse(catalog, "bert", "Sara has a pink letter.").analysis
    patterned = session.Analysis(**{**a.__dict__, "windows": [3] * a.n_layer, "patterns": [pattern] * a.n_layer})
    fig, text = attention.mask_figure(patterned, 1)
    z = np.asarray(fig.data[0].z).astype(bool)
    i, j = np.indices(z.shape)
    assert np.array_equal(z, rule(i, j)), (pattern, causal)
    assert words in text and "window 3" in fig.layout.title.text


# --------------------------------------------------------------------------- any position, sampling


def test_distribution_at_any_position_equals_that_rows_softmax(catalog, gpt_run):
    a = gpt_run.analysis
    for pos in (0, 4, len(a.ids) - 1):
        fig, _ = sampling.distribution(catalog, a, 1.0, 0, 1.0, None, pos)
        bars = [t for t in fig.data if t.name == "raw"][0]
        ids = [int(row[1]) for row in bars.customdata]
        expected = torch.softmax(a.logits[pos], -1)[ids].numpy()
        np.testing.assert_allclose(np.asarray(bars.y), expected, rtol=1e-5)
        assert f"(position {pos})" in fig.layout.title.text
    with pytest.raises(ValueError, match="position must be between"):
        sampling.distribution(catalog, a, 1.0, 0, 1.0, None, len(a.ids))


def test_encoder_without_a_mask_predicts_at_a_chosen_position(catalog):
    a = run.analyse(catalog, "bert", "Mia has a red ball.").analysis
    fig, msg = sampling.distribution(catalog, a)
    assert fig is None and "pick a position" in msg
    fig, _ = sampling.distribution(catalog, a, 1.0, 0, 1.0, None, 2)
    assert "position 2" in fig.layout.title.text


def test_sample_histogram_bars_are_the_draw_shares():
    draws = torch.tensor([3, 3, 1, 3, 2, 1, 3, 3])
    final = torch.tensor([0.0, 0.2, 0.1, 0.7])
    fig = sample_histogram(draws, final, lambda ids: [f"t{i}" for i in ids])
    bars, marks = fig.data
    assert [int(r[1]) for r in bars.customdata] == [3, 1, 2]  # most drawn first
    np.testing.assert_allclose(bars.y, [5 / 8, 2 / 8, 1 / 8])
    np.testing.assert_allclose(marks.y, [0.7, 0.2, 0.1])


def test_samples_are_seeded_and_respect_the_kept_set(catalog, gpt_run):
    a = gpt_run.analysis
    fig_a, note_a = sampling.samples(catalog, a, 1.0, 3, 1.0, None, None, 200, seed=5)
    fig_b, _ = sampling.samples(catalog, a, 1.0, 3, 1.0, None, None, 200, seed=5)
    assert np.array_equal(fig_a.data[0].y, fig_b.data[0].y)
    kept = torch.topk(a.logits[a.predict_at], 3).indices.tolist()
    drawn = [int(r[1]) for r in fig_a.data[0].customdata]
    assert set(drawn) <= set(kept) and sum(int(r[2]) for r in fig_a.data[0].customdata) == 200
    greedy, text = sampling.samples(catalog, a, 0.0, 0, 1.0, None, None, 1, seed=1)
    assert [int(r[1]) for r in greedy.data[0].customdata] == [int(a.logits[a.predict_at].argmax())]
    assert "100.0% probability" in text
    with pytest.raises(ValueError, match="between 1 and 10000"):
        sampling.samples(catalog, a, 1.0, 0, 1.0, None, None, 0)


def test_generation_colours_each_new_token_by_its_probability(catalog):
    steps = list(generation.generate(catalog, "gpt", TEXT, 6, 0.8, 0, 1.0, 3))
    status, coloured = steps[-1].status, steps[-1].tokens_html
    pieces = coloured.split('class="ap-gen"')[1:]
    assert len(pieces) == 6
    probs = [float(p.split('title="p = ')[1].split("%")[0]) / 100 for p in pieces]
    assert all(0 < p <= 1 for p in probs)
    mean = float(status.split("had ")[1].split("%")[0]) / 100  # the status's average, same numbers
    assert abs(mean - sum(probs) / len(probs)) < 0.002


# --------------------------------------------------------------------------- compare


def test_compare_panels_hold_each_models_own_numbers(catalog):
    status, panels = compare.compare(catalog, ["gpt", "moe", "mamba", "bert"], TEXT + " <mask>")
    assert status.startswith("✓") and [p.key for p in panels] == ["gpt", "moe", "mamba", "bert"]
    gpt = catalog.get("gpt")
    ids = gpt.tokenizer.encode(TEXT + " <mask>")
    with torch.no_grad():
        logits = gpt.model(torch.tensor([ids])).logits[0]
    expected = -torch.log_softmax(logits[:-1], -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])] / math.log(2)
    assert math.isnan(panels[0].bits[0])
    np.testing.assert_allclose(panels[0].bits[1:], expected.numpy(), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(panels[0].surprisal.data[0].y)[1:], expected.numpy(), rtol=1e-4)
    assert "active per token" in panels[1].title and "active" not in panels[0].title
    assert "Hidden attention" in panels[2].view.layout.title.text or "hidden" in panels[2].view.layout.title.text
    assert "Fills the mask" in panels[3].prediction
    assert all(not p.message for p in panels)


def test_compare_pseudo_surprisal_masks_each_token(catalog):
    _, (p,) = compare.compare(catalog, ["bert"], "Mia has a red ball.")
    bert = catalog.get("bert")
    ids = bert.tokenizer.encode("Mia has a red ball.")
    t = 2
    masked = list(ids)
    masked[t] = bert.tokenizer.mask_token_id
    with torch.no_grad():
        logp = torch.log_softmax(bert.model(torch.tensor([masked])).logits[0, t], -1)[ids[t]]
    assert p.bits[t] == pytest.approx(float(-logp / math.log(2)), rel=1e-4)
    assert math.isnan(p.bits[0]) and math.isnan(p.bits[-1])  # <cls> and <sep>


@pytest.mark.parametrize("keys, text, message", [
    ([], TEXT, "at least one"), (["gpt"] * 5, TEXT, "at most 4"), (["gpt"], "  ", "Type some text"),
])  # fmt: skip
def test_compare_refuses_bad_requests(catalog, keys, text, message):
    status, panels = compare.compare(catalog, keys, text)
    assert panels == [] and message in status


def test_compare_reports_an_unknown_model_in_its_panel(catalog):
    status, panels = compare.compare(catalog, ["gpt", "nope"], TEXT)
    assert not panels[0].message and "Unknown model" in panels[1].message and "could not run" in status


def test_surprisal_bars_and_latency_chart_hold_their_inputs():
    fig = surprisal_bars([math.nan, 1.5, 0.25], ["a", "b", "c"])
    np.testing.assert_array_equal(np.asarray(fig.data[0].y, dtype=float)[1:], [1.5, 0.25])
    assert "mean 0.88 bits over 2 tokens" in fig.layout.title.text
    chart = latency_chart({"m": ([64, 128], [1.0, 3.0], [False, True])})
    assert list(chart.data[0].x) == [64, 128] and list(chart.data[0].y) == [1.0, 3.0]
    assert list(chart.data[0].marker.symbol) == ["circle", "circle-open"]


# --------------------------------------------------------------------------- timing


def test_growth_recovers_a_power_law():
    pts = [timing.Timing(n, 0.01 * n**1.5, False) for n in (256, 512, 1024, 2048)]
    assert timing.growth(pts) == pytest.approx(1.5)
    assert timing.growth(pts[:2]) is None  # one point from 512 up


def test_forward_latency_stretches_beyond_the_context():
    cfg = DecoderConfig(vocab_size=50, d_model=16, n_layer=1, n_head=2, d_ff=32, max_seq_len=32)
    model = Decoder(cfg).eval()
    copy = timing.stretched_copy(model, 100)
    assert copy.config.max_seq_len == 100 and model.config.max_seq_len == 32
    assert sum(p.numel() for p in copy.parameters()) - sum(p.numel() for p in model.parameters()) == 68 * 16
    out = timing.forward_latency(model, (16, 32, 64), repeats=1)
    assert [(t.length, t.stretched) for t in out] == [(16, False), (32, False), (64, True)]
    assert all(t.ms > 0 for t in out)


# --------------------------------------------------------------------------- MoE over the validation stories


def test_specialisation_heatmap_rows_are_shares_of_each_tag():
    from archplay.viz.moe import specialisation_heatmap

    counts = np.array([[3, 1], [0, 0], [0, 5]])
    fig = specialisation_heatmap(counts, ["NOUN", "VERB", "DET"])
    assert list(fig.data[0].y) == ["NOUN", "DET"]  # the empty row is dropped
    np.testing.assert_allclose(np.asarray(fig.data[0].z), [[0.75, 0.25], [0.0, 1.0]])


def test_corpus_routing_counts_match_the_truth(catalog):
    from archplay.models import story
    from archplay.models.training import evaluate

    entry = catalog.get("moe")
    a = run.analyse(catalog, "moe", TEXT).analysis
    view = routing.corpus_view(catalog, a, 1)
    spec, load, text = view.heatmap, view.load, view.note
    stats = evaluate.expert_pos_counts(entry.model, entry.tokenizer,
                                       story.make_splits(seed=0, n_train=0, n_valid=100, n_test=0)["validation"])  # fmt: skip
    counts = stats["counts"][1]
    assert int(counts.sum()) == len(stats["pos"])  # every word token counted once
    kept = counts.sum(1) > 0
    np.testing.assert_allclose(np.asarray(spec.data[0].z), (counts[kept] / counts[kept].sum(1, keepdim=True)).numpy())
    np.testing.assert_allclose(np.asarray(load.data[0].y), stats["load"][1].numpy())
    assert "validation stories" in text
    gpt = routing.corpus_view(catalog, run.analyse(catalog, "gpt", TEXT).analysis, 0)
    assert gpt.heatmap is None and gpt.load is None and gpt.note == ""


# --------------------------------------------------------------------------- logit lens and architecture tabs


def test_lens_tab_reads_the_runs_hidden_states(catalog, gpt_run):
    from archplay.app.lens import lens_view
    from archplay.models.analysis.lens import logit_lens

    a = gpt_run.analysis
    fig, text = lens_view(catalog, a)
    model = catalog.get("gpt").model
    with torch.no_grad():
        out = model(torch.tensor([a.ids]), trace=True)
    lens = logit_lens(model, out.trace.hidden_states)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), lens.top_probs[..., 0].numpy(), atol=1e-5)
    top = torch.softmax(out.logits[0], -1).max(-1).values  # the last row is the model's own output
    np.testing.assert_allclose(lens.top_probs[-1, :, 0].numpy(), top.numpy(), atol=1e-5)
    assert "positions" in text
    bert = run.analyse(catalog, "bert", "Mia has a red ball.").analysis
    fig, text = lens_view(catalog, bert)
    assert fig is None and "decoder" in text
    assert lens_view(catalog, None)[0] is None


@pytest.mark.parametrize("key", ["gpt", "moe", "t5"])
def test_architecture_card_counts_every_parameter(catalog, key):
    from archplay.app.card import card

    table, fig = card(catalog, key)
    model = catalog.get(key).model
    total = sum(p.numel() for p in model.parameters())
    assert int(np.asarray(fig.data[0].x).sum()) == total
    assert "| layers |" in table.lower() or "layers" in table
    if key == "moe":
        assert "active" in table
    message, none = card(catalog, "nope")
    assert none is None and "Unknown model" in message


def test_choosing_a_position_carries_into_redraws_and_samples(catalog, gpt_run):
    a = gpt_run.analysis
    moved, fig, _ = sampling.at_position(catalog, a, 3, 1.0, 0, 1.0)
    assert moved.predict_at == 3 and a.predict_at == len(a.ids) - 1  # a new Analysis; the old one untouched
    redraw, _ = sampling.distribution(catalog, moved, 0.5, 0, 1.0)
    assert "(position 3)" in redraw.layout.title.text
    hist, _ = sampling.samples(catalog, moved, 0.0, 0, 1.0, None, None, 1)
    assert [int(r[1]) for r in hist.data[0].customdata] == [int(a.logits[3].argmax())]
    with pytest.raises(ValueError):
        sampling.at_position(catalog, a, 99, 1.0, 0, 1.0)


def test_ssm_grid_shows_each_layers_hidden_attention(catalog):
    a = run.analyse(catalog, "mamba", TEXT).analysis
    fig = attention.grid_figure(a, 1, 0)
    assert len(fig.data) == a.n_layer
    for layer, tr in enumerate(fig.data):
        np.testing.assert_allclose(np.asarray(tr.z), downsample(a.scan.hidden_attention[layer].numpy(), 32), atol=1e-7)


# --------------------------------------------------------------------------- embeddings tab


def test_embeddings_tab_projects_the_runs_layers(catalog, gpt_run):
    from archplay.app.embeddings import views
    from archplay.models.analysis.embeddings import layer_projection

    a = gpt_run.analysis
    v = views(catalog, a, 2, 5)
    scatter, path, n_layers, T = v.scatter, v.path, v.n_layers, v.n_tokens
    proj = layer_projection(a.hidden_states, 2)
    points = np.zeros((T, 2))
    for tr in scatter.data:  # one trace per part of speech; customdata = row indices
        rows = np.asarray(tr.customdata).astype(int).reshape(-1)
        points[rows] = np.stack([tr.x, tr.y], 1)
    np.testing.assert_allclose(points, proj.coords[2].numpy(), atol=1e-6)
    groups = {tr.name for tr in scatter.data}
    assert {"NAME", "VERB", "NOUN"} <= groups  # the story world's truth colours the points
    line = [t for t in path.data if t.name == "path"][0]
    np.testing.assert_allclose(np.stack([line.x, line.y], 1), proj.coords[:, 5].numpy(), atol=1e-6)
    with pytest.raises(ValueError):
        views(catalog, a, n_layers, 0)


def test_sentence_embeddings_tab(catalog):
    from archplay.app.embeddings import sentences
    from archplay.models.analysis.embeddings import cosine_matrix, sentence_embeddings

    lines = ["Mia has a red ball.", "Tom has a blue ball.", "Sara reads her letter."]
    sim, scatter, text = sentences(catalog, "bert", "\n".join(lines))
    bert = catalog.get("bert")
    with torch.inference_mode():
        expected = cosine_matrix(sentence_embeddings(bert.model, bert.tokenizer, lines))
    np.testing.assert_allclose(np.asarray(sim.data[0].z), expected.numpy(), atol=1e-5)
    assert "Most similar" in text
    assert sentences(catalog, "gpt", "a\nb").similarity is None
    assert "at least two" in sentences(catalog, "bert", "one line").note


# --------------------------------------------------------------------------- streaming across threads


@pytest.mark.parametrize("key", ["gpt", "moe", "mamba", "t5"])
def test_streaming_survives_a_new_thread_at_every_token(catalog, key):
    """A server resumes a streaming generator on whichever worker thread is free. Grad mode is per
    thread, so a generator that entered inference mode once and yielded broke on the next thread
    ("Inference tensors cannot be saved for backward"): each token here comes from a new thread,
    after an inference-mode Run has cached its tensors."""
    import threading

    entry = catalog.get(key)
    run.analyse(catalog, key, TEXT)
    ids = torch.tensor([entry.tokenizer.encode(TEXT)])
    stream = entry.model.generate_stream(ids, max_new_tokens=6, temperature=0.0)
    got, errors = [], []

    def one():
        try:
            got.append(next(stream)[0])
        except StopIteration:
            pass
        except Exception as e:  # noqa: BLE001 - the test reports whatever broke
            errors.append(e)

    for _ in range(6):
        t = threading.Thread(target=one)
        t.start()
        t.join()
    assert not errors, errors
    expected = entry.model.generate(ids, max_new_tokens=6, temperature=0.0)[0]
    expected = expected.tolist() if key == "t5" else expected[ids.shape[1]:].tolist()
    assert got == expected[: len(got)] and len(got) >= 1


# --------------------------------------------------------------------------- figures are valid plotly


def test_every_view_builds_with_plotlys_validation_on(catalog, monkeypatch):
    """The page builds figures without plotly's validation (``viz.style.figure``); with it on,
    an invalid property anywhere raises, so every view is built both ways here and compared."""
    import json

    def build():
        return _every_view(catalog)

    fast = build()
    monkeypatch.setenv("ARCHPLAY_VALIDATE_FIGURES", "1")
    checked = build()
    assert len(checked) == len(fast) >= 40
    assert all(f.layout.template.layout.paper_bgcolor == "white" for f in checked)  # the style, expanded
    def plain(fig):  # the JSON, floats rounded (validation re-derives some colour-scale stops)
        return json.loads(fig.to_json(), parse_float=lambda x: round(float(x), 12))

    for a, b in zip(fast, checked):  # what the browser gets is the same either way
        assert plain(a) == plain(b), a.layout.title.text


def _every_view(catalog):
    from archplay.app.card import card
    from archplay.app.embeddings import sentences, views
    from archplay.app.lens import lens_view

    figs = []
    for key in ("gpt", "bert", "t5", "moe", "mamba"):
        r = run.analyse(catalog, key, TEXT + (" <mask>" if key == "bert" else ""))
        figs += [r.attention, r.distribution, r.delta, r.grid, r.mask]
        if r.routing:
            corpus = routing.corpus_view(catalog, r.analysis, 0)
            figs += [r.routing.heatmap, r.routing.load, corpus.heatmap, corpus.load]
        histogram, _ = sampling.samples(catalog, r.analysis, 1.0, 0, 1.0, None, 0 if key == "bert" else None, 20)
        lens, _ = lens_view(catalog, r.analysis)
        layer = views(catalog, r.analysis, 0, 0, "3-D")
        _, parameters = card(catalog, key)
        figs += [histogram, lens, layer.scatter, layer.path, parameters]
    embedded = sentences(catalog, "bert", "Mia has a ball.\\nTom has a map.")
    figs += [embedded.similarity, embedded.scatter]
    _, panels = compare.compare(catalog, ["gpt", "moe", "mamba"], TEXT)
    figs += [p.view for p in panels] + [p.surprisal for p in panels]
    figs += [latency_chart({"m": ([64, 128], [1.0, 2.0], [False, True])})]
    return [f for f in figs if f is not None]
