"""How good are the built-in models, measured against the story world's known truth.

    python -m archplay.models.training.evaluate                 # all built-ins on the test split; prints a table
    python -m archplay.models.training.evaluate --stories 100   # a quicker look on the first 100 test stories
    python -m archplay.models.training.evaluate --json out.json # also write the numbers

What is measured (on the test split, which no model trained on):

* gpt, moe, mamba: cross-entropy per token on ``<s> story </s>`` next to the entropy floor,
  the true entropy of the text per token (``story.entropy_floor``), which no model can beat
  in expectation. The gap is what the model has still to learn.
* bert: masked-token accuracy, one word masked at a time (all of its tokens), on the words the
  context determines: the words the generator could not have written differently given the
  words before them (``logprob == 0``; punctuation left out), e.g. "with" after "plays", the
  noun of "her cookie" when she owns one cookie. Accuracy on all words is shown beside it.
* t5: exact match and corpus BLEU of greedy translations of the test sentences, and
  cross-attention alignment accuracy: for each target word with a gold source word, whether
  the cross-attention (mean over heads) from the step that writes the word's first token is
  largest on one of the source word's tokens; the best layer is reported.
* moe: per-layer expert load (share of routed slots), and the mutual information between a
  token's first-choice expert and its part of speech, in bits.
* Coreference head of each attention model: the (layer, head) whose largest attention weight
  from a pronoun or possessive ("she", "his") most often lands on the gold antecedent (the
  name that introduced the character, or a later mention of that name), and that rate.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from archplay.models import load, registry, story
from archplay.models.architectures.moe import expert_load
from archplay.models.training.metrics import bleu, entropy_bits, head_hits, mutual_information
from archplay.models.training.train import IGNORE, pad_batch

BATCH = 32


def _chunks(items: Sequence, n: int = BATCH):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def word_of_tokens(text: str, spans, token_spans) -> list[int | None]:
    """Token -> index of the word it belongs to (None for specials), for any text with word spans."""
    return story.token_word_index(SimpleNamespace(text=text, spans=spans), token_spans)


# --------------------------------------------------------------------------- language models


@torch.no_grad()
def language_model(model, tok, stories) -> dict:
    """Cross-entropy per token of ``<s> story </s>`` against the entropy floor."""
    nll, n = 0.0, 0
    for batch in _chunks(stories):
        rows = [tok.encode(s.text) + [tok.eos_token_id] for s in batch]  # the prefix <s> comes with encode
        ids = pad_batch(rows, tok.pad_token_id)
        logits = model(ids[:, :-1]).logits.float()  # (B, T-1, V)
        targets = ids[:, 1:].clone()
        for b, r in enumerate(rows):
            targets[b, len(r) - 1 :] = IGNORE  # right padding carries no loss (the models are causal)
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                     ignore_index=IGNORE, reduction="sum"))  # fmt: skip
        n += int((targets != IGNORE).sum())
    floor = story.entropy_floor(stories, n)
    return {"cross_entropy": nll / n, "entropy_floor": floor, "gap": nll / n - floor, "tokens": n}


# --------------------------------------------------------------------------- masked LM


def determined(story) -> list[int]:
    """Words the context determines: probability 1 given the words before them, not punctuation."""
    return [i for i, (lp, p) in enumerate(zip(story.logprob, story.pos)) if lp == 0.0 and p != "PUNCT"]


@torch.no_grad()
def masked_lm(model, tok, stories) -> dict:
    """Accuracy of filling one masked word at a time (all its tokens right), on determined words and all words."""
    right = {"determined": 0, "all": 0}
    total = {"determined": 0, "all": 0}
    for s in stories:
        ids, spans = tok.encode_with_offsets(s.text)
        owner = story.token_word_index(s, spans)
        words = sorted({w for w in owner if w is not None and s.pos[w] != "PUNCT"})
        fixed = set(determined(s))
        for group in _chunks(words, 64):
            batch = torch.tensor([ids] * len(group))
            where = torch.tensor([[o == w for o in owner] for w in group])  # (G, T) the word's tokens
            batch[where] = tok.mask_token_id
            pred = model(batch).logits.argmax(-1)  # (G, T)
            truth = torch.tensor([ids] * len(group))
            ok = ((pred == truth) | ~where).all(-1)  # (G,)
            for w, good in zip(group, ok.tolist()):
                for kind in ("all", "determined") if w in fixed else ("all",):
                    total[kind] += 1
                    right[kind] += int(good)
    return {f"accuracy_{k}": right[k] / max(total[k], 1) for k in right} | {"determined_words": total["determined"]}


# --------------------------------------------------------------------------- translation


@torch.no_grad()
def translation(model, tok, pairs) -> dict:
    """Exact match and BLEU of greedy translations; cross-attention alignment accuracy."""
    eos, pad = tok.eos_token_id, tok.pad_token_id
    exact, hyps, refs = 0, [], []
    align_hits = None  # (layers,) summed head-mean hits
    head_counts = None
    align_total = 0
    for batch in _chunks(pairs):
        src, src_spans = zip(*(tok.encode_with_offsets(p.source) for p in batch))  # ids end in </s>
        ids, mask = pad_batch(src, pad), pad_batch([[1] * len(r) for r in src], 0)
        out = model.generate(ids, max_new_tokens=max(len(r) for r in src) * 2 + 8, attention_mask=mask,
                             eos_token_id=eos)  # fmt: skip
        for p, row in zip(batch, out.tolist()):
            row = row[: row.index(eos)] if eos in row else row
            text = tok.decode(row)
            exact += int(text == p.target)
            hyps.append(text.split())
            refs.append(p.target.split())

        # alignment: teacher-forced pass over the gold translation
        tgt_ids, tgt_spans = zip(*(tok.encode_with_offsets(p.target) for p in batch))
        labels = [list(t) + [eos] for t in tgt_ids]
        dec = pad_batch([[model.config.decoder_start_token_id] + r[:-1] for r in labels], pad)
        cross = model(ids, decoder_input_ids=dec, attention_mask=mask, trace=True).trace.cross_attentions
        for b, p in enumerate(batch):
            src_owner = word_of_tokens(p.source, story.detokenize(p.source_words)[1], src_spans[b])
            tgt_owner = word_of_tokens(p.target, story.detokenize(p.target_words)[1], tgt_spans[b])
            queries, targets = [], []
            for j, a in enumerate(p.alignment):
                if a is None or j not in tgt_owner:
                    continue
                queries.append(tgt_owner.index(j))  # the step that writes word j's first token
                targets.append({k for k, o in enumerate(src_owner) if o == a})
            if not queries:
                continue
            maps = [c[b, :, : len(labels[b]), : len(src[b])] for c in cross]  # per layer (H, Td, S)
            mean_maps = [m.mean(0, keepdim=True) for m in maps]
            hits = head_hits(mean_maps, queries, targets)[:, 0]  # (layers,)
            heads = head_hits(maps, queries, targets)  # (layers, H)
            align_hits = hits if align_hits is None else align_hits + hits
            head_counts = heads if head_counts is None else head_counts + heads
            align_total += len(queries)
    best_layer = int(align_hits.argmax())
    layer, head = divmod(int(head_counts.argmax()), head_counts.shape[1])
    return {
        "exact_match": exact / len(pairs), "bleu": bleu(hyps, refs),
        "alignment_accuracy": float(align_hits[best_layer]) / align_total, "alignment_layer": best_layer,
        "alignment_best_head": [layer, head], "alignment_best_head_accuracy": float(head_counts.max()) / align_total,
        "aligned_words": align_total, "sentences": len(pairs),
    }  # fmt: skip


# --------------------------------------------------------------------------- routing and coreference


@torch.no_grad()
def expert_pos_counts(model, tok, stories) -> dict:
    """Routing over ``stories`` with the corpus's truth: per MoE layer, how often each part of
    speech went to each expert as its first choice, and every expert's load.

    Returns ``tags`` (the corpus's TAGS), ``counts`` (layers, tags, experts) first-choice counts over
    word tokens, ``load`` (layers, experts) the share of all routed (token, slot) pairs, and
    ``first`` / ``pos``, the per-token first choices and tags behind ``counts``.
    """
    n_layers = sum(model.config.moe_layers)  # the routed layers only: the trace has one entry per MoE layer
    E = model.config.n_experts
    chosen: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    first: list[list[int]] = [[] for _ in range(n_layers)]
    tags: list[str] = []
    device = next(model.parameters()).device
    for s in stories:
        ids, spans = tok.encode_with_offsets(s.text)
        owner = story.token_word_index(s, spans)
        keep = [i for i, o in enumerate(owner) if o is not None]
        tags += [s.pos[owner[i]] for i in keep]
        tr = model(torch.tensor([ids], device=device), trace=True).trace
        for li, idx in enumerate(tr.expert_indices):
            idx = idx[0].cpu()
            chosen[li].append(idx)  # (T, k) every token's experts
            first[li] += idx[keep, 0].tolist()  # the highest-weighted expert of each word token
    row = {t: i for i, t in enumerate(story.TAGS)}
    counts = torch.zeros(n_layers, len(story.TAGS), E, dtype=torch.long)
    for li in range(n_layers):
        counts[li].index_put_((torch.tensor([row[t] for t in tags]), torch.tensor(first[li])),
                              torch.ones(len(tags), dtype=torch.long), accumulate=True)  # fmt: skip
    load = torch.stack([expert_load(torch.cat(c), E) for c in chosen])  # (layers, E)
    return {"tags": list(story.TAGS), "counts": counts, "load": load, "first": first, "pos": tags}


@torch.no_grad()
def routing(model, tok, stories) -> dict:
    """Per-layer expert load, and I(first-choice expert; part of speech) per layer in bits."""
    r = expert_pos_counts(model, tok, stories)
    load = r["load"].tolist()
    mi = [mutual_information(f, r["pos"]) for f in r["first"]]
    return {"load": load, "min_load": min(min(x) for x in load), "mi_pos_bits": mi,
            "pos_entropy_bits": entropy_bits(r["pos"])}  # fmt: skip


def pronoun_queries(story, owner: list[int | None]) -> tuple[list[int], list[set[int]]]:
    """Token positions of pronouns/possessives (first token) and, for each, the tokens of the
    earlier mentions by name of the character it refers to (the gold antecedent and its repeats)."""
    queries, targets = [], []
    for w, (p, a) in enumerate(zip(story.pos, story.antecedent)):
        if p in ("PRON", "POSS") and a is not None and w in owner:
            who = story.entity[a]
            names = {v for v in range(w) if story.pos[v] == "NAME" and story.entity[v] == who}
            queries.append(owner.index(w))
            targets.append({k for k, o in enumerate(owner) if o in names})
    return queries, targets


@torch.no_grad()
def coreference_head(model, tok, stories, *, encoder_only: bool = False) -> dict:
    """The (layer, head) whose strongest attention from pronouns most often hits the antecedent."""
    counts, total = None, 0
    for s in stories:
        ids, spans = tok.encode_with_offsets(s.text)
        owner = story.token_word_index(s, spans)
        queries, targets = pronoun_queries(s, owner)
        if not queries:
            continue
        x = torch.tensor([ids])
        if encoder_only:  # t5: its encoder's self-attention
            att = model.encode(x, trace=True).attentions
        else:
            att = model(x, trace=True).trace.attentions
        hits = head_hits([a[0] for a in att], queries, targets)
        counts = hits if counts is None else counts + hits
        total += len(queries)
    layer, head = divmod(int(counts.argmax()), counts.shape[1])
    return {"layer": layer, "head": head, "rate": float(counts.max()) / total, "pronouns": total}


# --------------------------------------------------------------------------- the report


def evaluate_model(model, tok, stories) -> dict:
    """Every measure that applies to ``model`` (its family's objective and views) on ``stories``."""
    family = registry.of(model)
    r: dict = {"family": family.name, "trained": bool(getattr(model.config, "trained", True))}
    if family.objective == "causal":
        r["lm"] = language_model(model, tok, stories)
    elif family.objective == "masked":
        r["mlm"] = masked_lm(model, tok, stories)
    else:
        r["translation"] = translation(model, tok, story.translation_pairs(stories))
    if "routing" in family.views:
        r["routing"] = routing(model, tok, stories)
    if "attention" in family.views:  # an encoder-decoder's coreference head is its encoder's
        r["coreference"] = coreference_head(model, tok, stories, encoder_only=family.objective == "translation")
    return r


def evaluate(names: Sequence[str], stories, log=print) -> dict:
    results: dict[str, dict] = {}
    for name in names:
        model, tok = load(name)
        results[name] = evaluate_model(model, tok, stories)
        log(f"{name}: done")
    return results


def table(results: dict) -> str:
    """The report as a Markdown table, one row per model."""
    lines = ["| model | measure | value | target |", "|---|---|---|---|"]
    for name, r in results.items():
        if "lm" in r:
            lm = r["lm"]
            lines.append(f"| {name} | cross-entropy / entropy floor (nats/token) | {lm['cross_entropy']:.3f} / "
                         f"{lm['entropy_floor']:.3f} (gap {lm['gap']:.3f}) | gap ≤ 0.25 |")  # fmt: skip
        if "mlm" in r:
            m = r["mlm"]
            lines.append(f"| {name} | masked-word accuracy, context-determined words ({m['determined_words']}) | "
                         f"{m['accuracy_determined']:.1%} | ≥ 80% |")  # fmt: skip
            lines.append(f"| {name} | masked-word accuracy, all words | {m['accuracy_all']:.1%} | |")
        if "translation" in r:
            t = r["translation"]
            lines.append(f"| {name} | exact match ({t['sentences']} sentences) | {t['exact_match']:.1%} | ≥ 90% |")
            lines.append(f"| {name} | BLEU | {100 * t['bleu']:.1f} | |")
            lines.append(f"| {name} | cross-attention alignment accuracy (layer {t['alignment_layer']}, "
                         f"mean of heads) | {t['alignment_accuracy']:.1%} | ≥ 70% |")  # fmt: skip
        if "routing" in r:
            ro = r["routing"]
            for li, (load_, mi) in enumerate(zip(ro["load"], ro["mi_pos_bits"])):
                shares = " / ".join(f"{x:.0%}" for x in load_)
                lines.append(f"| {name} | layer {li}: expert load; I(expert; POS) | {shares}; {mi:.2f} bits "
                             f"(H(POS) = {ro['pos_entropy_bits']:.2f}) | every expert ≥ 5% |")  # fmt: skip
        if "coreference" in r:
            c = r["coreference"]
            where = "encoder " if "translation" in r else ""
            lines.append(f"| {name} | best coreference head ({where}layer {c['layer']}, head {c['head']}): "
                         f"pronoun → antecedent | {c['rate']:.1%} of {c['pronouns']} | |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from archplay.models.checkpoints.loading import BUILTIN_NAMES

    p = argparse.ArgumentParser(prog="python -m archplay.models.training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", choices=BUILTIN_NAMES, help="default: all built-ins")
    p.add_argument("--stories", type=int, default=None, help="only the first N test stories")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    stories = story.make_splits(seed=0)["test"]
    if args.stories:
        stories = stories[: args.stories]
    results = evaluate(args.model or list(BUILTIN_NAMES), stories, log=lambda m: None)
    print(f"Test split: {len(stories)} stories.\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
