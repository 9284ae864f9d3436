"""The Embeddings tab: where tokens sit in the model's vector space, layer by layer.

Drawn from the Explore tab's Run (the session's cached hidden states, no new forward pass):
every layer of that text projected in one shared 2-D or 3-D basis (PCA, or UMAP when the
``umap`` package is installed), coloured by part of speech when the text is in the story world's
vocabulary, and one token's path through the layers. Below, sentence embeddings: several
sentences through an encoder, compared by cosine similarity.
"""

from __future__ import annotations

import html
from types import SimpleNamespace
from typing import NamedTuple

import gradio as gr
import plotly.graph_objects as go
import torch

from archplay.models.analysis.embeddings import (
    cosine_matrix,
    layer_projection,
    part_of_speech,
    pca,
    sentence_embeddings,
    umap_available,
)
from archplay.viz.embeddings import embedding_scatter, layer_paths, similarity_heatmap

from .catalog import Catalog, Entry, UnknownModelError
from .follow import follow
from .guard import MODEL_EVENTS
from .messages import error, md_escape, note, ok, warn
from .session import Analysis
from .sliders import check
from .tokens import clip

HELP = (
    "Each point is one token of your text as a vector after the chosen layer (layer 0: the token "
    "embeddings, before any attention), squeezed from the model's width to 2 or 3 axes by PCA, the "
    "directions of greatest spread; all layers share one set of axes so they can be compared. "
    "Colours are parts of speech, known for the story world's words: embeddings of words that play "
    "the same role tend to cluster. The path shows one token travelling through the layers as "
    "the model mixes context into it."
)
SENTENCE_HELP = (
    "An encoder's sentence vector is the mean of its last layer over the sentence's tokens. "
    "Similar meanings give similar directions (cosine near 1). One sentence per line, up to 12."
)
DEFAULT_SENTENCES = "\n".join([
    "Mia has a red ball.", "Tom has a blue ball.", "Sara reads her letter.", "Ben reads a green map.",
    "The cat sleeps in the garden.",
])  # fmt: skip
MAX_SENTENCES = 12
SENTENCE_TEXT_LIMIT = 24  # characters of a sentence written beside its point (hover has all of it)


def methods() -> list[str]:
    return ["PCA", "UMAP"] if umap_available() else ["PCA"]


def tags_for(catalog: Catalog, analysis: Analysis) -> list[str] | None:
    """Part of speech per analysed token (story-world words), or None without token offsets.

    An encoder-decoder's Run analyses its source, the text as typed, so it is tagged like any other.
    """
    try:
        tok = catalog.get(analysis.model_key).tokenizer
    except UnknownModelError:
        return None
    if not hasattr(tok, "encode_with_offsets"):
        return None
    ids, offsets = tok.encode_with_offsets(analysis.text)
    if list(ids[: len(analysis.ids)]) != list(analysis.ids):
        return None
    return part_of_speech(analysis.text, offsets[: len(analysis.ids)])


class LayerViews(NamedTuple):
    """The Run's tokens in one layer, one token's path, and the sliders' ranges."""

    scatter: go.Figure | None
    path: go.Figure | None
    note: str  # markdown
    n_layers: int  # the embeddings and every layer's output
    n_tokens: int


def views(catalog: Catalog, analysis: Analysis | None, layer, token, dims="2-D", method="PCA") -> LayerViews:
    """The layer's scatter and the token's path, from the session's Run."""
    if analysis is None:
        return LayerViews(None, None, note("Run a model on the Explore tab first."), 1, 1)
    if not analysis.hidden_states:
        return LayerViews(None, None, note("This Run kept no hidden states."), 1, 1)
    k = 3 if str(dims).startswith("3") else 2
    n_layers, T = len(analysis.hidden_states), len(analysis.ids)
    layer, token = check(layer, n_layers, "layer"), check(token, T, "token")
    proj = layer_projection(analysis.hidden_states, k, "umap" if method == "UMAP" else "pca")
    tags = tags_for(catalog, analysis)
    where = "token embeddings" if layer == 0 else f"after layer {layer}"
    who = "source tokens, encoder" if analysis.translation is not None else "tokens"
    scatter = embedding_scatter(proj.coords[layer], analysis.labels, tags, explained=proj.explained,
                                title=f"{html.escape(analysis.model_label)}: {T} {who}, {where}")  # fmt: skip
    path = layer_paths(proj.coords, analysis.labels, highlight=token, explained=proj.explained,
                       title=f"Token {token} ‘{html.escape(analysis.labels[token])}’ through the layers")  # fmt: skip
    kept = ""
    if proj.explained is not None:
        kept = f" The {k} axes keep {float(proj.explained.sum()):.0%} of the spread."
    coloured = " Coloured by part of speech." if tags else " (Parts of speech need the built-in tokenizer.)"
    return LayerViews(scatter, path, ok(f"{n_layers} layers × {T} tokens in one basis.{kept}{coloured}"), n_layers, T)


class SentenceViews(NamedTuple):
    similarity: go.Figure | None  # cosine similarity of every pair
    scatter: go.Figure | None  # 2-D PCA of the sentence vectors
    note: str  # markdown


def sentences(catalog: Catalog, key: str | None, text: str | None) -> SentenceViews:
    """The sentence vectors of one sentence per line, compared."""
    try:
        entry = catalog.get(key)
    except UnknownModelError as e:
        return SentenceViews(None, None, error(md_escape(str(e))))
    if not is_encoder(entry):
        return SentenceViews(None, None, note("Sentence embeddings need an encoder: choose bert."))
    text, clipped = clip(text or "")
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    if len(lines) < 2:
        return SentenceViews(None, None, error("Give at least two sentences, one per line."))
    if len(lines) > MAX_SENTENCES:
        return SentenceViews(None, None, error(f"At most {MAX_SENTENCES} sentences at once; {len(lines)} were given."))
    limit = int(entry.config.max_seq_len)
    lines = [s[: limit * 4] for s in lines]  # a very long line is cut before tokenising
    with torch.inference_mode():
        E = sentence_embeddings(entry.model, entry.tokenizer, [_fit(entry, s, limit) for s in lines])
    sim = similarity_heatmap(cosine_matrix(E), lines)
    p = pca(E, 2)
    scatter = embedding_scatter(p.coords, lines, explained=p.explained, title="Sentence vectors (PCA)",
                                text_limit=SENTENCE_TEXT_LIMIT)  # fmt: skip
    C = cosine_matrix(E)
    C.fill_diagonal_(-2)
    i, j = divmod(int(C.argmax()), len(lines))
    found = ok(f"Most similar: {quote_line(lines[i])} and {quote_line(lines[j])} (cosine {float(C[i, j]):.2f}).")
    return SentenceViews(sim, scatter, found + (" " + warn(clipped) if clipped else ""))


def is_encoder(entry: Entry) -> bool:
    """Whether the model reads a whole sentence at once (a masked, bidirectional model): its mean
    last layer is a sentence vector."""
    return entry.spec.objective == "masked"


def _fit(entry, sentence: str, limit: int) -> str:
    """``sentence`` shortened until it fits the encoder's context."""
    while len(entry.tokenizer.encode(sentence)) > limit:
        sentence = sentence[: int(len(sentence) * 0.9)]
    return sentence


def quote_line(s: str) -> str:
    return f"“{md_escape(s)}”"


def encoder_choices(catalog: Catalog) -> list[tuple[str, str]]:
    """The sentence-embedding model list: the encoders (BERT family), or every model when there is none."""
    encoders = [(label, key) for label, key in catalog.choices() if is_encoder(catalog.get(key))]
    return encoders or catalog.choices()


def build(catalog: Catalog, explore_ui: SimpleNamespace) -> SimpleNamespace:
    ui = SimpleNamespace()
    gr.Markdown("### Embeddings: tokens as points in the model's space")
    gr.Markdown(HELP, elem_classes="ap-help")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            ui.layer = gr.Slider(0, 1, value=0, step=1, precision=0, label="Layer", info="0 = the token embeddings",
                                 elem_id="emb-layer")  # fmt: skip
            ui.token = gr.Slider(0, 1, value=0, step=1, precision=0, label="Token to follow", elem_id="emb-token")
            ui.dims = gr.Radio(["2-D", "3-D"], value="2-D", label="Axes", elem_id="emb-dims")
            ui.method = gr.Radio(methods(), value="PCA", label="Projection",
                                 info="UMAP appears when the umap package is installed", elem_id="emb-method")  # fmt: skip
            ui.note = gr.Markdown("", elem_id="emb-note")
        with gr.Column(scale=3, min_width=420):
            ui.scatter = gr.Plot(show_label=False, elem_id="emb-scatter")
            ui.path = gr.Plot(show_label=False, elem_id="emb-path")
    gr.Markdown("#### Sentence embeddings (encoder)")
    gr.Markdown(SENTENCE_HELP, elem_classes="ap-help")
    encoders = encoder_choices(catalog)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            ui.encoder = gr.Dropdown(encoders, value=encoders[0][1], label="Encoder", elem_id="sent-model")
            ui.sentences = gr.Textbox(DEFAULT_SENTENCES, lines=6, label="Sentences", elem_id="sent-text")
            ui.compare = gr.Button("Embed", variant="primary", elem_id="sent-run")
            ui.sent_note = gr.Markdown("", elem_id="sent-note")
        with gr.Column(scale=3, min_width=420):
            with gr.Row():
                ui.similarity = gr.Plot(show_label=False, elem_id="sent-similarity")
                ui.sent_scatter = gr.Plot(show_label=False, elem_id="sent-scatter")

    def redraw(analysis, layer, token, dims, method):
        try:
            v = views(catalog, analysis, layer, token, dims, method)
        except (ValueError, TypeError) as e:  # a value out of range, or of the wrong type through the API
            raise gr.Error(str(e)[:300]) from None
        return {ui.scatter: v.scatter, ui.path: v.path, ui.note: v.note}

    def fresh(analysis, dims, method):
        """After a Run: the last layer, the last token, sliders spanning the new Run."""
        if analysis is None or not analysis.hidden_states:
            return {ui.layer: gr.update(), ui.token: gr.update(), **redraw(analysis, 0, 0, dims, method)}
        n_layers, T = len(analysis.hidden_states), len(analysis.ids)
        layer, token = n_layers - 1, T - 1
        return {ui.layer: gr.update(maximum=max(n_layers - 1, 1), value=layer),
                ui.token: gr.update(maximum=max(T - 1, 1), value=token),
                **redraw(analysis, layer, token, dims, method)}  # fmt: skip

    def embed(key, text):
        v = sentences(catalog, key, text)
        return {ui.similarity: v.similarity, ui.sent_scatter: v.scatter, ui.sent_note: v.note}

    outputs = [ui.scatter, ui.path, ui.note]
    # Each Run, when this tab is open or opened.
    follow(explore_ui, "embeddings", fresh, inputs=[explore_ui.state, ui.dims, ui.method],
           outputs=[ui.layer, ui.token, *outputs], api_name="fresh")  # fmt: skip
    gr.on(triggers=[ui.layer.input, ui.token.input, ui.dims.input, ui.method.input], fn=redraw,
          inputs=[explore_ui.state, ui.layer, ui.token, ui.dims, ui.method], outputs=outputs,
          api_name="embeddings", trigger_mode="always_last", show_progress="hidden")  # fmt: skip
    ui.compare.click(embed, inputs=[ui.encoder, ui.sentences], outputs=[ui.similarity, ui.sent_scatter, ui.sent_note],
                     api_name="sentences", concurrency_id=MODEL_EVENTS)  # fmt: skip
    return ui
