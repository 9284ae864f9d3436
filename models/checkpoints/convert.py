"""What a checkpoint converter is, and the error every loading problem becomes.

A ``Converter`` turns one Hugging Face ``model_type`` into ours: ``make_config(hf, name)`` reads
the checkpoint's ``config.json`` (a dict) into our typed config (raising ``LoadError`` or
``ValueError`` for what we cannot run), ``rename(key, tensor)`` maps one stored tensor to our
module names (``{}`` = not a weight we use; it may split or transpose), and ``finish(config,
state)`` settles what only the converted weights and the config together can say (an optional
head, an untied output matrix; a fused q/k/v split by the config's head counts, replacing entries
of ``state`` in place); it is called twice, first with ``meta`` tensors (shapes only, before anything is
allocated), then with the real ones. Each family's registry entry lists the converters it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


class LoadError(ValueError):
    """A model could not be loaded; the message says why and what would work."""


@dataclass(frozen=True)
class Converter:
    make_config: Callable[[dict, str], object]  # (HF config, display name) -> our config
    rename: Callable[[str, Tensor], dict[str, Tensor]]  # one HF tensor -> our tensors ({} = skip)
    finish: Callable[[object, dict[str, Tensor]], None] | None = None  # (our config, our tensors)

    def convert_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, t in state.items():
            out.update(self.rename(key, t))
        return out


def first(x):
    """A token id that some configs store as a list (several end tokens): the first one."""
    return x[0] if isinstance(x, list) and x else x


__all__ = ["Converter", "LoadError", "first"]
