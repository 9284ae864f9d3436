"""A recipe's design at a published model's size: "the same recipe at 7 B".

A Lab recipe chooses a design (family, positions, norm and where it sits, activation, attention
pattern, grouped-query ratio, experts, the scan's state) at a size a CPU can train (at most
200 M parameters: ``training.recipe.MAX_PARAMETERS``). ``at_size(recipe, "7b")`` keeps every design
choice and takes the *shape* published models of that size have (width, layers, heads: GPT-3's
ladder, Llama's at 7 B and above, Mamba's own for a state-space model), so that the Scale tab can
show what the design costs at full size beside the real models:

    cfg = at_size(builtin_recipe("gpt"), "7b")   # GPT-2's design at 4096 wide, 32 layers, 32 heads
    estimate(cfg)["params"]

What scales with the shape: the feed-forward width keeps the recipe's ratio to the width (rounded
up to a multiple of 256, as Llama rounds 8/3 · 4096 to 11,008), the key/value heads keep the
recipe's sharing (heads per key/value head), an encoder-decoder splits the layers between its two
stacks. What is fixed: a real tokenizer's vocabulary (``VOCAB``, not the story world's few
thousand words) and a context of ``CONTEXT`` tokens. Everything else (experts and top-k, the
window, d_state and expand, biases, tied embeddings) is the recipe's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

VOCAB = 32_000  # Llama's, Mistral's: a real tokenizer's vocabulary
CONTEXT = 4096
ROUND = 256  # feed-forward widths are rounded up to a multiple of this


@dataclass(frozen=True)
class Shape:
    name: str  # "7b"
    title: str  # "7 B"
    width: int
    layers: int
    heads: int
    ssm_layers: int  # a state-space model's blocks at this width (Mamba's ladder: about two per transformer layer)
    like: str  # the published models of this shape


SHAPES = {s.name: s for s in (
    Shape("125m", "125 M", 768, 12, 12, 24, "GPT-3 Small, GPT-2 124M; Mamba-130M"),
    Shape("350m", "350 M", 1024, 24, 16, 48, "GPT-3 Medium; Mamba-370M"),
    Shape("1.3b", "1.3 B", 2048, 24, 16, 48, "GPT-3 XL; Mamba-1.4B"),
    Shape("2.7b", "2.7 B", 2560, 32, 32, 64, "GPT-3 2.7B; Mamba-2.8B"),
    Shape("7b", "7 B", 4096, 32, 32, 64, "GPT-3 6.7B, Llama-2-7B, Mistral-7B"),
    Shape("13b", "13 B", 5120, 40, 40, 80, "GPT-3 13B, Llama-2-13B"),
    Shape("70b", "70 B", 8192, 80, 64, 160, "Llama-2-70B, Llama-3-70B"),
)}  # fmt: skip


def shape(size: str) -> Shape:
    """The shape called ``size`` ("7b", "7B", "7 B"); ValueError naming the known ones."""
    key = str(size).lower().replace(" ", "")
    if key not in SHAPES:
        raise ValueError(f"unknown size {str(size)[:20]!r}; sizes: {', '.join(SHAPES)}")
    return SHAPES[key]


def _round_up(x: float, to: int = ROUND) -> int:
    return max(to, math.ceil(x / to - 1e-9) * to)


def at_size(recipe, size: str):
    """The typed config of ``recipe``'s design at the shape ``size`` (see the module's docstring),
    named "<recipe> at <size>". The recipe itself is checked as usual; the result is past its caps on
    purpose, so it is a config for ``estimate`` (built on the meta device), never for training."""
    from archplay.models.training.recipe import _ffn, config_for, tokenizer_for

    s = shape(size)
    r = copy.copy(recipe)
    changes = {"width": s.width, "max_len": CONTEXT, "context": min(recipe.context, CONTEXT),
               "name": f"{recipe.title} at {s.title}"}  # fmt: skip
    if recipe.family == "ssm":
        changes["layers"] = s.ssm_layers
    else:
        changes["layers"] = max(1, s.layers // 2) if recipe.family == "encoder-decoder" else s.layers
        changes["heads"] = s.heads
        if recipe.kv_heads is not None:  # keep how many query heads share a key/value head
            changes["kv_heads"] = max(1, s.heads // max(1, recipe.heads // max(1, recipe.kv_heads)))
        ratio = _ffn(recipe)[2] / recipe.width
        changes["d_ff"] = _round_up(ratio * s.width)
        if recipe.window is not None:
            changes["window"] = min(recipe.window, CONTEXT)
    for key, value in changes.items():  # past the recipe's caps on purpose: not through its checks
        object.__setattr__(r, key, value)
    cfg = config_for(r, tokenizer_for(recipe))
    return dataclasses.replace(cfg, vocab_size=VOCAB)


def scaled_name(recipe_title: str, size: str) -> str:
    return f"{recipe_title} at {shape(size).title}"


__all__ = ["CONTEXT", "SHAPES", "Shape", "VOCAB", "at_size", "scaled_name", "shape"]
