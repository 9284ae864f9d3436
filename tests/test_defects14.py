"""Issue 14: defects users reported, each checked on the values a person would see.

Generation keeping the prompt, the logit lens' left margin, the 3-D embedding labels, the
sentence plot's label room, the architecture table's word wrapping, tied busiest experts, and
t5's part-of-speech colours.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from archplay.app.catalog import Catalog
from archplay.app.explore import generation, routing, run
from archplay.viz.embeddings import embedding_scatter
from archplay.viz.lens import logit_lens_heatmap

TEXT = "Mia has a red ball."


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_names([], device="cpu")


# --------------------------------------------------------------------------- 1. generation keeps the prompt


@pytest.mark.parametrize("key", ["gpt", "moe"])
def test_large_max_new_tokens_shrinks_the_budget_not_the_prompt(catalog, key):
    entry = catalog.get(key)
    limit = int(entry.config.max_seq_len)
    prompt = entry.tokenizer.encode(TEXT)
    last = list(generation.generate(catalog, key, TEXT, max_new_tokens=limit, temperature=0.0))[-1]
    assert last.text.startswith(entry.tokenizer.decode(prompt))  # the whole prompt, not its last token
    room = limit - len(prompt)
    assert (f"This model's context is {limit} tokens and your text uses {len(prompt)}, "
            f"so at most {room} new tokens") in last.status  # fmt: skip
    assert "cut" not in last.status


def test_the_prompt_is_cut_only_when_it_leaves_too_little_room(catalog):
    entry = catalog.get("gpt")
    limit = int(entry.config.max_seq_len)
    fits = list(range(10, 10 + limit - 20))  # leaves 20 positions: enough for some new tokens
    prompt, new, notes = generation._fit(entry, fits, limit)
    assert prompt == fits and new == 20 and "at most 20 new tokens" in notes[0]
    full = list(range(10, 10 + limit - 2))  # leaves 2: the prompt gives way to a few new tokens
    prompt, new, notes = generation._fit(entry, full, limit)
    assert new == generation.MIN_NEW_TOKENS and prompt == full[-(limit - new) :]
    assert f"cut to its last {limit - new} tokens" in notes[0]
    assert generation._fit(entry, full, 2) == (full, 2, [])  # what fits is left alone


# --------------------------------------------------------------------------- 2. the logit lens' left margin


def lens_of(rows: list[str], n_pos: int = 3):
    L = len(rows)
    ids = torch.zeros(L, n_pos, 2, dtype=torch.long)
    probs = torch.full((L, n_pos, 2), 0.5)
    return {"top_ids": ids, "top_probs": probs, "layer_labels": rows}


@pytest.mark.parametrize("rows", [["embeddings", "layer 1", "layer 2"], ["e", "a much longer row label"]])
def test_lens_left_margin_fits_the_row_labels_and_the_axis_title(rows):
    fig = logit_lens_heatmap(lens_of(rows), ["a", "b", "c"], ["x", "y"])
    longest = max(len(r) for r in rows)
    assert fig.layout.yaxis.automargin is True
    assert fig.layout.margin.l >= 7 * longest + 18 + 20  # tick labels (~7 px a character), the title's line, padding
    plot_height = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    assert 8 * len(fig.layout.yaxis.title.text) <= plot_height  # the rotated title fits beside the rows


# --------------------------------------------------------------------------- 3. 3-D labels escaped once


def test_3d_labels_are_drawn_as_written_and_hover_escaped_once():
    labels = ["<s>", "Mia", "<b>", "a&b"]
    fig = embedding_scatter(np.arange(12.0).reshape(4, 3), labels)
    trace = fig.data[0]
    assert trace.type == "scatter3d"
    # WebGL text is drawn verbatim (no entities): the label itself; its bold tag made inert
    assert list(trace.text)[:2] == ["<s>", "Mia"] and list(trace.text)[3] == "a&b"
    assert trace.text[2] != "<b>" and trace.text[2].replace("\u200b", "") == "<b>"
    assert list(trace.hovertext) == ["&lt;s&gt;", "Mia", "&lt;b&gt;", "a&amp;b"]  # hover is HTML: once
    assert "%{hovertext}" in trace.hovertemplate and "&amp;lt;" not in str(fig.to_plotly_json())
    flat = embedding_scatter(np.arange(8.0).reshape(4, 2), labels).data[0]
    assert list(flat.text) == list(flat.hovertext) == ["&lt;s&gt;", "Mia", "&lt;b&gt;", "a&amp;b"]  # SVG text is HTML


# --------------------------------------------------------------------------- 4. sentence plot label room


def test_sentence_plot_ranges_leave_room_for_the_labels(catalog):
    from archplay.app.embeddings import DEFAULT_SENTENCES, sentences

    fig = sentences(catalog, "bert", DEFAULT_SENTENCES).scatter
    xs = np.concatenate([np.asarray(t.x, float) for t in fig.data])
    ys = np.concatenate([np.asarray(t.y, float) for t in fig.data])
    (x0, x1), (y0, y1) = fig.layout.xaxis.range, fig.layout.yaxis.range
    assert x0 < xs.min() and x1 > xs.max() and y0 < ys.min()
    assert y1 - ys.max() >= 18 / 470 * (y1 - y0)  # a line of text (~18 px of a ~470-px plot) above the top point
    pos = np.concatenate([np.asarray(t.textposition) for t in fig.data])
    assert pos[xs.argmin()] == "top right" and pos[xs.argmax()] == "top left"  # edge labels point inward
    hover = np.concatenate([np.asarray(t.hovertext) for t in fig.data])
    assert sorted(hover) == sorted(DEFAULT_SENTENCES.splitlines())  # the text beside a point may be cut; not hover


def test_label_padding_grows_with_the_label():
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [0.34, 0.2]])  # the third point's label is centred on it
    short = embedding_scatter(xy, ["a", "b", "c"]).layout
    long = embedding_scatter(xy, ["a", "b", "a centred label of some forty characters"]).layout
    assert short.xaxis.range[0] < 0 < 1 < short.xaxis.range[1] and short.yaxis.range[0] < 0 < 1 < short.yaxis.range[1]
    (x0, x1) = long.xaxis.range
    assert x0 < short.xaxis.range[0]
    assert (0.34 - x0) / (x1 - x0) * 300 >= 0.45 * 300 - 1  # its left half (~136 px) fits a 300-px plot, capped


# --------------------------------------------------------------------------- 5. architecture table wrapping


def test_architecture_table_wraps_between_words():
    from archplay.app import card, main

    assert card.CSS in main.CSS
    rules = dict(re.findall(r"([^{}]+)\{([^{}]*)\}", card.CSS))
    cells = next(body for sel, body in rules.items() if "#card-table" in sel and "td" in sel)
    assert "overflow-wrap: normal" in cells and "word-break: normal" in cells  # gradio's "anywhere" splits words
    first = next(body for sel, body in rules.items() if "td:first-child" in sel)
    assert "white-space: nowrap" in first  # "vocabulary", "context length" on one line each
    assert "break-all" not in card.CSS and "anywhere" not in card.CSS


# --------------------------------------------------------------------------- 6. tied busiest experts


def test_routing_note_names_every_tied_busiest_expert():
    T, E = 4, 4
    chosen = torch.tensor([[1, 3], [1, 0], [3, 2], [1, 3]])  # slots: e0 1, e1 3, e2 1, e3 3 of 8
    probs = torch.full((T, E), 1 / E)
    r = routing.Routing(probs=[probs], chosen=[chosen], blocks=[0], n_block=1)
    a = SimpleNamespace(routing=r, labels=["a", "b", "c", "d"], ids=[1, 2, 3, 4])
    note = routing.view(a, 0).note
    assert "Busiest: experts 1 and 3, with 38% each" in note
    a.routing = routing.Routing(probs=[probs], chosen=[torch.tensor([[1, 3], [1, 0], [3, 2], [1, 2]])], blocks=[0],
                                n_block=1)  # fmt: skip
    assert "Busiest: expert 1 with 38% (an even split" in routing.view(a, 0).note


# --------------------------------------------------------------------------- 7. t5 parts of speech


def test_t5_embeddings_are_coloured_by_part_of_speech(catalog):
    from archplay.app.embeddings import tags_for, views

    a = run.analyse(catalog, "t5", TEXT).analysis
    assert tags_for(catalog, a) == ["NAME", "VERB", "DET", "ADJ", "NOUN", "PUNCT", "special"]
    v = views(catalog, a, 1, 0)
    assert {t.name for t in v.scatter.data} >= {"NAME", "VERB", "NOUN"}
    assert "Coloured by part of speech" in v.note and "built-in tokenizer" not in v.note


def test_long_inputs_keep_a_readable_attention_colour_scale():
    """A long text's map was near white: query 0 can only attend to itself (weight 1), which set the
    top of the colour scale. Now the scale tops out at the 99th percentile of the weights outside
    the first column, and the colour bar says so; a short text keeps its largest weight."""
    from archplay.viz.attention import attention_heatmap

    gen = torch.Generator().manual_seed(0)
    for n, capped in ((6, False), (128, True)):
        scores = torch.randn(n, n, generator=gen).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        z = torch.softmax(scores, -1)
        labels = [f"t{i}" for i in range(n)]
        trace = attention_heatmap(z, labels, labels).data[0]
        positive = z[:, 1:][z[:, 1:] > 0].double().numpy()
        if capped:
            assert trace.zmax == pytest.approx(np.quantile(positive, 0.99)) and trace.zmax < 0.5 * float(z.max())
            assert "capped" in trace.colorbar.title.text
        else:
            assert trace.zmax == pytest.approx(float(z.max())) and "capped" not in trace.colorbar.title.text


def test_a_state_space_model_shows_no_attention_mask(catalog):
    """Mamba's mask panel said "Mask pattern: causal" above "No attention mask"."""
    from archplay.app.explore import attention

    a = run.analyse(catalog, "mamba", "Mia has a red ball. Then Mia").analysis
    fig, help_text = attention.mask_figure(a, 0)
    assert fig.layout.title.text.startswith("No attention mask") and "causal" not in fig.layout.title.text
    assert "No attention mask" in help_text
