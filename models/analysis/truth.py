"""The truth beside the model: the story world's exact next word against what a model predicts.

For a text written in the story world's words, ``derivation.next_words`` gives the exact
distribution of the next word (the grammar's own probabilities). ``beside`` puts a causal model's
probability of each of those words next to it (a word of several tokens: the product of its
tokens' conditionals) and measures the gap: the KL divergence KL(world ‖ model) in nats over the
words the world allows, and the model's probability spent on words the world never says next.

A text that leaves the world (a word it never uses, or words in an order it never writes) gets
``in_world=False`` and the first word where it left, so the page can say so plainly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from archplay.models.story.derivation import END, annotate, derivations, next_words
from archplay.models.story.world import detokenize

_WORD = re.compile(r"[A-Za-z]+|[.,]")
MAX_WORDS = 200  # longer texts: the search grows with the length; say so instead


@dataclass
class Beside:
    """The world's next-word distribution and a model's, for one text."""

    in_world: bool
    words: list[str]  # the text as the world's words
    left_at: int | None = None  # the first word the world never writes there (None: all are the world's)
    reason: str = ""  # why the text is not in the world
    world: dict[str, float] = field(default_factory=dict)  # next word -> exact probability (END: the story stops)
    model: dict[str, float] = field(default_factory=dict)  # the same words -> the model's probability
    kl: float | None = None  # KL(world ‖ model), nats
    outside: float | None = None  # the model's probability of anything the world never says next


def world_words(text: str) -> list[str] | None:
    """The text as the world's words, or None when it is not written the world's way (spacing, symbols)."""
    text = " ".join(str(text).split())
    words = _WORD.findall(text)
    return words if words and detokenize(words)[0] == text else None


def _left_at(words: list[str]) -> int:
    """The first word the world never writes after the words before it (``len(words)`` when it writes
    them all). The world writes a prefix of any text it writes, so the prefixes it writes are the
    shorter ones: a binary search finds the first it does not in about log2(n) searches, not n."""
    if next_words(words):
        return len(words)
    written, unwritten = 0, len(words)  # the empty prefix begins every story; the whole text is not written
    while unwritten - written > 1:
        middle = (written + unwritten) // 2
        if next_words(words[:middle]):
            written = middle
        else:
            unwritten = middle
    return unwritten - 1


def _candidate_ids(tok, text: str, word: str) -> list[int]:
    """The token ids ``word`` adds after ``text`` (the end token for END)."""
    if word == END:
        return [tok.eos_token_id]
    base = tok.encode(text)
    longer = tok.encode(text + ("" if word in ".," else " ") + word)
    if longer[: len(base)] != base:  # the tokenizer merged across the boundary: score the whole word anew
        return []
    return longer[len(base) :]


@torch.inference_mode()
def _model_probs(model: nn.Module, tok, text: str, words: list[str]) -> dict[str, float]:
    """P_model(word next | text) for each word: its tokens' conditionals multiplied."""
    device = next(model.parameters()).device
    base = tok.encode(text)
    logits = model(torch.tensor([base], device=device)).logits[0, -1].float()
    first = torch.log_softmax(logits, -1)
    out = {}
    for w in words:
        ids = _candidate_ids(tok, text, w)
        if not ids:
            out[w] = 0.0
            continue
        lp = float(first[ids[0]])
        if len(ids) > 1:  # the word's later tokens, each given the ones before
            full = torch.tensor([base + ids[:-1]], device=device)
            rest = torch.log_softmax(model(full).logits[0, len(base) :].float(), -1)  # (len(ids) - 1, V)
            lp += float(sum(rest[j, ids[j + 1]] for j in range(len(ids) - 1)))
        out[w] = math.exp(lp)
    return out


def beside(model: nn.Module, tok, text: str) -> Beside:
    """The world's exact next word after ``text`` beside ``model``'s prediction (a causal model)."""
    words = world_words(text)
    if words is None:
        return Beside(False, _WORD.findall(str(text)), reason="it is not written in the story world's words "
                      "(letters, spaces, '.' and ',' only)")  # fmt: skip
    if len(words) > MAX_WORDS:
        return Beside(False, words, reason=f"it is longer than {MAX_WORDS} words (the exact search is not run)")
    world = next_words(words)
    if not world:
        i = _left_at(words)
        return Beside(False, words, left_at=i, reason=f"the story world never writes ‘{words[i]}’ there")
    text = detokenize(words)[0]
    model_p = _model_probs(model, tok, text, list(world))
    kl = math.fsum(p * (math.log(p) - math.log(max(model_p[w], 1e-30))) for w, p in world.items())
    return Beside(True, words, world=world, model=model_p, kl=kl, outside=max(0.0, 1.0 - math.fsum(model_p.values())))


def blank(left: str, right: str) -> dict[str, float] | None:
    """The world's exact distribution of one missing word between ``left`` and ``right`` (texts of the
    world's words; either may be empty): P(w | left, right) ∝ P(left w right begins a story). None when
    either side is not written in the world's words; {} when no word of the world fits there."""
    lw = world_words(left) if left.strip() else []
    rw = world_words(right) if right.strip() else []
    if lw is None or rw is None or len(lw) + len(rw) > MAX_WORDS:
        return None
    mass = {}
    for w, p in next_words(lw).items():
        if w == END:
            continue
        paths = derivations([*lw, w, *rw], complete=False)
        if paths:
            mass[w] = math.fsum(math.exp(x) for x in paths)
    total = math.fsum(mass.values())
    return {w: p / total for w, p in sorted(mass.items(), key=lambda kv: -kv[1])} if total > 0 else {}


def antecedents(text: str) -> list[tuple[int, int]] | None:
    """(pronoun or possessive, the word that introduced whom it denotes) pairs, as word indices of
    ``world_words(text)``, from the world's gold annotations; None when the text is not the world's."""
    words = world_words(text)
    if words is None or len(words) > MAX_WORDS:
        return None
    gold = annotate(words)
    if gold is None:
        return None
    return [(i, w.antecedent) for i, w in enumerate(gold) if w.pos in ("PRON", "POSS") and w.antecedent is not None]


def translation(text: str) -> tuple[str, list[str], list[str], list[int | None]] | None:
    """The world's exact translation of one sentence of its words: (target text, source words, target
    words, gold alignment: target word -> source word index or None); None for anything else."""
    from archplay.models.story.translation import translate

    words = world_words(text)
    if words is None or words[-1] != "." or words.count(".") != 1 or len(words) > MAX_WORDS:
        return None
    gold = annotate(words)
    if gold is None:
        return None
    pair = translate(words, [w.pos for w in gold])
    return pair.target, pair.source_words, pair.target_words, pair.alignment


def _alignment(tok, source: str, target: str, steps: int, width: int):
    """(decoder steps, the source token positions of each one's gold word, (target word, source word)
    pairs) for the world's translation of ``source`` written as ``target``, within ``steps`` decoder steps
    and ``width`` source tokens; None when the world has no such translation or nothing aligns."""
    from archplay.models.story.world import detokenize as spans_of
    from archplay.models.training.evaluate import word_of_tokens

    world = translation(source)
    if world is None or world[0] != target:
        return None
    _, src_words, tgt_words, gold = world
    _, src_spans = tok.encode_with_offsets(source)
    _, tgt_spans = tok.encode_with_offsets(target)
    src_owner = word_of_tokens(source, spans_of(src_words)[1], src_spans)
    tgt_owner = word_of_tokens(target, spans_of(tgt_words)[1], tgt_spans)
    queries, targets, pairs = [], [], []
    for j, a in enumerate(gold):
        if a is None or j not in tgt_owner:
            continue
        q = tgt_owner.index(j)  # the step that writes word j's first token
        if q >= steps:
            continue
        queries.append(q)
        targets.append({k for k, o in enumerate(src_owner) if o == a and k < width})
        pairs.append((tgt_words[j], src_words[a]))
    return (queries, targets, pairs) if queries else None


def alignment_cells(tok, source: str, target: str, steps: int, width: int) -> list[tuple[int, int]]:
    """The cells (decoder step, source token) of the gold word alignment over a cross-attention map of
    ``steps`` × ``width``: each aligned target word's first step against its source word's tokens; []
    when the world has no translation of ``source`` written as ``target``."""
    found = _alignment(tok, source, target, steps, width)
    return [(q, k) for q, ks in zip(found[0], found[1]) for k in sorted(ks)] if found else []


def alignment_hits(tok, source: str, target: str, cross: list[Tensor]) -> dict | None:
    """How often cross-attention puts its largest weight on the gold source word, for the world's
    translation of ``source`` teacher-forced as ``target`` (the model's own when it equals the world's).

    ``cross``: per decoder layer (H, Td, S), the query at step i writing target token i. Returns
    {"words": aligned target words, "layers": hits per layer (heads averaged), "best": (layer, head, hits),
    "pairs": [(target word, source word)]}; None when the world has no translation of ``source``."""
    from archplay.models.training.metrics import head_hits

    found = _alignment(tok, source, target, cross[0].shape[1], cross[0].shape[2])
    if found is None:
        return None
    queries, targets, pairs = found
    per_head = head_hits([c.float() for c in cross], queries, targets)  # (L, H)
    per_layer = head_hits([c.float().mean(0, keepdim=True) for c in cross], queries, targets)[:, 0]  # (L,)
    layer, head = divmod(int(per_head.argmax()), per_head.shape[1])
    return {"words": len(queries), "layers": per_layer.tolist(), "best": (layer, head, int(per_head[layer, head])),
            "pairs": pairs}  # fmt: skip


__all__ = ["END", "Beside", "alignment_cells", "alignment_hits", "antecedents", "beside", "blank", "translation", "world_words"]
