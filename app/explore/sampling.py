"""Explore's next-token views, redrawn from the session's cached logits (never a model call): the
sampling stages at one position (raw → temperature → top-k → top-p), the position or translation
step they are shown for, and histograms of draws from the final distribution.
"""

from __future__ import annotations

import dataclasses
import html
from typing import NamedTuple

import plotly.graph_objects as go
import torch

from archplay.models.sampling import MIN_TEMPERATURE, check_settings, sample_many, staged_distribution
from archplay.viz import style
from archplay.viz.sampling import distribution_figure, sample_histogram, top_ids

from ..catalog import Catalog, UnknownModelError
from ..messages import md_escape, note, quote, short
from ..session import Analysis
from ..sliders import check

TOP_N = 20  # bars in the distribution figure
SAMPLE_COUNTS = (1, 200)  # the page's "sample once" and "sample 200 times"
MAX_DRAWS = 10_000


def settings(temperature, top_k, top_p) -> tuple[float, int, float]:
    """The sampling settings as numbers (a whole float top-k from a slider as an int), checked;
    ValueError naming the setting for anything else (a string, None, NaN through the API)."""
    temperature, top_p = _number("temperature", temperature), _number("top_p", top_p)
    if isinstance(top_k, float) and top_k.is_integer():
        top_k = int(top_k)
    check_settings(temperature, top_k, top_p)
    return temperature, top_k, top_p


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {str(value)[:40]!r}")
    return float(value)


def distribution(
    catalog: Catalog,
    analysis: Analysis | None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    step: int | None = None,
    position: int | None = None,
) -> tuple[go.Figure | None, str]:
    """The sampling stages at one position, from the cached logits, and a one-line summary.

    ``position`` picks the token whose prediction is shown (None: the Run's, the last token or an
    encoder's first mask); for an encoder-decoder ``step`` picks the translation step instead.
    Raises ValueError for settings, a step or a position outside their ranges.
    """
    temperature, top_k, top_p = settings(temperature, top_k, top_p)
    pos, message = predicted_position(analysis, step, position)
    if pos is None:
        return None, message
    staged = staged_distribution(analysis.logits[pos], temperature, top_k, top_p)
    labels_for = labels_for_run(catalog, analysis)
    fig = distribution_figure(staged, labels_for, top_n=TOP_N, title=distribution_title(analysis, pos))

    final = staged.final
    best = int(torch.argmax(final))
    kept = int(staged.kept.sum())
    vocab = int(final.shape[-1])
    summary = (
        f"Most likely: {quote(labels_for([best])[0])} at {float(final[best]):.1%} "
        f"(before sampling settings: {float(staged.raw[best]):.1%}). "
        f"{kept:,} of {vocab:,} tokens can still be drawn; entropy {float(staged.entropy):.2f} nats."
    )
    if top_k > vocab:
        summary += f" (Top-k {top_k:,} is above the vocabulary of {vocab:,}: it removes nothing.)"
    if 0 < temperature < MIN_TEMPERATURE:
        summary += f" (Temperature {temperature:.3g} is below {MIN_TEMPERATURE:g}: treated as 0, greedy.)"
    if analysis.translation is not None:
        wrote = analysis.translation.labels[pos]
        summary += f" Step {pos} of {analysis.n_steps}: the greedy translation wrote {quote(wrote)} here."
    return fig, summary


def predicted_position(analysis: Analysis | None, step: int | None, position: int | None) -> tuple[int | None, str]:
    """(the logits row to show, "") or (None, why there is none); ValueError for one out of range."""
    if analysis is None:
        return None, note("Press Run to see what the model predicts.")
    if analysis.logits is None:
        return None, note("This checkpoint has no prediction head (a bare encoder), so there is nothing to show.")
    if analysis.translation is not None:
        return (analysis.predict_at if step is None else check(step, analysis.n_steps, "step")), ""
    if position is not None and int(position) >= 0:
        return check(position, len(analysis.ids), "position"), ""
    if analysis.predict_at is None:
        if analysis.mask_token is None:
            return None, note("This encoder's tokenizer has no mask token: pick a position to see what fits there.")
        return None, note(f"Add {md_escape(analysis.mask_token)} to your text (an encoder predicts the token hidden "
                          "behind a mask), or pick a position to see what fits there.")  # fmt: skip
    return analysis.predict_at, ""


class Position(NamedTuple):
    """The prediction at a chosen position, and the session's Analysis that remembers it."""

    analysis: Analysis | None
    figure: go.Figure | None
    summary: str  # markdown


def at_position(
    catalog: Catalog, analysis: Analysis | None, position: int, temperature: float = 1.0, top_k: int = 0,
    top_p: float = 1.0,
) -> Position:
    """Show the prediction at ``position`` from now on: later redraws and samples use that position.
    Not for an encoder-decoder (its ``step`` picks the row). ValueError for a position out of range."""
    if analysis is None or analysis.translation is not None:
        return Position(analysis, *distribution(catalog, analysis, temperature, top_k, top_p))
    fig, summary = distribution(catalog, analysis, temperature, top_k, top_p, None, position)
    return Position(dataclasses.replace(analysis, predict_at=int(position)), fig, summary)


def top_tokens(labels_for, row, n: int = TOP_N) -> tuple[list[int], list[str]]:
    """The ``n`` token ids the distribution figure shows for the logits ``row`` (by raw probability,
    ties by smaller id: they stay the same whatever the settings) and their labels."""
    ids = top_ids(style.to_numpy(staged_distribution(row).raw), n).tolist()
    return ids, [str(s) for s in labels_for(ids)]


def distribution_title(analysis: Analysis, pos: int) -> str:
    """The distribution figure's title for the prediction at ``pos`` (HTML-escaped labels)."""
    if analysis.translation is not None:
        wrote_label = html.escape(short(analysis.translation.labels[pos]))
        return f"Translation step {pos}: candidates for target token {pos} (greedy wrote ‘{wrote_label}’)"
    if analysis.spec.objective == "masked":
        return f"What fits at position {pos} (‘{html.escape(short(analysis.labels[pos]))}’ there now)"
    return f"Next token after ‘{html.escape(short(analysis.labels[pos]))}’ (position {pos})"


def samples(
    catalog: Catalog,
    analysis: Analysis | None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    step: int | None = None,
    position: int | None = None,
    n: int = 200,
    seed: int = 0,
) -> tuple[go.Figure | None, str]:
    """``n`` draws (1 to 10 000) from the final distribution at the shown position: a histogram
    beside the promised probabilities, and a sentence. Same seed, same draws."""
    temperature, top_k, top_p = settings(temperature, top_k, top_p)
    n, seed = int(n), int(seed or 0)
    if not 1 <= n <= MAX_DRAWS:
        raise ValueError(f"the number of draws must be between 1 and {MAX_DRAWS}, got {n}")
    pos, message = predicted_position(analysis, step, position)
    if pos is None:
        return None, message
    final = staged_distribution(analysis.logits[pos], temperature, top_k, top_p).final  # (V,)
    draws = sample_many(final, n, seed=seed)  # (n,) from the one distribution the histogram also shows
    labels_for = labels_for_run(catalog, analysis)
    fig = sample_histogram(draws, final, labels_for, title=f"{n} draw{'s' if n > 1 else ''} at position {pos}")
    if n == 1:
        tid = int(draws[0])
        return fig, f"Drew {quote(labels_for([tid])[0])} (it had {float(final[tid]):.1%} probability)."
    top = int(torch.bincount(draws).argmax())
    share = float((draws == top).float().mean())
    return fig, (f"The most drawn token was {quote(labels_for([top])[0])}: {share:.1%} of {n} draws against "
                 f"{float(final[top]):.1%} promised. More draws, closer bars.")  # fmt: skip


def labels_for_run(catalog: Catalog, analysis: Analysis):
    """Display labels for token ids, by the Run's tokenizer (``<id>`` once its model is gone)."""
    try:
        tok = catalog.get(analysis.model_key).tokenizer
    except UnknownModelError:
        return lambda ids: [f"<{i}>" for i in ids]
    return lambda ids: list(tok.tokens(list(ids)))
