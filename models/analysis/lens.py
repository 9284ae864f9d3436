"""The logit lens (nostalgebraist 2020): what each layer would predict if the model stopped there.

    h_l (T, D) ─► final norm ─► LM head ─► softmax ─► "layer l's next-token distribution" (T, V)

A decoder-only model reads its next-token prediction off the last residual stream through one
final norm and the LM head. Applying the same read-out to every earlier layer's residual stream
(the embeddings are layer 0) shows how the prediction forms with depth: early layers often
predict a copy of the current token, later ones converge on the model's answer. The last row
is exactly the model's own output distribution (the trace's last hidden state is taken before
the final norm, so the read-out reproduces the logits).

Only families with a causal objective have a read-out that applies to every layer (``Family.lens``
in the registry: ``model.norm`` then ``model.lm_head``). Encoders predict masked tokens through
their own head and T5 reads out the decoder stack only, so those are refused.

Memory stays small: a layer's (T, V) logits exist one chunk of positions at a time and only the
top-k, the entropy and the final answer's probability and rank are kept, never (L, T, V).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from archplay.models import registry

CHUNK_ELEMENTS = 1 << 24  # logits held at once: 16M floats = 64 MiB


@dataclass
class Lens:
    """The read-out of every layer at every position, for one sequence. All tensors on the CPU.

    Row 0 is the embeddings, row l the output of block l; the last row is the model's output.
    """

    top_ids: Tensor  # (L+1, T, k) int64, most likely first
    top_probs: Tensor  # (L+1, T, k) float32
    final_ids: Tensor  # (T,) the last layer's top-1 token: the model's greedy next-token prediction
    final_prob: Tensor  # (L+1, T) each layer's probability of final_ids
    final_rank: Tensor  # (L+1, T) int64, final_ids' rank at each layer (0 = that layer's top-1)
    entropy: Tensor  # (L+1, T) of each layer's distribution, in nats

    @property
    def layer_labels(self) -> list[str]:
        """``["embeddings", "layer 1", ..., "layer N"]``, one per row."""
        return ["embeddings"] + [f"layer {i}" for i in range(1, self.top_ids.shape[0])]


def readout(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The (final norm, LM head) pair of a decoder-only model; ValueError for other families."""
    family = registry.of(model)
    if not family.lens:
        lens = ", ".join(f.name for f in registry.families() if f.lens)
        raise ValueError(
            f"the logit lens needs a decoder-only model ({lens}), not {family.name!r}: "
            "an encoder or encoder-decoder has no read-out that applies to every layer's output"
        )
    return model.norm, model.lm_head


@torch.no_grad()
def logit_lens(model: nn.Module, hidden_states, top: int = 5, *, sequence: int = 0) -> Lens:
    """Read every layer's hidden state through the model's final norm and LM head.

    hidden_states: the trace's list, embeddings first, each (T, D) for one sequence, or
    (B, T, D), of which batch row ``sequence`` is taken. top: how many predictions to keep.
    """
    norm, head = readout(model)
    states = [_one_sequence(h, sequence) for h in hidden_states]  # each (T, D)
    _check(states, head)
    k = max(1, min(int(top), head.out_features))
    rows = max(1, CHUNK_ELEMENTS // head.out_features)  # positions per chunk
    last = _read_layer(states[-1], norm, head, k, None, rows)
    final_ids = last["top_ids"][:, 0]  # (T,)
    layers = [_read_layer(h, norm, head, k, final_ids, rows) for h in states[:-1]] + [last]
    stack = {name: torch.stack([layer[name] for layer in layers]) for name in last}  # each (L+1, T, ...)
    return Lens(final_ids=final_ids, **stack)


def _one_sequence(h: Tensor, sequence: int) -> Tensor:
    if h.dim() == 3:
        return h[sequence]  # (T, D)
    if h.dim() != 2:
        raise ValueError(f"expected hidden states of shape (T, D) or (B, T, D), got {tuple(h.shape)}")
    return h


def _check(states: list[Tensor], head: nn.Module) -> None:
    if len(states) < 2:
        raise ValueError("expected the embeddings and at least one layer's output")
    shapes = {tuple(h.shape) for h in states}
    if len(shapes) != 1:
        raise ValueError(f"every hidden state must have the same (T, D) shape, got {sorted(shapes)}")
    width = states[0].shape[-1]
    if width != head.in_features:
        raise ValueError(f"hidden states are {width} wide but the LM head reads {head.in_features}")


def _read_layer(h: Tensor, norm: nn.Module, head: nn.Module, k: int, target: Tensor | None, rows: int):
    """One layer's read-out, chunk by chunk over positions. h (T, D).

    target (T,): the token whose probability and rank to report; None = this layer's own top-1.
    Returns a dict of (T, k) top ids / probs and (T,) entropy, target prob and target rank.
    """
    weight = head.weight
    parts: dict[str, list[Tensor]] = {"top_ids": [], "top_probs": [], "final_prob": [], "final_rank": [],
                                      "entropy": []}  # fmt: skip
    for start in range(0, h.shape[0], rows):
        x = h[start : start + rows].to(device=weight.device, dtype=weight.dtype)  # (r, D)
        logp = torch.log_softmax(head(norm(x)).float(), dim=-1)  # (r, V)
        top_logp, top_ids = logp.topk(k, dim=-1)  # (r, k)
        tgt = top_ids[:, 0] if target is None else target[start : start + rows].to(weight.device)  # (r,)
        tgt_logp = logp.gather(-1, tgt[:, None])  # (r, 1)
        parts["top_ids"].append(top_ids)
        parts["top_probs"].append(top_logp.exp())
        parts["final_prob"].append(tgt_logp[:, 0].exp())
        parts["final_rank"].append((logp > tgt_logp).sum(-1))  # tokens strictly more likely
        parts["entropy"].append(torch.special.entr(logp.exp()).sum(-1))  # -Σ p log p, 0 log 0 = 0
    return {name: torch.cat(chunks).cpu() for name, chunks in parts.items()}


__all__ = ["Lens", "logit_lens", "readout"]
