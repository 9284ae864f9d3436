"""Mixture-of-experts routing: which experts the router scored and chose for each token.

``routing_heatmap`` draws one MoE layer's router probabilities as a token × expert heatmap
(row t is token t, column e is expert e) and rings the cells of the experts each token actually
ran; ``expert_load_bars`` draws the share of routed (token, slot) pairs each expert received.

Reading the figures back:

* routing: the heatmap trace "router probability" has ``z`` = the (T, E) probabilities as
  given and ``customdata[t][e] == "‘<label t>’ → ‘<expert label e>’"`` (HTML-escaped);
  the scatter trace "chosen" has one point per (token, slot) in row-major order of the
  (T, k) ``chosen`` array: ``x`` the expert, ``y`` the token, ``customdata`` rows
  ``[label, rank (1 = the router's first choice), probability]``.
* load: the bar trace "load" has ``y`` = the shares as given, ``x`` = 0..E-1 and
  ``customdata`` rows ``[expert label, slots]`` when slot counts are given.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from archplay.viz import style
from archplay.viz.attention import pair_labels, tick_positions, tick_text

_CELL_HOVER = "token %{y:d} → expert %{x:d}<br>%{customdata}<br>router probability %{z:.4f}<extra></extra>"
_CHOSEN_HOVER = (
    "token %{y:d} ‘%{customdata[0]}’ ran expert %{x:d}<br>"
    "choice %{customdata[1]} of K · router probability %{customdata[2]:.4f}<extra></extra>"
)


def expert_labels(n_experts: int) -> list[str]:
    """The default expert names: ``expert 0`` .. ``expert E-1``."""
    return [f"expert {e}" for e in range(n_experts)]


def routing_heatmap(
    probs,
    chosen,
    labels,
    *,
    title: str = "Router probabilities",
    experts: list[str] | None = None,
    max_ticks: int = 48,
) -> go.Figure:
    """Token × expert heatmap of router probabilities, the experts each token ran ringed.

    ``probs`` (T, E): each row the router's softmax over the E experts; ``z`` holds it unchanged
    and the colour runs from 0 to its largest value.
    ``chosen`` (T, k) integers: the experts each token ran. Its first choice (the largest
    probability among its k) is a white dot ringed in black, the others open black rings.
    ``labels``: one display label per token; ``experts``: one name per expert (default "expert e").
    """
    z = style.to_numpy(probs)
    picks = style.to_numpy(chosen)
    if z.ndim != 2 or z.shape[0] != len(labels):
        raise ValueError(f"expected (tokens, experts) probabilities for {len(labels)} tokens, got {z.shape}")
    n_tokens, n_experts = z.shape
    if picks.ndim != 2 or picks.shape[0] != n_tokens or not np.issubdtype(picks.dtype, np.integer):
        raise ValueError(f"expected (tokens, k) integer expert indices for {n_tokens} tokens, got {picks.shape}")
    if picks.size and (picks.min() < 0 or picks.max() >= n_experts):
        raise ValueError(f"expert indices must be in 0..{n_experts - 1}")
    experts = list(experts) if experts is not None else expert_labels(n_experts)
    if len(experts) != n_experts:
        raise ValueError(f"{len(experts)} expert names for {n_experts} experts")

    height = int(np.clip(160 + 22 * n_tokens, 360, 940))
    row_px = (height - 160) / max(n_tokens, 1)
    heatmap = dict(
        type="heatmap",
        name="router probability",
        z=z,
        x=np.arange(n_experts),
        y=np.arange(n_tokens),
        customdata=pair_labels(labels, experts),
        hovertemplate=_CELL_HOVER,
        colorscale=style.ROUTER_SCALE,
        zmin=0.0,
        zmax=float(z.max()) if z.size and z.max() > 0 else 1.0,
        xgap=1 if n_experts <= 64 else 0,
        ygap=1 if n_tokens <= 64 else 0,
        colorbar=dict(title=dict(text="router<br>probability"), thickness=14),
    )
    traces = [heatmap, _chosen_marks(z, picks, labels, row_px)]
    xt = tick_positions(n_experts, 32)
    yt = tick_positions(n_tokens, max_ticks)
    layout = dict(
        xaxis=dict(
            tickmode="array", tickvals=xt.tolist(), side="top",
            ticktext=[_coloured(tick_text(experts, [e])[0], style.expert_colour(e)) for e in xt],
            showgrid=False, zeroline=False, range=[-0.5, n_experts - 0.5],
        ),
        yaxis=dict(
            title_text="token", tickmode="array", tickvals=yt.tolist(), ticktext=tick_text(labels, yt),
            autorange="reversed", showgrid=False, zeroline=False,
            tickfont=dict(size=9 if len(yt) > 24 else 12),
        ),
        showlegend=False,
    )  # fmt: skip
    return style.figure(data=traces,
        layout=style.base_layout(title, height=height, plot_bgcolor="white", margin=dict(l=90, r=30, t=130, b=30),
                                 **layout),
    )  # fmt: skip


def _chosen_marks(z: np.ndarray, picks: np.ndarray, labels, row_px: float) -> dict:
    """One ring per (token, slot): filled for the token's first choice, open for the others."""
    n_tokens, k = picks.shape
    tokens = np.repeat(np.arange(n_tokens), k)  # (T*k,) row-major, like picks.reshape(-1)
    experts = picks.reshape(-1)
    p = z[tokens, experts]
    # rank within the token's k picks by probability (1 = highest; ties keep slot order)
    order = np.argsort(-z[np.arange(n_tokens)[:, None], picks], axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, k + 1)[None, :].repeat(n_tokens, 0), axis=1)
    ranks = ranks.reshape(-1)
    customdata = np.empty((len(tokens), 3), dtype=object)
    customdata[:, 0] = [style.safe_label(labels[t]) for t in tokens]
    customdata[:, 1] = ranks
    customdata[:, 2] = p.astype(np.float64)
    size = float(np.clip(row_px * 0.6, 4, 12))
    return dict(
        type="scatter",
        name="chosen",
        x=experts,
        y=tokens,
        mode="markers",
        marker=dict(  # a white dot ringed in black reads on pale and dark cells alike
            symbol=np.where(ranks == 1, "circle", "circle-open").tolist(),
            size=size,
            color=np.where(ranks == 1, "white", style.CHOSEN).tolist(),
            line=dict(width=1.5, color=style.CHOSEN),
        ),
        customdata=customdata,
        hovertemplate=_CHOSEN_HOVER.replace("K", str(k)),
    )


def expert_load_bars(
    load, *, title: str = "Expert load", experts: list[str] | None = None, slots=None
) -> go.Figure:
    """Bars of the share of routed (token, slot) pairs each expert received, with the uniform share dashed.

    ``load`` (E,): shares (they sum to 1 when every slot was routed); ``y`` holds them unchanged.
    ``slots`` (E,), optional: the slot counts behind the shares, shown on hover.
    """
    y = style.to_numpy(load)
    if y.ndim != 1:
        raise ValueError(f"expected one share per expert, got shape {y.shape}")
    n_experts = y.shape[0]
    experts = list(experts) if experts is not None else expert_labels(n_experts)
    if len(experts) != n_experts:
        raise ValueError(f"{len(experts)} expert names for {n_experts} experts")
    customdata = np.empty((n_experts, 2), dtype=object)
    customdata[:, 0] = [style.safe_label(e) for e in experts]
    customdata[:, 1] = style.to_numpy(slots).astype(np.int64) if slots is not None else -1
    counts = "<br>%{customdata[1]} routed slots" if slots is not None else ""
    bars = dict(
        type="bar",
        name="load",
        x=np.arange(n_experts),
        y=y,
        marker=dict(color=[style.expert_colour(e) for e in range(n_experts)], line=dict(width=0)),
        customdata=customdata,
        hovertemplate="%{customdata[0]}<br>share %{y:.1%}" + counts + "<extra></extra>",
    )
    uniform = 1.0 / n_experts if n_experts else 0.0
    xt = tick_positions(n_experts, 32)
    top = float(max(y.max() if n_experts else 0.0, uniform))
    layout = dict(
        xaxis=dict(title_text="expert", tickmode="array", tickvals=xt.tolist(),
                   ticktext=[f"{e}" for e in xt], range=[-0.6, n_experts - 0.4]),
        yaxis=dict(title_text="share of routed slots", tickformat=".0%", range=[0, top * 1.2 or 1.0]),
        shapes=[dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=uniform, y1=uniform,
                     line=dict(color=style.BALANCED, width=1.5, dash="dash"))],
        annotations=[dict(xref="paper", x=1, yref="y", y=uniform, text=f"balanced {uniform:.0%}",
                          showarrow=False, xanchor="right", yanchor="bottom",
                          font=dict(color=style.BALANCED, size=11))],
        showlegend=False,
        bargap=0.25,
    )  # fmt: skip
    return style.figure(data=[bars], layout=style.base_layout(title, height=340, margin=dict(l=70, r=20, t=90, b=50),
                                                         **layout))  # fmt: skip


def _coloured(text: str, colour: str) -> str:
    """Tick text in an expert's colour (plotly renders this small HTML subset)."""
    return f"<span style='color:{colour}'>{text}</span>"


def specialisation_heatmap(counts, tags, *, title: str = "Expert by part of speech") -> go.Figure:
    """Which expert each part of speech is sent to: row = a tag, column = an expert.

    ``counts`` (tags, E) first-choice counts; rows with no tokens are dropped. ``z`` is each row
    normalised, P(first-choice expert | part of speech); hover adds the count. A row concentrated
    on one expert is a specialisation the router learned (it was never told the tags).
    """
    counts = style.to_numpy(counts).astype(np.int64)
    if counts.ndim != 2 or counts.shape[0] != len(tags):
        raise ValueError(f"expected ({len(tags)}, experts) counts, got shape {counts.shape}")
    keep = np.flatnonzero(counts.sum(1) > 0)
    c = counts[keep]
    z = c / c.sum(1, keepdims=True)
    names = [style.safe_label(tags[i]) for i in keep]
    E = counts.shape[1]
    customdata = np.stack([np.broadcast_to(np.array(names, dtype=object)[:, None], c.shape), c], axis=-1)
    heatmap = dict(
        type="heatmap", z=z, x=np.arange(E), y=names, customdata=customdata, colorscale=style.ROUTER_SCALE,
        zmin=0, zmax=1, colorbar=dict(title=dict(text="share"), thickness=14, tickformat=".0%"),
        hovertemplate="%{customdata[0]} → expert %{x}<br>%{z:.1%} of its tokens (%{customdata[1]})<extra></extra>",
    )  # fmt: skip
    layout = dict(
        xaxis=dict(title_text="first-choice expert", tickmode="array", tickvals=list(range(E)),
                   ticktext=[_coloured(str(e), style.expert_colour(e)) for e in range(E)]),
        yaxis=dict(title_text="part of speech", autorange="reversed"),
    )  # fmt: skip
    return style.figure(data=[heatmap], layout=style.base_layout(
        title, height=140 + 26 * len(keep), margin=dict(l=90, r=20, t=90, b=50), **layout))  # fmt: skip
