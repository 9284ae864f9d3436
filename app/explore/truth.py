"""The truth beside the model, under the Explore tab's prediction.

For a model of the story world (its tokenizer is the world's), the world's exact answer is known:
for a model that continues text, the distribution of the next word after the shown position
(``analysis.truth.beside``); for a masked model, the word the blank hides given both sides
(``analysis.truth.blank``). When the text leaves the world, the note says where, and that the
prediction there is a guess (a real checkpoint is the tool for general English). For a translation
model, the world's exact translation and how often cross-attention finds the gold word alignment.
Other models get no note: the world's truth says nothing about them.
"""

from __future__ import annotations

import torch

from archplay.models.analysis.truth import (
    END,
    alignment_cells,
    alignment_hits,
    antecedents,
    beside,
    blank,
    translation,
    world_words,
)
from archplay.models.story.derivation import annotate
from archplay.models.story.tokenizer import SPTokenizer
from archplay.models.story.world import detokenize

from ..catalog import Catalog, UnknownModelError
from ..messages import md_escape
from ..session import Analysis

TOP = 5
LEAVES = ("The story world never writes this: {why}. {model} has only read the world's stories, so its "
          "prediction here is a guess. For general English, load a real checkpoint (Explore → Load a checkpoint).")  # fmt: skip


def _name(entry) -> str:
    """The model's short name ("gpt"), not its whole label."""
    return str(entry.label).split(" — ")[0]


def _word(w: str) -> str:
    return "end of the story" if w == END else f"‘{md_escape(w)}’"


def _table(world: dict[str, float], model: dict[str, float | None]) -> str:
    rows = ["| the world's next word | world (exact) | model |", "|---|---:|---:|"]
    for w, p in list(world.items())[:TOP]:
        q = model.get(w)
        rows.append(f"| {_word(w)} | {p:.1%} | {'—' if q is None else f'{q:.1%}'} |")
    if len(world) > TOP:
        rows.append(f"| … {len(world) - TOP} more | {sum(list(world.values())[TOP:]):.1%} | |")
    return "\n".join(rows)


def _prefix(tok, analysis: Analysis) -> str | None:
    """The text up to and including the shown position, when that position ends a word; else None."""
    ids = analysis.ids
    at = analysis.predict_at if analysis.predict_at is not None else len(ids) - 1
    if at + 1 < len(ids):
        nxt = tok.tokens([ids[at + 1]])[0]
        if not (nxt.startswith(("▁", "␣", " ")) or nxt in (".", ",")):
            return None  # the next token continues the same word
    return tok.decode(ids[: at + 1])


def _causal(entry, analysis: Analysis) -> str:
    prefix = _prefix(entry.tokenizer, analysis)
    if prefix is None:
        return "*The story world's answer is given for whole words: this position is inside a word.*"
    b = beside(entry.model, entry.tokenizer, prefix)
    if not b.in_world:
        return "⚠️ " + LEAVES.format(why=md_escape(b.reason), model=md_escape(_name(entry)))
    return (f"**The story world's answer** after “…{md_escape(detokenize(b.words[-4:])[0])}” (exact, from its grammar): "
            f"KL(world ‖ model) = **{b.kl:.3f} nats**; the model puts {b.outside:.1%} on words the world never "
            f"writes here.\n\n" + _table(b.world, b.model))  # fmt: skip


def _masked(entry, analysis: Analysis) -> str:
    mask = analysis.mask_token
    text = analysis.text or ""
    if not mask or text.count(mask) != 1:
        return ""  # no blank (or several): nothing to compare
    left, right = text.split(mask)
    world = blank(left, right)
    if world is None or not world:
        why = "it is not written in the world's words" if world is None else "no word of the world fits the blank"
        return "⚠️ " + LEAVES.format(why=why, model=md_escape(_name(entry)))
    tok = entry.tokenizer
    at = analysis.predict_at
    probs = torch.softmax(analysis.logits[at].float(), -1) if analysis.logits is not None and at is not None else None
    model = {}
    for w in world:
        ids = tok.encode(("" if w in ".," else " ") + w)
        ids = [i for i, label in zip(ids, tok.tokens(ids)) if not (label.startswith("<") and label.endswith(">"))]
        model[w] = float(probs[ids[0]]) if probs is not None and len(ids) == 1 else None  # one token per blank
    return ("**The story world's answer** for the blank (exact, from its grammar, given both sides):\n\n"
            + _table(world, model))  # fmt: skip


MAX_PRONOUNS = 4


def _first_tokens(tok, text: str, spans: list[tuple[int, int]]) -> list[int | None]:
    """Each word's first token position in ``tok.encode(text)`` (None where a word starts inside a token)."""
    _, token_spans = tok.encode_with_offsets(text)
    starts = {}
    for t, span in enumerate(token_spans):
        if span is not None:
            a = span[0] + (text[span[0] : span[1]].startswith(" "))
            starts.setdefault(a, t)
    return [starts.get(a) for a, _ in spans]


def _gold(tok, analysis: Analysis) -> list[tuple[str, str, int, int]]:
    """(pronoun, antecedent, its token position, the antecedent's) for each pronoun of the Run's text whose
    words start tokens of the Run, from the world's gold annotations; [] for a text not of the world."""
    text = analysis.text or ""
    pairs = antecedents(text) if " ".join(text.split()) == text else None
    if not pairs:
        return []
    words = world_words(text)
    first = _first_tokens(tok, text, detokenize(words)[1])
    T = len(analysis.ids)
    return [(words[p], words[a], first[p], first[a]) for p, a in pairs
            if first[p] is not None and first[a] is not None and first[p] < T and first[a] < T]  # fmt: skip


def gold_cells(catalog: Catalog, analysis: Analysis | None) -> dict[str, list[tuple[int, int]]]:
    """The cells each attention map of the Run frames, by kind, for a model of the story world on a text
    of it: "self", each pronoun's (token, its gold antecedent's); "cross" (a translation the world's own),
    each target word's first step against its gold source word's tokens. {} otherwise (and never an
    error: it decorates a Run)."""
    if analysis is None:
        return {}
    try:
        entry = catalog.get(analysis.model_key)
        if not isinstance(entry.tokenizer, SPTokenizer):
            return {}
        t = analysis.translation
        if t is not None:
            steps, width = t.cross_attentions[0].shape[-2:] if t.cross_attentions else (0, 0)
            cells = alignment_cells(entry.tokenizer, analysis.text or "", t.text, int(steps), int(width))
            return {"cross": cells} if cells else {}
        cells = [(tp, ta) for _, _, tp, ta in _gold(entry.tokenizer, analysis)]
        return {"self": cells} if cells else {}
    except (UnknownModelError, ValueError, RuntimeError, IndexError, KeyError):
        return {}


def _pronouns(entry, analysis: Analysis) -> str:
    """Each pronoun's gold antecedent and the head that attends to it most (is it that head's top key?)."""
    gold = _gold(entry.tokenizer, analysis) if analysis.attentions else []
    if not gold:
        return ""
    att = analysis.attentions  # per layer (H, T, T)
    rows = ["| pronoun → gold antecedent (first mention) | head most on it | weight | top key? |",
            "|---|---|---:|:---:|"]
    for pronoun, antecedent, tp, ta in gold[:MAX_PRONOUNS]:
        w = torch.stack([layer[:, tp, ta] for layer in att])  # (L, H)
        layer, head = divmod(int(w.argmax()), w.shape[1])
        top = int(att[layer][head, tp].argmax()) == ta
        rows.append(f"| ‘{md_escape(pronoun)}’ ({tp}) → ‘{md_escape(antecedent)}’ ({ta}) | L{layer}.H{head} | "
                    f"{float(w[layer, head]):.0%} | {'✓' if top else '✗'} |")  # fmt: skip
    return ("**Who the pronouns mean** (the world's gold antecedents, framed on the attention map; token positions "
            "in brackets):\n\n" + "\n".join(rows))  # fmt: skip


def _translation(entry, analysis: Analysis) -> str:
    """The world's exact translation beside the model's, and how well cross-attention finds the gold alignment."""
    text, tr = analysis.text or "", analysis.translation
    world = translation(text)
    if world is None:
        words = world_words(text)
        if words is None or annotate(words) is None:
            return "⚠️ " + LEAVES.format(why="it is not written in the world's words and grammar",
                                         model=md_escape(_name(entry)))  # fmt: skip
        return "*The world's exact translation is shown for one sentence at a time.*"
    if tr.text != world[0]:
        return (f"**The story world's translation**: “{md_escape(world[0])}”; the model wrote “{md_escape(tr.text)}”: "
                "they differ, so the gold alignment is not laid over this run.")  # fmt: skip
    hits = alignment_hits(entry.tokenizer, text, tr.text, tr.cross_attentions)
    line = "✓ **The model's translation is the world's exact one.**"
    if hits:
        n, (layer, head, best) = hits["words"], hits["best"]
        top = max(range(len(hits["layers"])), key=hits["layers"].__getitem__)
        pairs = ", ".join(f"{md_escape(t)} ← {md_escape(s)}" for t, s in hits["pairs"][:6])
        line += (f" Gold alignment (framed on the cross-attention map: {pairs}{', …' if len(hits['pairs']) > 6 else ''}): the cross-attention of decoder "
                 f"layer {top} (heads averaged) puts its largest weight on the gold source word for "
                 f"{hits['layers'][top]} of {n} words; the best head, L{layer}.H{head}, for {best} of {n}.")  # fmt: skip
    return line


def truth_md(catalog: Catalog, analysis: Analysis | None) -> str:
    """The world's answer beside the model's, as markdown; "" when it does not apply."""
    if analysis is None:
        return ""
    try:
        entry = catalog.get(analysis.model_key)
    except UnknownModelError:
        return ""
    if not isinstance(entry.tokenizer, SPTokenizer):
        return ""  # not a model of the world
    try:
        if analysis.translation is not None:
            return _translation(entry, analysis)
        answer = _masked(entry, analysis) if not analysis.spec.causal else _causal(entry, analysis)
        return "\n\n".join(x for x in (answer, _pronouns(entry, analysis)) if x)
    except (ValueError, RuntimeError, IndexError) as e:  # never break the Run over its footnote
        return f"*The world's answer could not be computed: {md_escape(str(e))}*"
