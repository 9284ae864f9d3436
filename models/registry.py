"""The family registry: everything the rest of archplay needs to know about an architecture family.

A family is its model file (``archplay.models.architectures``) plus one ``Family`` entry,
registered in ``archplay.models.families`` (the only place that lists them). Loading, the
architecture card, the logit lens, evaluation, training and the app's views ask this registry;
nothing else branches on a family's name.

    from archplay.models import registry
    fam = registry.of(model)              # the entry of a built model (by ``model.config.family``)
    fam = registry.get("moe")             # by name; ValueError naming the known ones
    registry.names()                      # in registration order
    registry.checkpoint("mixtral")        # (family, converter) for a Hugging Face model_type

A test (or a program embedding archplay) may ``register`` a family of its own; ``unregister``
takes it out again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

OBJECTIVES = ("causal", "masked", "translation")
# Views the app can show beyond a run's tokens and prediction. A family lists the ones its trace feeds.
VIEWS = (
    "attention",  # trace.attentions: self-attention maps, one per layer and head
    "translation",  # an encoder-decoder's translation: decoder self- and cross-attention per step
    "routing",  # trace.router_logits / expert_indices: a mixture of experts' gate
    "scan",  # trace.ssm_attention / ssm_delta: a state-space scan's hidden attention and step sizes
)
TRACE_FIELDS = (
    "hidden_states", "attentions", "decoder_hidden_states", "decoder_attentions", "cross_attentions",
    "router_logits", "expert_indices", "ssm_attention", "ssm_delta",
)  # fmt: skip


@dataclass(frozen=True)
class Family:
    """One architecture family.

    ``config`` is its typed config class (``from_dict`` / ``to_dict``), ``model`` its module class
    (built as ``model(config)``). ``objective`` is what its head predicts: the next token
    (``causal``), a masked token (``masked``) or a translation (``translation``).
    ``checkpoints`` maps the Hugging Face ``model_type``s it reads to their converters
    (``archplay.models.checkpoints.convert.Converter``). ``card_rows(config)`` describes its
    design choices as (name, value) rows; ``parameter_rules`` are (regex matched at the start of
    a parameter name, component) pairs, first match wins. ``trace_fields`` are the Trace fields
    its traced forward pass fills; ``views`` the app views it has (``VIEWS``).
    """

    name: str
    title: str
    config: type
    model: type
    objective: str
    card_rows: Callable[[object], list[tuple[str, str]]]
    parameter_rules: tuple[tuple[str, str], ...]
    trace_fields: tuple[str, ...]
    views: tuple[str, ...]
    checkpoints: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not self.name or not isinstance(self.name, str):
            problems.append("a family needs a name")
        if self.objective not in OBJECTIVES:
            problems.append(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if unknown := set(self.views) - set(VIEWS):
            problems.append(f"unknown views {sorted(unknown)}; known: {', '.join(VIEWS)}")
        if unknown := set(self.trace_fields) - set(TRACE_FIELDS):
            problems.append(f"unknown trace fields {sorted(unknown)}")
        if problems:
            raise ValueError(f"family {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "checkpoints", MappingProxyType(dict(self.checkpoints)))

    @property
    def generates(self) -> bool:
        """Whether it writes text (continues it, or translates it); a masked model fills blanks instead."""
        return self.objective != "masked"

    @property
    def causal(self) -> bool:
        """Whether its (self-)attention or scan only looks back."""
        return self.objective != "masked"

    @property
    def lens(self) -> bool:
        """Whether one read-out (``model.norm`` then ``model.lm_head``) applies to every layer's output."""
        return self.objective == "causal"

    @property
    def has_heads(self) -> bool:
        return "attention" in self.views

    def build(self, config) -> object:
        return self.model(config)


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` (its name and model_types must be new); returns it."""
    if family.name in _FAMILIES:
        raise ValueError(f"a family named {family.name!r} is already registered")
    taken = {t: f.name for f in _FAMILIES.values() for t in f.checkpoints}
    if clash := [t for t in family.checkpoints if t in taken]:
        raise ValueError(f"model_type {clash[0]!r} is already read by the {taken[clash[0]]!r} family")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    _FAMILIES.pop(name, None)


def get(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown architecture family {name!r}; known: {', '.join(_FAMILIES)}") from None


def of(model) -> Family:
    """The family of a built model (or of a config), read from its ``config.family``."""
    config = getattr(model, "config", model)
    return get(getattr(config, "family", None))


def names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def families() -> tuple[Family, ...]:
    return tuple(_FAMILIES.values())


def model_types() -> tuple[str, ...]:
    """Every Hugging Face ``model_type`` some family reads, in registration order."""
    return tuple(t for f in _FAMILIES.values() for t in f.checkpoints)


def checkpoint(model_type: str) -> tuple[Family, object] | None:
    """(family, converter) for a Hugging Face ``model_type``, or None when no family reads it."""
    for f in _FAMILIES.values():
        if model_type in f.checkpoints:
            return f, f.checkpoints[model_type]
    return None


__all__ = ["Family", "OBJECTIVES", "TRACE_FIELDS", "VIEWS", "checkpoint", "families", "get", "model_types",
           "names", "of", "register", "unregister"]  # fmt: skip
