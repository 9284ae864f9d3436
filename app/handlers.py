"""The Explore page's logic as plain functions: text and settings in, figures and messages out.

Nothing here imports gradio, so every handler can be called (and tested) without a browser.
``explore.py`` turns the results into component updates.

The model runs in exactly two places: ``analyse`` (one traced forward pass per model and
text) and ``generate``. Everything a slider changes (``attention_figure``,
``distribution``) is redrawn from the ``Analysis`` that ``analyse`` cached.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from torch import Tensor

from models.sampling import check_settings, staged_distribution
from viz.attention import attention_heatmap
from viz.sampling import distribution_figure

from .registry import Entry, Registry, UnknownModelError

DEFAULT_TEXT = "Mia has a red ball. She throws it to her dog, and the dog brings it back to"
TOP_N = 20  # bars in the distribution figure

# Families this page can show; the others get a clear message.
SUPPORTED_FAMILIES = ("decoder", "encoder", "moe", "ssm")
GENERATING_FAMILIES = ("decoder", "moe", "ssm")

ATTENTION_HELP = {
    "causal": (
        "Row = the token doing the looking (query), column = what it looks at (key); "
        "causal models cannot look ahead, hence the empty upper triangle."
    ),
    "bidirectional": (
        "Row = the token doing the looking (query), column = what it looks at (key); "
        "this encoder is bidirectional, so every token may look at every other one."
    ),
    "none": "This architecture has no attention weights to show.",
}


# --------------------------------------------------------------------------- session state


@dataclass
class Analysis:
    """What one Run leaves in the session: small, CPU-only, no model objects."""

    model_key: str
    model_label: str
    family: str
    text: str  # the text as typed
    ids: list[int]  # the analysed token ids (after any truncation)
    labels: list[str]  # one display label per id
    attentions: list[Tensor] | None  # per layer (H, T, T) float32 on the CPU; None without attention
    logits: Tensor | None  # (T, V) float32 on the CPU; None for an encoder without an MLM head
    predict_at: int | None  # the position whose distribution is shown; None when there is none
    truncated_from: int | None = None  # the token count before truncation, when the text was cut
    mask_token: str | None = None  # the encoder's mask token, for messages

    @property
    def n_layer(self) -> int:
        return len(self.attentions) if self.attentions else 0

    @property
    def n_head(self) -> int:
        return int(self.attentions[0].shape[0]) if self.attentions else 0

    @property
    def causal(self) -> bool:
        return self.family != "encoder"


@dataclass
class AnalyseResult:
    analysis: Analysis | None
    status: str  # markdown
    tokens_html: str
    attention: go.Figure | None
    attention_help: str
    layer: int
    head: int
    distribution: go.Figure | None
    distribution_note: str  # markdown
    can_generate: bool
    generate_note: str  # markdown

    @property
    def ok(self) -> bool:
        return self.analysis is not None


# --------------------------------------------------------------------------- messages


_MD_SPECIAL = re.compile(r"([\\`*|~])")


def md_escape(text: str) -> str:
    """``text`` shown literally inside one markdown line: HTML escaped, emphasis and code marks
    backslashed. (Mid-line brackets, parentheses and intraword underscores are literal already.)"""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


# Plain text symbols (no emoji presentation), so they render with ordinary fonts.
OK, NOTE, WARN, ERROR = "✓", "ℹ", "⚠", "✕"


def ok(text: str) -> str:
    return f"{OK} {text}"


def note(text: str) -> str:
    return f"{NOTE} {text}"


def warn(text: str) -> str:
    return f"{WARN} {text}"


def error(text: str) -> str:
    return f"{ERROR} **Problem:** {text}"


def quote(label: str) -> str:
    """A token label in curly quotes, markdown-safe."""
    return f"‘{md_escape(label)}’"


# --------------------------------------------------------------------------- tokens strip


def tokens_html(labels: list[str], ids: list[int], *, focus: int | None = None, note_text: str = "") -> str:
    """Token chips; hovering a chip shows its position and id. Everything user-made is escaped."""
    if not labels:
        return '<div class="ap-tokens ap-empty">Run the model to see how it splits your text into tokens.</div>'
    chips = []
    for i, (label, tid) in enumerate(zip(labels, ids)):
        cls = "ap-tok ap-focus" if i == focus else "ap-tok"
        tip = f"#{i} · id {tid}" + (" · predicted here" if i == focus else "")
        chips.append(
            f'<span class="{cls}" title="{html.escape(tip, quote=True)}" data-index="{i}">'
            f'<span class="ap-idx">{i}</span>{html.escape(label or "∅", quote=True)}</span>'
        )
    meta = f"{len(labels)} token{'s' if len(labels) != 1 else ''} · hover one for its position and id"
    if note_text:
        meta += f" · {html.escape(note_text, quote=True)}"
    return (
        f'<div class="ap-tokens" role="list" aria-label="{len(labels)} tokens">{"".join(chips)}</div>'
        f'<div class="ap-tokens-meta">{meta}</div>'
    )


# --------------------------------------------------------------------------- analyse


def _empty_result(status: str, *, layer: int = 0, head: int = 0, can_generate: bool = True) -> AnalyseResult:
    return AnalyseResult(
        analysis=None, status=status, tokens_html=tokens_html([], []), attention=None,
        attention_help="", layer=layer, head=head, distribution=None, distribution_note="",
        can_generate=can_generate, generate_note="",
    )  # fmt: skip


def generate_note(entry: Entry) -> tuple[bool, str]:
    """Whether ``entry`` can continue text, and a note for the Generate panel when it cannot."""
    if entry.family in GENERATING_FAMILIES:
        return True, ""
    if entry.family == "encoder":
        mask_id = getattr(entry.tokenizer, "mask_token_id", None)
        tip = ""
        if mask_id is not None:
            mask = md_escape(entry.tokenizer.tokens([mask_id])[0])
            tip = f" Put {mask} in your text and the distribution panel shows what it would fill in."
        return False, note(
            "Encoders such as BERT fill in blanks rather than continue text, "
            "so Generate is off for this model." + tip
        )
    return False, note(f"Generation for the {md_escape(entry.family)} family is not on this page yet.")


def encode(entry: Entry, text: str) -> tuple[list[int], int | None]:
    """Token ids for ``text``, cut to the model's context; also the length before cutting (or None)."""
    ids = [int(i) for i in entry.tokenizer.encode(text)]
    limit = int(entry.config.max_seq_len)
    if len(ids) > limit:
        return ids[:limit], len(ids)
    return ids, None


@torch.inference_mode()
def run_model(entry: Entry, ids: list[int]):
    """One traced forward pass; the only model call ``analyse`` makes."""
    x = torch.tensor([ids], dtype=torch.long, device=entry.device)
    return entry.model(x, trace=True)


def analyse(
    registry: Registry,
    model_key: str | None,
    text: str | None,
    layer: int = 0,
    head: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> AnalyseResult:
    """Tokenise ``text``, run the model once with tracing, and draw both figures.

    ``layer``/``head`` are clamped into the new model's range; the sampling settings only
    shape the first drawing of the distribution. Problems come back as a status message.
    """
    layer, head = int(layer or 0), int(head or 0)
    try:
        entry = registry.get(model_key)
    except UnknownModelError as e:
        return _empty_result(error(md_escape(str(e))), layer=layer, head=head)
    can_gen, gen_note = generate_note(entry)
    if entry.family not in SUPPORTED_FAMILIES:
        msg = error(f"The Explore page cannot show the {md_escape(entry.family)} family yet.")
        return _empty_result(msg, layer=layer, head=head, can_generate=can_gen)
    if text is None or not str(text).strip():
        msg = error("Type some text first, then press Run.")
        return _empty_result(msg, layer=layer, head=head, can_generate=can_gen)

    text = str(text)
    ids, truncated_from = encode(entry, text)
    if not ids:
        return _empty_result(error("This text produced no tokens."), layer=layer, head=head, can_generate=can_gen)

    started = time.perf_counter()
    try:
        out = run_model(entry, ids)
    except (ValueError, RuntimeError) as e:  # e.g. a context limit the config did not state
        return _empty_result(error(f"The model failed on this text: {md_escape(str(e))}"), can_generate=can_gen)
    elapsed = time.perf_counter() - started

    tok = entry.tokenizer
    trace = out.trace
    attentions = None
    if trace is not None and trace.attentions and all(a is not None for a in trace.attentions):
        attentions = [a[0].detach().float().cpu() for a in trace.attentions]  # each (H, T, T)
    logits = out.logits[0].detach().float().cpu() if out.logits is not None else None  # (T, V)

    mask_id = getattr(tok, "mask_token_id", None)
    mask_token = tok.tokens([mask_id])[0] if mask_id is not None else None
    if entry.family == "encoder":
        masks = [i for i, t in enumerate(ids) if mask_id is not None and t == mask_id]
        predict_at = masks[0] if masks and logits is not None else None
    else:
        predict_at = len(ids) - 1 if logits is not None else None

    analysis = Analysis(
        model_key=entry.key, model_label=entry.label, family=entry.family, text=text, ids=ids,
        labels=list(tok.tokens(ids)), attentions=attentions, logits=logits, predict_at=predict_at,
        truncated_from=truncated_from, mask_token=mask_token,
    )  # fmt: skip

    layer = min(max(layer, 0), max(analysis.n_layer - 1, 0))
    head = min(max(head, 0), max(analysis.n_head - 1, 0))
    try:
        dist_fig, dist_note = distribution(registry, analysis, temperature, top_k, top_p)
    except ValueError as e:
        dist_fig, dist_note = None, error(md_escape(str(e)))

    status = ok(
        f"Ran **{md_escape(entry.label)}** on {len(ids)} token{'s' if len(ids) != 1 else ''} "
        f"in {elapsed * 1000:.0f} ms."
    )
    if not entry.trained:
        status += " Its weights are random, so the patterns show the mechanics, not learned language."
    trunc_note = ""
    if truncated_from is not None:
        limit = len(ids)
        status += "\n\n" + warn(
            f"Your text is {truncated_from} tokens long but this model reads at most {limit}; "
            f"only the first {limit} were analysed."
        )
        trunc_note = f"cut to the first {limit} of {truncated_from}"

    return AnalyseResult(
        analysis=analysis,
        status=status,
        tokens_html=tokens_html(analysis.labels, ids, focus=predict_at, note_text=trunc_note),
        attention=attention_figure(analysis, layer, head),
        attention_help=attention_help(analysis),
        layer=layer,
        head=head,
        distribution=dist_fig,
        distribution_note=dist_note,
        can_generate=can_gen,
        generate_note=gen_note,
    )


# --------------------------------------------------------------------------- redraws (no model calls)


def attention_help(analysis: Analysis) -> str:
    """How to read the heatmap: the causal or bidirectional wording, or why there is none."""
    if analysis.attentions is None:
        return ATTENTION_HELP["none"]
    return ATTENTION_HELP["causal" if analysis.causal else "bidirectional"]


def attention_figure(analysis: Analysis | None, layer: int, head: int) -> go.Figure | None:
    """The heatmap of one layer and head from the cached trace; None before a Run or without attention."""
    if analysis is None or analysis.attentions is None:
        return None
    layer, head = int(layer), int(head)
    if not (0 <= layer < analysis.n_layer):
        raise ValueError(f"layer must be between 0 and {analysis.n_layer - 1}, got {layer}")
    if not (0 <= head < analysis.n_head):
        raise ValueError(f"head must be between 0 and {analysis.n_head - 1}, got {head}")
    weights = analysis.attentions[layer][head]  # (T, T)
    title = f"Layer {layer}, head {head} of {analysis.n_layer} × {analysis.n_head}"
    return attention_heatmap(weights, analysis.labels, analysis.labels, title=title)


def _settings(temperature, top_k, top_p) -> tuple[float, int, float]:
    temperature = float(temperature)
    top_p = float(top_p)
    if isinstance(top_k, float) and top_k.is_integer():
        top_k = int(top_k)
    check_settings(temperature, top_k, top_p)
    return temperature, top_k, top_p


def distribution(
    registry: Registry, analysis: Analysis | None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> tuple[go.Figure | None, str]:
    """The sampling stages at the analysed position, from the cached logits, and a one-line summary.

    Raises ValueError for settings outside their ranges.
    """
    temperature, top_k, top_p = _settings(temperature, top_k, top_p)
    if analysis is None:
        return None, note("Press Run to see what the model predicts.")
    if analysis.logits is None:
        return None, note("This checkpoint has no prediction head (a bare encoder), so there is nothing to show.")
    if analysis.predict_at is None:
        mask = md_escape(analysis.mask_token or "[MASK]")
        if analysis.mask_token is None:
            return None, note("This encoder's tokenizer has no mask token, so there is nothing to fill in.")
        return None, note(f"Add {mask} to your text: an encoder predicts the token hidden behind a mask.")

    pos = analysis.predict_at
    staged = staged_distribution(analysis.logits[pos], temperature, top_k, top_p)
    labels_for = _labels_for(registry, analysis)
    here = analysis.labels[pos]
    if analysis.family == "encoder":
        title = f"What fills {html.escape(here)} at position {pos}"
    else:
        title = f"Next token after ‘{html.escape(_short(here))}’ (position {pos})"
    fig = distribution_figure(staged, labels_for, top_n=TOP_N, title=title)

    final = staged.final
    best = int(torch.argmax(final))
    best_label = labels_for([best])[0]
    kept = int(staged.kept.sum())
    vocab = int(final.shape[-1])
    summary = (
        f"Most likely: {quote(best_label)} at {float(final[best]):.1%} "
        f"(before sampling settings: {float(staged.raw[best]):.1%}). "
        f"{kept:,} of {vocab:,} tokens can still be drawn."
    )
    return fig, summary


def _labels_for(registry: Registry, analysis: Analysis):
    try:
        tok = registry.get(analysis.model_key).tokenizer
    except UnknownModelError:
        return lambda ids: [f"<{i}>" for i in ids]
    return lambda ids: list(tok.tokens(list(ids)))


def _short(label: str, limit: int = 16) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


# --------------------------------------------------------------------------- generate


def generate(
    registry: Registry,
    model_key: str | None,
    text: str | None,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Iterator[tuple[str, str]]:
    """Continue ``text`` token by token, yielding (text so far, status markdown) after each one.

    The prompt keeps its last tokens when prompt + new tokens would overflow the context.
    Errors are yielded as a status message (with an empty text), never raised.
    """
    try:
        entry = registry.get(model_key)
    except UnknownModelError as e:
        yield "", error(md_escape(str(e)))
        return
    can_gen, why = generate_note(entry)
    if not can_gen:
        yield "", why
        return
    if text is None or not str(text).strip():
        yield "", error("Type some text to continue, then press Generate.")
        return
    try:
        temperature, top_k, top_p = _settings(temperature, top_k, top_p)
        max_new_tokens = int(max_new_tokens)
        seed = int(seed or 0)
        if max_new_tokens < 1:
            raise ValueError(f"max new tokens must be at least 1, got {max_new_tokens}")
    except (TypeError, ValueError) as e:
        yield "", error(md_escape(str(e)))
        return

    tok = entry.tokenizer
    prompt = [int(i) for i in tok.encode(str(text))]
    if not prompt:
        yield "", error("This text produced no tokens.")
        return
    notes = []
    limit = int(entry.config.max_seq_len)
    if max_new_tokens >= limit:
        notes.append(warn(f"This model's context is {limit} tokens, so at most {limit - 1} new ones."))
        max_new_tokens = limit - 1
    if len(prompt) + max_new_tokens > limit:
        keep = limit - max_new_tokens
        notes.append(warn(f"The prompt was cut to its last {keep} tokens to leave room in {limit}-token context."))
        prompt = prompt[-keep:]

    ids = torch.tensor([prompt], dtype=torch.long, device=entry.device)
    new: list[int] = []
    probs: list[float] = []
    eos = getattr(tok, "eos_token_id", None)
    started = time.perf_counter()
    stream = entry.model.generate_stream(
        ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=seed, eos_token_id=eos,
    )  # fmt: skip
    try:
        for token_id, prob in stream:
            new.append(int(token_id))
            probs.append(float(prob))
            status = _gen_status(new, probs, started, notes, done=False, greedy=temperature == 0)
            yield tok.decode(prompt + new), status
    except (ValueError, RuntimeError) as e:
        yield tok.decode(prompt + new), error(f"Generation stopped: {md_escape(str(e))}")
        return
    stopped = bool(new) and eos is not None and new[-1] == eos
    yield tok.decode(prompt + new), _gen_status(
        new, probs, started, notes, done=True, greedy=temperature == 0, stopped_at_eos=stopped
    )


def _gen_status(new, probs, started, notes, *, done: bool, greedy: bool, stopped_at_eos: bool = False) -> str:
    secs = max(time.perf_counter() - started, 1e-9)
    n = len(new)
    head = "Generated" if done else "Generating…"
    line = f"{head} {n} token{'s' if n != 1 else ''} · {n / secs:.1f} tokens/s"
    if greedy:
        line += " · greedy (temperature 0): always the likeliest token"
    elif probs:
        line += f" · the drawn tokens had {sum(probs) / len(probs):.1%} probability on average"
    if stopped_at_eos:
        line += " · stopped at the end-of-text token"
    return "\n\n".join([ok(line) if done else note(line), *notes])
