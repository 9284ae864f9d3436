"""Embedding projections, sentence vectors, POS labels and their figures: checked against hand computations."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from archplay.models import story
from archplay.models.analysis.embeddings import (
    WORD_POS,
    cosine_matrix,
    layer_projection,
    part_of_speech,
    pca,
    project,
    sentence_embeddings,
    umap_available,
)
from archplay.models.architectures.encoder import Encoder, EncoderConfig
from archplay.models.story.tokenizer import SPTokenizer
from archplay.viz.embeddings import embedding_scatter, layer_paths, similarity_heatmap
from archplay.viz.style import safe_label


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def line_data(n: int = 200, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points spread along one unit direction u (std 10), plus small noise and an offset; (X, u)."""
    u = randn(d, seed=seed)
    u = u / u.norm()
    X = randn(n, 1, seed=seed + 1) * 10 * u + 0.1 * randn(n, d, seed=seed + 2) + 3.0
    return X, u


# ---------------------------------------------------------------- PCA


def test_pca_recovers_the_dominant_direction():
    X, u = line_data()
    p = pca(X, 2)
    assert abs(float(p.components[0] @ u)) > 0.999
    hand = (X - X.mean(0)) @ p.components.T  # (n, 2)
    torch.testing.assert_close(p.coords, hand)
    torch.testing.assert_close(p.transform(X), hand)
    along_u = (X - X.mean(0)) @ u * torch.sign(p.components[0] @ u)  # the hand projection on u, same sign
    torch.testing.assert_close(p.coords[:, 0], along_u, atol=0.05, rtol=0)
    assert p.explained[0] > 0.99 > p.explained[1] > 0
    assert float(p.explained.sum()) <= 1.0 + 1e-12
    torch.testing.assert_close(p.components @ p.components.T, torch.eye(2, dtype=torch.float64))


def test_pca_signs_are_fixed_and_deterministic():
    X = randn(40, 7, seed=3) * torch.arange(1, 8, dtype=torch.float64)
    a, b, flipped = pca(X, 4), pca(X, 4), pca(-X, 4)
    assert torch.equal(a.coords, b.coords) and torch.equal(a.components, b.components)
    for row in a.components:  # the largest-|loading| entry of each component is positive
        assert row[row.abs().argmax()] > 0
    torch.testing.assert_close(flipped.components, a.components)
    torch.testing.assert_close(flipped.coords, -a.coords)
    torch.testing.assert_close(flipped.explained, a.explained)


def test_pca_rank_deficient_inputs_give_zeros_not_nan():
    basis = randn(2, 8, seed=4)
    X = randn(10, 2, seed=5) @ basis  # rank 2 in 8 dimensions
    p = pca(X, 4)
    assert p.coords.shape == (10, 4) and p.components.shape == (4, 8)
    assert torch.isfinite(p.coords).all() and torch.isfinite(p.explained).all()
    assert torch.all(p.components[2:] == 0) and torch.all(p.coords[:, 2:] == 0) and torch.all(p.explained[2:] == 0)
    torch.testing.assert_close(p.explained.sum(), torch.tensor(1.0, dtype=torch.float64))

    few = pca(randn(2, 5, seed=6), 3)  # n < k: two points span one direction
    assert few.coords.shape == (2, 3) and torch.isfinite(few.coords).all()
    assert torch.all(few.components[1:] == 0) and few.explained[0] == pytest.approx(1.0)

    for same in (torch.ones(5, 3), torch.ones(1, 3)):  # no variance at all
        q = pca(same, 2)
        assert torch.all(q.coords == 0) and torch.all(q.explained == 0) and torch.isfinite(q.components).all()

    wide = pca(randn(6, 2, seed=7), 3)  # k > d
    assert wide.coords.shape == (6, 3) and torch.all(wide.coords[:, 2] == 0)


def test_project_dispatch():
    X, _ = line_data(30)
    torch.testing.assert_close(project(X, 2).coords, pca(X, 2).coords)
    got = project(X, 2, method="umap")
    assert got.method == ("umap" if umap_available() else "pca") and got.coords.shape == (30, 2)
    with pytest.raises(ValueError, match="unknown projection"):
        project(X, 2, method="tsne")


# ---------------------------------------------------------------- layers and the embedding table


def test_layer_projection_uses_one_basis_for_all_layers():
    L1, T, D = 4, 7, 10
    hidden = [randn(1, T, D, seed=10 + l) * 10.0**l for l in range(L1)]  # norms growing 10x per layer
    lp = layer_projection(hidden, k=3)
    assert lp.coords.shape == (L1, T, 3)
    for l, h in enumerate(hidden):
        rms = h[0].pow(2).sum(-1).mean().sqrt()
        torch.testing.assert_close(lp.scales[l], rms)
        torch.testing.assert_close(lp.coords[l], lp.projection.transform(h[0] / rms))  # the shared basis


def test_layer_projection_normalises_each_layer():
    h = randn(6, 5, seed=20)
    lp = layer_projection([h, 1000 * h], k=2)  # the same vectors at a thousand times the norm
    torch.testing.assert_close(lp.coords[1], lp.coords[0])  # ... land on the same points


# ---------------------------------------------------------------- sentence embeddings

TEXTS = ["Mia has a red ball.", "Tom has a red ball.", "Then she eats two cakes."]


def sp_encoder():
    tok = SPTokenizer.builtin(prefix=("<cls>",), suffix=("<sep>",))
    torch.manual_seed(0)
    return Encoder(EncoderConfig.bert_tiny(vocab_size=tok.vocab_size)).eval(), tok


def hf_encoder(hf_folder):
    from archplay.models import load

    folder, _ = hf_folder("bert")
    return load(folder)


@pytest.mark.parametrize("make", ["sp", "hf"])
def test_sentence_embeddings_are_the_mean_over_text_tokens(make, hf_folder):
    model, tok = sp_encoder() if make == "sp" else hf_encoder(hf_folder)
    texts = TEXTS if make == "sp" else ["mia has a red ball", "the cat sat on the mat", "she went home"]
    E = sentence_embeddings(model, tok, texts)
    assert E.shape == (len(texts), model.config.d_model)
    for text, e in zip(texts, E):
        ids = tok.encode(text)
        assert tok.tokens(ids)[0] in ("<cls>", "[CLS]") and tok.tokens(ids)[-1] in ("<sep>", "[SEP]")
        with torch.no_grad():
            h = model(torch.tensor([ids])).last_hidden_state[0]  # (T, D)
        torch.testing.assert_close(e, h[1:-1].mean(0))  # the specials at both ends left out


def test_sentence_embeddings_need_an_encoder():
    with pytest.raises(ValueError, match="encoder"):
        sentence_embeddings(SimpleNamespace(config=SimpleNamespace(family="decoder")), None, ["x"])


def test_cosine_matrix():
    E = randn(5, 8, seed=30).float()
    E[3] = -2 * E[0]  # opposite direction
    C = cosine_matrix(E)
    torch.testing.assert_close(C.diagonal(), torch.ones(5))
    torch.testing.assert_close(C, C.T)
    torch.testing.assert_close(C[1, 2], torch.nn.functional.cosine_similarity(E[1], E[2], dim=0))
    assert C[0, 3] == pytest.approx(-1.0, abs=1e-6)


# ---------------------------------------------------------------- parts of speech


def test_part_of_speech_of_a_story_sentence():
    tok = SPTokenizer.builtin(prefix=("<cls>",), suffix=("<sep>",))
    text = "Mia has a red ball."
    ids, offsets = tok.encode_with_offsets(text)
    assert tok.tokens(ids) == ["<cls>", "Mia", "␣has", "␣a", "␣red", "␣ball", ".", "<sep>"]
    assert part_of_speech(text, offsets) == ["special", "NAME", "VERB", "DET", "ADJ", "NOUN", "PUNCT", "special"]

    words = "One day , she plays with her kite . Then Tom and Lily go home .".split()
    pos = "NUM NOUN PUNCT PRON VERB PREP POSS NOUN PUNCT ADV NAME CONJ NAME VERB NOUN PUNCT".split()
    text, spans = story.detokenize(words)
    _, offsets = tok.encode_with_offsets(text)
    owner = story.token_word_index(SimpleNamespace(text=text, spans=spans), offsets)  # token -> word
    want = ["special" if w is None else pos[w] for w in owner]
    assert part_of_speech(text, offsets) == want and want.count("special") == 2


def test_part_of_speech_pieces_unknown_words_and_spaces():
    text = "Mia has a zebra!"  # hand-made spans: "Mia" in two pieces, "zebra" unknown, "!" punctuation
    offsets = [None, (0, 2), (2, 3), (3, 7), (7, 9), (9, 12), (12, 15), (15, 16), (7, 8)]
    assert part_of_speech(text, offsets) == ["special", "NAME", "NAME", "VERB", "DET", "other", "other",
                                             "PUNCT", "other"]  # fmt: skip


def test_word_table_agrees_with_the_generator():
    seen = set()
    for i in range(300):
        s = story.generate_story(random.Random(i))
        for word, tag in zip(s.words, s.pos):
            assert WORD_POS[word.lower()] == tag, word
            seen.add(tag)
    assert seen == set(story.TAGS)
    assert set(WORD_POS.values()) == set(story.TAGS)


# ---------------------------------------------------------------- figures


LABELS = ["Mia", "␣has", "<br>", "␣ball", ".", "Tom", "␣sees", "␣a", "<cls>"]
GROUPS = ["NAME", "VERB", "other", "NOUN", "PUNCT", "NAME", "VERB", "DET", "special"]


@pytest.mark.parametrize("k", [2, 3])
def test_scatter_traces_hold_exactly_their_group(k):
    coords = randn(len(LABELS), k, seed=40).numpy()
    fig = embedding_scatter(coords, LABELS, GROUPS, explained=[0.5, 0.25, 0.125][:k])
    assert [t.name for t in fig.data] == list(dict.fromkeys(GROUPS))
    for trace in fig.data:
        want = [i for i, g in enumerate(GROUPS) if g == trace.name]
        assert list(trace.customdata) == want
        assert trace.type == ("scatter3d" if k == 3 else "scatter")
        np.testing.assert_allclose(trace.x, coords[want, 0])
        np.testing.assert_allclose(trace.y, coords[want, 1])
        if k == 3:
            np.testing.assert_allclose(trace.z, coords[want, 2])
        assert list(trace.hovertext) == [safe_label(LABELS[i]) for i in want]  # hover is HTML in 2-D and 3-D
        if k == 2:  # SVG text is HTML too; WebGL text (3-D) is drawn as written (tests/test_defects14.py)
            assert list(trace.text) == [safe_label(LABELS[i]) for i in want]
    assert "&lt;br&gt;" in fig.data[2].hovertext
    title = fig.layout.scene.xaxis.title.text if k == 3 else fig.layout.xaxis.title.text
    assert title == "PC1 (50.0%)"


def test_scatter_without_groups_is_one_trace():
    coords = randn(4, 2, seed=41)
    fig = embedding_scatter(coords, LABELS[:4])
    assert len(fig.data) == 1 and list(fig.data[0].customdata) == [0, 1, 2, 3]
    np.testing.assert_allclose(fig.data[0].x, coords[:, 0].numpy())
    with pytest.raises(ValueError):
        embedding_scatter(coords, LABELS[:3])


@pytest.mark.parametrize("k", [2, 3])
def test_layer_paths_draw_the_chosen_token(k):
    L1, T = 4, len(LABELS)
    coords = randn(L1, T, k, seed=42).numpy()
    fig = layer_paths(coords, LABELS, highlight=2)
    faint, path = fig.data
    np.testing.assert_allclose(faint.x, coords[..., 0].reshape(-1))  # layer-major: point l*T + t
    np.testing.assert_allclose(faint.y, coords[..., 1].reshape(-1))
    assert faint.customdata[T + 2][:2].tolist() == [safe_label(LABELS[2]), 2]
    np.testing.assert_allclose(path.x, coords[:, 2, 0])
    np.testing.assert_allclose(path.y, coords[:, 2, 1])
    if k == 3:
        np.testing.assert_allclose(path.z, coords[:, 2, 2])
    assert list(path.text) == ["0", "1", "2", "3"]
    assert list(path.customdata) == ["embeddings", "layer 1", "layer 2", "layer 3"]
    assert "&lt;br&gt;" in path.hovertemplate and "&lt;br&gt;" in fig.layout.title.text
    assert len(layer_paths(coords, LABELS).data) == 1
    with pytest.raises(ValueError):
        layer_paths(coords, LABELS, highlight=T)


def test_similarity_heatmap():
    texts = ["Mia has a red ball.", "Tom <b>sees</b> Mia.", "Then she eats two cakes."]
    M = cosine_matrix(randn(3, 6, seed=43))
    fig = similarity_heatmap(M, texts)
    (heat,) = fig.data
    np.testing.assert_allclose(heat.z, M.numpy(), rtol=1e-6)
    assert heat.customdata[0][1] == "‘Mia has a red ball.’ ↔ ‘Tom &lt;b&gt;sees&lt;/b&gt; Mia.’"
    assert heat.zmin == -1 and heat.zmax == 1
    with pytest.raises(ValueError):
        similarity_heatmap(M, texts[:2])
