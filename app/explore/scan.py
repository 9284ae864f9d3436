"""The scan view (state-space models such as Mamba) on the Explore page: hidden attention and the step size Δ.

Mamba has no attention weights, but its selective scan can be unrolled into one: output r is
a weighted sum of the inputs c ≤ r, with weights α[d, r, c] per channel d. The traced Run
reports mean_d |α| per layer, (T, T), and the step sizes Δ (T, D_inner); the session keeps the
former and the mean of Δ over the channels, (T,), which is all the page draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import plotly.graph_objects as go
import torch
from torch import Tensor

from archplay.models import Trace
from archplay.viz.ssm import delta_bars, hidden_attention_heatmap

from ..sliders import check

if TYPE_CHECKING:
    from ..session import Analysis

HELP = (
    "**Hidden attention.** Mamba has no attention layer: it carries a fixed-size state from token "
    "to token. Unrolling that recurrence shows how much each earlier input (column) still counts in "
    "each output (row): α = C · (the decay exp(Δ·A) of every step in between) · Δ·B, averaged here "
    "over the layer's channels as mean |α|. It is lower-triangular because the scan only runs "
    "forward, and it fades with distance because every step multiplies the old state by a decay "
    "below 1. The map is T × T only as a picture: the model itself never builds it, so its cost "
    "grows linearly with the text (the **Compare** tab measures latency against length)."
)
HEAD_INFO = "Mamba has no heads: one hidden-attention map per layer (averaged over its channels)"
DELTA_HELP = (
    "**Step size Δ** (below the map) is chosen by the model for every token: a large Δ lets the "
    "token overwrite the state (the past fades fast), a small Δ lets it pass almost unnoticed "
    "(the past is kept). This selectivity is what makes Mamba's scan input-dependent."
)


@dataclass
class Scan:
    """A Run's scan, unrolled: hidden attention and mean step sizes, per layer, float32 on the CPU."""

    hidden_attention: list[Tensor]  # per layer (T, T), lower triangular
    delta_mean: list[Tensor]  # per layer (T,): Δ averaged over the D_inner channels
    d_inner: int
    blocks: list[int] | None = None  # a hybrid's: the model's layer of each entry (its Mamba layers); None = every layer

    @classmethod
    def from_trace(cls, trace: Trace, config=None) -> Scan:
        """From batch row 0 of a traced run, on the CPU (``Trace.detach(0)``). A hybrid's ``config`` maps each
        entry to its layer (``config.mamba_blocks``)."""
        blocks = getattr(config, "mamba_blocks", None)
        return cls(
            hidden_attention=trace.ssm_attention,
            delta_mean=[d.mean(-1) for d in trace.ssm_delta],
            d_inner=int(trace.ssm_delta[0].shape[-1]),
            blocks=list(blocks) if blocks is not None and len(blocks) == len(trace.ssm_attention) else None,
        )

    def block(self, layer: int) -> int:
        """The model's layer of entry ``layer`` (itself unless only some layers scan)."""
        return layer if self.blocks is None else self.blocks[layer]

    @property
    def n_layer(self) -> int:
        return len(self.hidden_attention)


TITLE = "Layer {{layer}} of {n_layer}: hidden attention, mean |α| over {d_inner} channels"


def attention_figure(scan: Scan, labels: list[str], layer, *, cells: bool = True) -> go.Figure:
    layer = check(layer, scan.n_layer, "layer")
    title = TITLE.format(n_layer=scan.n_layer, d_inner=scan.d_inner).format(layer=layer)
    return hidden_attention_heatmap(scan.hidden_attention[layer], labels, title=title, cells=cells)


def delta_figure(analysis: Analysis | None, layer) -> go.Figure | None:
    """The mean step size Δ per token in ``layer`` of the session's Run; None for a Run without a scan. A hybrid's
    layer is the model's: an attention layer has no Δ (its bars are empty and its title says so)."""
    if analysis is None:
        return None
    if analysis.hybrid:
        layer = check(layer, analysis.layer_count(), "layer")
        return delta_bars(delta_rows(analysis)[layer], analysis.labels,
                          title=delta_titles(analysis)[layer].format(layer=layer))  # fmt: skip
    if analysis.scan is None:
        return None
    scan = analysis.scan
    layer = check(layer, scan.n_layer, "layer")
    return delta_bars(scan.delta_mean[layer], analysis.labels, title=DELTA_TITLE.format(d_inner=scan.d_inner).format(
        layer=layer))  # fmt: skip


DELTA_TITLE = "Layer {{layer}}: step size Δ per token (mean over {d_inner} channels)"


def delta_rows(analysis: Analysis) -> list[Tensor]:
    """A hybrid's mean Δ per token for every model layer: its Mamba layers', zeros for an attention layer."""
    s = analysis.mamba
    return [s.delta_mean[entry] if what == "scan" else torch.zeros_like(s.delta_mean[0])
            for what, entry in map(analysis.part, range(analysis.layer_count()))]  # fmt: skip


def delta_titles(analysis: Analysis) -> list[str] | None:
    """A hybrid's Δ title per layer (``{layer}`` to fill in): its Mamba layers', or why an attention layer has none."""
    if not analysis.hybrid:
        return None
    mamba = ", ".join(map(str, analysis.mamba.blocks))
    return [DELTA_TITLE.format(d_inner=analysis.mamba.d_inner) if analysis.part(i)[0] == "scan"
            else f"Layer {{layer}} attends: no step size Δ (the Mamba layers: {mamba})"
            for i in range(analysis.layer_count())]  # fmt: skip
