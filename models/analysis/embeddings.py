"""Embedding spaces made visible: projections to 2-D/3-D, sentence vectors, and POS labels.

* ``pca`` / ``project``: a deterministic principal-component projection (or UMAP, when the
  ``umap`` package is installed and asked for). Deterministic means the same input gives the
  same picture: the SVD's arbitrary sign of each component is fixed (its largest-|loading|
  entry is made positive), so the plot does not mirror itself between runs or between a
  vector set and its negation.
* ``layer_projection``: every layer's hidden states of one sequence in ONE shared basis, so a
  token's path through the layers is a line in one plane.
* ``sentence_embeddings`` / ``cosine_matrix``: an encoder's mean-pooled sentence vectors and
  their cosine similarities.
* ``part_of_speech``: the story world's gold part of speech for each token, to colour a
  projection by (the corpus knows every word's tag, so the colours are truth, not a tagger's guess).

Everything here returns torch tensors or plain lists; drawing lives in ``viz.embeddings``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from archplay.models import registry, story

METHODS = ("pca", "umap")


# --------------------------------------------------------------------------- projections


@dataclass
class Projection:
    """Points projected to k dimensions, with what is needed to project more points the same way.

    ``components`` (k, d): orthonormal rows (all-zero rows pad directions the data lacks);
    ``mean`` (d,); ``explained`` (k,): the share of the total variance along each component
    (descending, sum <= 1). For UMAP the three are None: it is no linear map.
    """

    coords: Tensor  # (n, k)
    components: Tensor | None  # (k, d)
    mean: Tensor | None  # (d,)
    explained: Tensor | None  # (k,)
    method: str = "pca"

    def transform(self, X: Tensor) -> Tensor:
        """New points (m, d) in this projection's coordinates (m, k): (X - mean) @ components.T."""
        if self.components is None:
            raise ValueError(f"a {self.method} projection has no linear map to apply to new points")
        return (X.to(self.components) - self.mean) @ self.components.T  # (m, k)


def _matrix(X) -> Tensor:
    X = torch.as_tensor(X).detach().cpu().to(torch.float64)
    if X.ndim != 2:
        raise ValueError(f"expected an (n, d) matrix of vectors, got shape {tuple(X.shape)}")
    return X


def pca(X: Tensor, k: int = 2) -> Projection:
    """Principal components of the rows of ``X`` (n, d): centre, SVD, fix signs, keep k.

    Computed in float64. Directions the data does not span (n < k, d < k, or rank-deficient
    rows) get zero components, zero coordinates and zero explained variance, never NaN;
    all-equal rows give all zeros. "Does not span" allows for rounding at the input's precision
    (at least float32's, which model activations have): a singular value below
    ``max(n, d) * eps * largest`` is taken as zero, as in ``numpy.linalg.matrix_rank``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    X = torch.as_tensor(X)
    eps = max(torch.finfo(X.dtype).eps if X.is_floating_point() else 0.0, torch.finfo(torch.float32).eps)
    X = _matrix(X)  # (n, d)
    n, d = X.shape
    mean = X.mean(0) if n else torch.zeros(d, dtype=X.dtype)  # (d,)
    Xc = X - mean  # (n, d)
    components = torch.zeros(k, d, dtype=X.dtype)  # (k, d)
    explained = torch.zeros(k, dtype=X.dtype)  # (k,)
    if n and d:
        _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)  # S (r,), Vh (r, d), r = min(n, d)
        total = (S**2).sum()
        tol = S.max() * max(n, d) * eps
        r = min(k, int((S > tol).sum()))  # directions that are really there
        if r and total > 0:
            V = Vh[:r]  # (r, d)
            pivot = V.abs().argmax(1, keepdim=True)  # (r, 1) the largest-|loading| entry per row
            V = V * torch.sign(V.gather(1, pivot))  # ... made positive
            components[:r] = V
            explained[:r] = S[:r] ** 2 / total
    return Projection(coords=Xc @ components.T, components=components, mean=mean, explained=explained)


def _umap(X: Tensor, k: int, seed: int) -> Projection:
    import umap  # optional dependency

    n = X.shape[0]
    reducer = umap.UMAP(n_components=k, n_neighbors=max(2, min(15, n - 1)), random_state=seed)
    coords = torch.as_tensor(reducer.fit_transform(X.numpy()), dtype=torch.float64)  # (n, k)
    return Projection(coords=coords, components=None, mean=None, explained=None, method="umap")


def umap_available() -> bool:
    """Whether ``method="umap"`` can run (the ``umap-learn`` package is importable)."""
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def project(X: Tensor, k: int = 2, method: str = "pca", seed: int = 0) -> Projection:
    """``pca(X, k)``, or UMAP when ``method="umap"`` and the package is installed.

    UMAP falls back to PCA when it cannot run: the package is missing, or there are too few
    points for a neighbour graph (fewer than k + 2). Check ``.method`` for what ran.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; choose from {', '.join(METHODS)}")
    X = _matrix(X)
    if method == "umap" and umap_available() and X.shape[0] >= k + 2:
        return _umap(X, k, seed)
    return pca(X, k)


# --------------------------------------------------------------------------- hidden states


@dataclass
class LayerProjection:
    """All layers of one sequence in one basis. ``coords[l, t]`` is token t after layer l
    (l = 0: the embeddings); ``scales[l]`` is what layer l's vectors were divided by."""

    coords: Tensor  # (L+1, T, k)
    projection: Projection  # fitted on all layers stacked, after scaling
    scales: Tensor  # (L+1,)

    @property
    def explained(self) -> Tensor | None:
        return self.projection.explained


def _one_sequence(h) -> Tensor:
    h = torch.as_tensor(h).detach().cpu().to(torch.float64)
    if h.ndim == 3 and h.shape[0] == 1:  # a trace's (1, T, D)
        h = h[0]
    if h.ndim != 2:
        raise ValueError(f"expected one sequence's hidden states (T, D), got shape {tuple(h.shape)}")
    return h


def layer_projection(hidden_states: Sequence[Tensor], k: int = 2, method: str = "pca") -> LayerProjection:
    """Project every layer's hidden states (each (T, D), or a trace's (1, T, D)) in ONE basis.

    Normalisation: the residual stream's norm often grows several-fold from layer to layer, so
    a plain PCA of the stacked vectors would only show the last layers. Each layer is first
    divided by one number, the root-mean-square norm of its T vectors, so every layer has a
    mean squared norm of 1 and weighs the same in the fit. One scalar per layer keeps the
    geometry within a layer (directions, relative lengths, the layer's offset from the others),
    so movement between layers stays visible. Then one projection is fitted on all (L+1)·T
    scaled vectors, and ``coords[l] == projection.transform(hidden_states[l] / scales[l])``.
    """
    H = torch.stack([_one_sequence(h) for h in hidden_states])  # (L+1, T, D)
    L1, T, D = H.shape
    rms = H.pow(2).sum(-1).mean(-1).sqrt()  # (L+1,)
    scales = torch.where(rms > 0, rms, torch.ones_like(rms))  # an all-zero layer stays zero
    scaled = H / scales[:, None, None]  # (L+1, T, D)
    proj = project(scaled.reshape(L1 * T, D), k, method)
    return LayerProjection(coords=proj.coords.reshape(L1, T, k), projection=proj, scales=scales)


# --------------------------------------------------------------------------- sentence embeddings


def special_ids(tokenizer) -> set[int]:
    """Ids that mark structure rather than text: <cls>, <sep>, <s>, </s>, <pad> and the like.

    The mask token and the unknown token are not among them: each stands for a word of the text.
    """
    ids = {getattr(tokenizer, a, None) for a in ("cls_token_id", "sep_token_id", "bos_token_id",
                                                  "eos_token_id", "pad_token_id")}  # fmt: skip
    hf = getattr(tokenizer, "hf", None)  # a Hugging Face tokenizer lists its own
    if hf is not None:
        ids |= set(hf.all_special_ids) - {hf.unk_token_id, hf.mask_token_id}
    return {int(i) for i in ids if i is not None}


def text_token_mask(tokenizer, ids: Sequence[int]) -> Tensor:
    """(T,) bool: True for tokens of the text, False for special tokens (``special_ids``)."""
    specials = special_ids(tokenizer)
    return torch.tensor([int(i) not in specials for i in ids], dtype=torch.bool)


@torch.no_grad()
def sentence_embeddings(model, tokenizer, texts: Sequence[str]) -> Tensor:
    """Encoder sentence vectors (n, D): the mean of the last hidden state over the text's tokens.

    Special tokens (<cls>, <sep>: ``special_ids``) are left out of the mean; a text with no
    token of its own (the empty text) is the mean over all its tokens. Each text runs alone,
    so no padding enters. Returned float32 on the CPU.
    """
    family = registry.of(model)
    if family.objective != "masked":
        raise ValueError(f"sentence embeddings need an encoder; this model is a {family.name} ({family.title})")
    device = next(model.parameters()).device
    out = []
    for text in texts:
        ids = tokenizer.encode(text)
        h = model(torch.tensor([ids], device=device)).last_hidden_state[0].float().cpu()  # (T, D)
        keep = text_token_mask(tokenizer, ids)  # (T,)
        out.append(h[keep].mean(0) if keep.any() else h.mean(0))  # (D,)
    return torch.stack(out) if out else torch.zeros(0, model.config.d_model)  # (n, D)


def cosine_matrix(E: Tensor) -> Tensor:
    """(n, n) cosine similarities of the rows of ``E`` (n, D); a zero row has similarity 0 to everything."""
    E = torch.as_tensor(E).float()
    unit = E / E.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (n, D)
    return (unit @ unit.T).clamp(-1.0, 1.0)  # (n, n)


# --------------------------------------------------------------------------- parts of speech


def _word_pos() -> dict[str, str]:
    """Lowercased word -> its tag in ``story.TAGS``, from the grammar's word lists.

    In the story world every word has exactly one tag (the grammar keeps the classes disjoint;
    "her" is only ever a possessive); a test checks this table against generated stories.
    """
    table: dict[str, str] = {}

    def put(words, tag: str) -> None:
        table.update((w.lower(), tag) for w in words)

    put(story.FEMALE + story.MALE, "NAME")
    put(("she", "he"), "PRON")
    put(("her", "his"), "POSS")
    put(("a", "the"), "DET")
    put([det for det, tag, _, _ in story.COUNTS if tag == "NUM"] + ["one"], "NUM")
    put(story.COLOURS + story.SIZES + story.FEELINGS, "ADJ")
    put([*story.NOUNS, *(plural for plural, _ in story.NOUNS.values()), *story.PLACES, "day", "home"], "NOUN")
    put([v for v, _ in story.MOTION] + ["is", "go", "play"], "VERB")
    for verb in story.VERBS:
        table.update((w, story.VERB_POS.get(w, "VERB")) for w in verb.words)
    put(("to", "with", "for"), "PREP")
    put(("and",), "CONJ")
    put(story.OPENERS, "ADV")
    put(("hello",), "INTJ")
    put(story.PUNCT, "PUNCT")
    return table


WORD_POS: dict[str, str] = _word_pos()
"""Lowercased story-world word -> part of speech (a tag of ``story.TAGS``)."""

OTHER, SPECIAL, PUNCT = "other", "special", "PUNCT"
_WORD = re.compile(r"\w+|[^\w\s]")  # a run of letters/digits, or one punctuation mark


def word_tag(word: str) -> str:
    """The tag of one word: the story world's, "PUNCT" for punctuation, else "other"."""
    tag = WORD_POS.get(word.lower())
    if tag is not None:
        return tag
    return OTHER if re.match(r"\w", word) else PUNCT


def part_of_speech(text: str, offsets: Sequence[tuple[int, int] | None]) -> list[str]:
    """One tag per token, from the token's [start, end) char span in ``text`` (None: a special).

    ``offsets`` as ``SPTokenizer.encode_with_offsets`` gives them. Words are runs of letters
    and digits, and each punctuation mark on its own; a token takes the tag of the word holding
    its first non-space character ("▁ball" -> the word "ball"), so every piece of a split word
    shares the word's tag. Tags: the corpus's (``story.TAGS``), "other" for a word the story
    world lacks or a token of only spaces, "special" for a token with no span (<cls>, <s>).
    """
    owner: list[str | None] = [None] * len(text)  # char -> the tag of its word
    for m in _WORD.finditer(text):
        owner[m.start() : m.end()] = [word_tag(m.group())] * (m.end() - m.start())
    tags = []
    for span in offsets:
        if span is None:
            tags.append(SPECIAL)
            continue
        hit = next((owner[c] for c in range(*span) if c < len(owner) and owner[c] is not None), None)
        tags.append(hit or OTHER)
    return tags
