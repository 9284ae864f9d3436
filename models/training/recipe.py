"""Recipes: a model and how to train it, as one small JSON object (what the Lab edits and ``archplay-train`` reads).

    {"family": "decoder", "layers": 4, "width": 128, "heads": 4, "kv_heads": 2, "positions": "rope",
     "norm": "rmsnorm", "norm_position": "pre", "activation": "swiglu", "attention": "sliding", "window": 64,
     "objective": "next-token", "steps": 300, "batch": 16, "lr": 0.003, "seed": 0}

    r = Recipe.from_json("r.json")          # or Recipe.from_dict({...}); ValueError says what is wrong
    r = builtin_recipe("gpt")               # the recipe that made a built-in (assets/recipes/gpt.json)
    r = blank_recipe("moe")                 # a small starting point per family
    cfg = config_for(r, tokenizer_for(r))   # the family's typed config
    parameter_count(r)                      # {"total", "active", "embedding", "by_component"}, on the meta device
    flops_per_token(r)                      # {"forward", "train", ...}

Keys (everything but ``family`` defaults to the family's blank recipe):

* ``family``: a registry name: decoder | encoder | encoder-decoder | moe | ssm.
* ``layers``, ``width``; attention families: ``heads``, ``kv_heads`` (fewer = grouped-query, 1 =
  multi-query; decoder and moe only), ``d_ff`` (default 4·width, or ≈ 8/3·width for a gated MLP).
* ``positions``: learned | sinusoidal | rope | alibi | relative | none (the encoder-decoder: relative).
* ``norm``: layernorm | rmsnorm; ``norm_position``: pre | post.
* ``activation``: relu | gelu | swiglu | geglu (the last two gated: Shazeer 2020).
* ``attention``: full | sliding | strided | block, and ``window`` for the last three: the keys a query
  may see, itself included (Mistral's ``sliding_window``).
* moe: ``experts``, ``top_k``, ``shared_expert`` (Qwen2-MoE's always-on expert), ``load_balancing``
  (the weight of Switch's auxiliary loss). ssm: ``d_state``, ``expand``.
* ``objective``: next-token | masked | translation; it follows from the family (decoder, moe, ssm:
  next-token; encoder: masked; encoder-decoder: translation) and may be given only to say so.
* schedule: ``steps``, ``batch`` (the global batch, whatever the number of processes), ``lr`` (peak;
  linear warm-up over ``warmup`` steps (default 100, at most steps/5), then cosine to a tenth), ``seed``,
  ``context`` (the training window, default 128).
* optional: ``name``; ``max_len`` (the longest input the model accepts, default ``context``: the
  built-ins accept 256 though trained on 128-token windows); ``bias`` (decoder and moe: biases on the
  attention and MLP projections, as GPT-2; default false, as Llama).

Sizes are capped (``LIMITS``, and ``MAX_PARAMETERS`` in all) at what a CPU playground can train, so
a hostile recipe is a ValueError, never a huge allocation.

How a recipe maps to a family's config is the table ``_FAMILIES`` below (one entry per family, as
the registry has one): a choice the installed config class has no field for is accepted only at
that class's fixed behaviour (e.g. post-norm for BERT) and is otherwise a ValueError naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from archplay.models import registry
from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.architectures.encoder import EncoderConfig
from archplay.models.architectures.encoder_decoder import EncoderDecoderConfig
from archplay.models.architectures.moe import MoEConfig
from archplay.models.architectures.ssm import MambaConfig
from archplay.models.checkpoints.assets import ASSETS
from archplay.models.story.tokenizer import SPTokenizer

RECIPE_DIR = ASSETS / "recipes"
BUILTIN_RECIPES = ("gpt", "bert", "t5", "moe", "mamba")

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "relative", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("relu", "gelu", "swiglu", "geglu")
ATTENTION = ("full", "sliding", "strided", "block")
OBJECTIVES = {"causal": "next-token", "masked": "masked", "translation": "translation"}  # registry's -> recipe's

# The most a CPU playground trains: per key, and in all.
LIMITS = {
    "layers": 48, "width": 2048, "heads": 64, "kv_heads": 64, "d_ff": 16384, "experts": 64, "top_k": 64,
    "d_state": 256, "expand": 8, "window": 8192, "context": 4096, "max_len": 8192, "steps": 1_000_000,
    "batch": 4096, "warmup": 100_000, "seed": 2**31 - 1,
}  # fmt: skip
MAX_PARAMETERS = 200_000_000
MAX_FILE_BYTES = 1 << 20  # a recipe is a few hundred bytes

_INTS = ("layers", "width", "heads", "kv_heads", "d_ff", "experts", "top_k", "d_state", "expand", "window",
         "context", "max_len", "steps", "batch", "warmup")  # fmt: skip
_CHOICES = {"positions": POSITIONS, "norm": NORMS, "norm_position": NORM_POSITIONS, "activation": ACTIVATIONS,
            "attention": ATTENTION, "objective": tuple(OBJECTIVES.values())}  # fmt: skip

_COMMON = ("family", "name", "objective", "layers", "width", "norm", "steps", "batch", "lr", "warmup", "seed",
           "context", "max_len")  # fmt: skip
_REQUIRED = ("layers", "width", "steps", "batch", "lr", "seed", "objective", "norm", "context")
_ATTENTION_KEYS = ("heads", "kv_heads", "d_ff", "positions", "norm_position", "activation", "attention", "window")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; ``None`` marks a key that does not apply to the family (or ``window``
    with full attention, ``d_ff`` / ``name`` / ``max_len`` left to their defaults)."""

    family: str
    layers: int
    width: int
    steps: int
    batch: int
    lr: float
    seed: int
    objective: str
    norm: str
    context: int = 128
    name: str | None = None
    max_len: int | None = None
    warmup: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    d_ff: int | None = None
    positions: str | None = None
    norm_position: str | None = None
    activation: str | None = None
    attention: str | None = None
    window: int | None = None
    bias: bool | None = None
    experts: int | None = None
    top_k: int | None = None
    shared_expert: bool | None = None
    load_balancing: float | None = None
    d_state: int | None = None
    expand: int | None = None

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_dict(cls, d: object) -> Recipe:
        """A recipe from a JSON object; the family's blank recipe fills the keys it leaves out."""
        if not isinstance(d, dict):
            raise ValueError(f"a recipe is a JSON object of keys and values, got {type(d).__name__}")
        if unknown := sorted(str(k)[:40] for k in d if k not in KEYS):
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ValueError(f"unknown recipe keys {unknown[:5]}{more}; known keys: {', '.join(KEYS)}")
        if nulls := sorted(k for k, v in d.items() if v is None):
            raise ValueError(f"{', '.join(nulls)}: null is not a value; leave a key out to get its default")
        family = d.get("family")
        spec = _spec(family)
        if extra := [k for k in d if k not in spec.keys]:
            raise ValueError(f"{', '.join(sorted(extra))} do not apply to the {family} family; "
                             f"its keys are: {', '.join(spec.keys)}")  # fmt: skip
        return cls(**{**spec.blank, **d})

    @classmethod
    def from_json(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no such recipe file: {path}")
        if not path.is_file():
            raise ValueError(f"{path} is not a file; give a recipe's JSON file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is larger than {MAX_FILE_BYTES:,} bytes; a recipe is a small JSON object")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path} could not be read as JSON: {e}") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        """The keys that apply (JSON-ready); ``from_dict`` reads it back to an equal recipe."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def replace(self, **changes) -> Recipe:
        """A copy with ``changes`` applied (and checked); a change to None drops the key (back to its default)."""
        return Recipe.from_dict({k: v for k, v in {**self.to_dict(), **changes}.items() if v is not None})

    # ------------------------------------------------------------------ checks

    def __post_init__(self) -> None:
        spec = _spec(self.family)
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if extra := [k for k in given if k not in spec.keys]:
            raise ValueError(f"{', '.join(sorted(extra))} do not apply to the {self.family} family")
        if missing := [k for k in (*_REQUIRED, *spec.required) if k not in given]:
            raise ValueError(f"the {self.family} family needs {', '.join(missing)}")
        for key, value in given.items():
            _check_value(key, value)
        self._check_family(spec)
        if (n := _rough_parameters(self)) > MAX_PARAMETERS:
            raise ValueError(f"this recipe has about {n:,} parameters; the playground trains at most "
                             f"{MAX_PARAMETERS:,} (make layers, width, d_ff or experts smaller)")  # fmt: skip

    def _check_family(self, spec: _Family) -> None:
        want = OBJECTIVES[registry.get(self.family).objective]
        if self.objective != want:
            raise ValueError(f"the {self.family} family trains on the {want} objective, not {self.objective}")
        if self.max_len is not None and self.max_len < self.context:
            raise ValueError(f"max_len ({self.max_len}) must be at least the training context ({self.context})")
        if self.heads is not None:
            if self.width % self.heads:
                raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
            if self.kv_heads is not None and self.heads % self.kv_heads:
                raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
            if not spec.grouped_query and self.kv_heads not in (None, self.heads):
                raise ValueError(f"the {self.family} family has no grouped-query attention: kv_heads must equal heads")
        if self.attention is not None:
            local = self.attention != "full"
            if local and self.window is None:
                raise ValueError(f"attention {self.attention!r} needs window (how many keys a query sees)")
            if not local and self.window is not None:
                raise ValueError("window applies only to sliding, strided or block attention; drop it for full")
        for key, allowed in spec.only.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"the {self.family} family supports {key} {' or '.join(allowed)} only, "
                                 f"not {getattr(self, key)!r}")  # fmt: skip
        if self.experts is not None and self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed experts ({self.experts})")

    # ------------------------------------------------------------------ derived

    @property
    def title(self) -> str:
        return self.name or f"{self.family} recipe"

    @property
    def tokenizer_wrap(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(prefix, suffix) specials around every text, as the built-in of the same objective has them."""
        return _WRAP[registry.get(self.family).objective]

    def schedule(self):
        """The training loop's ``train.Schedule`` for this recipe."""
        from archplay.models.training.train import Schedule

        prefix, suffix = self.tokenizer_wrap
        return Schedule(
            self.title, lambda tok: config_for(self, tok), prefix=prefix, suffix=suffix, steps=self.steps,
            batch_size=self.batch, seq_len=self.context, lr=self.lr, warmup=default_warmup(self),
            aux_loss_coef=self.load_balancing or 0.0, eval_every=eval_every(self.steps),
        )  # fmt: skip


def default_warmup(r: Recipe) -> int:
    """The warm-up steps: the recipe's ``warmup`` (default 100), at most a fifth of the steps (as ``train.with_steps``)."""
    return min(100 if r.warmup is None else r.warmup, max(1, r.steps // 5))


def eval_every(steps: int) -> int:
    """How often the validation loss is measured: every 100 steps, or about 20 times in a shorter run
    (at least 5 steps apart); always after the last step."""
    return max(5, min(100, steps // 20))


def _check_value(key: str, value) -> None:
    if key in _INTS or key == "seed":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key} must be a whole number, got {_show(value)}")
        low = 0 if key == "seed" else 1
        if not low <= value <= LIMITS[key]:
            raise ValueError(f"{key} must be between {low} and {LIMITS[key]:,} (the playground's cap), got {_show(value)}")
    elif key in _CHOICES:
        if not isinstance(value, str) or value not in _CHOICES[key]:
            raise ValueError(f"{key} must be one of {', '.join(_CHOICES[key])}, got {_show(value)}")
    elif key in ("lr", "load_balancing"):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(_float(value)):
            raise ValueError(f"{key} must be a finite number, got {_show(value)}")
        low, high = (0.0, 1.0) if key == "lr" else (0.0, 10.0)
        if not (low < value <= high if key == "lr" else low <= value <= high):
            raise ValueError(f"{key} must be in {'(0, 1]' if key == 'lr' else '[0, 10]'}, got {_show(value)}")
    elif key in ("shared_expert", "bias"):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {_show(value)}")
    elif key == "name":
        if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isprintable():
            raise ValueError(f"name must be a short printable text (1 to 64 characters), got {_show(value)}")
    elif key == "family":
        _spec(value)


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        return math.inf


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _rough_parameters(r: Recipe) -> int:
    """About the parameter count (a little above it), from the sizes alone: no model is built."""
    W, L, V = r.width, r.layers, 4096  # V: above the story world's vocabulary
    tables = (V + (r.max_len or r.context)) * W
    if r.d_state is not None:  # in/out projections, conv, x/dt projections, A
        inner = r.expand * W
        return L * (3 * inner * W + inner * (2 * r.d_state + W // 8 + 8)) + tables
    gated = r.activation in ("swiglu", "geglu")
    d_ff = r.d_ff or (_gated_width(W) if gated else 4 * W)
    ffn = (3 if gated else 2) * d_ff * W * ((r.experts or 1) + bool(r.shared_expert))
    per_layer = 4 * W * W + ffn + 8 * W
    if r.family == "encoder-decoder":  # encoder blocks, and decoder blocks with cross-attention
        per_layer = 12 * W * W + 2 * ffn + 16 * W
    return L * per_layer + tables


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class _Family:
    """What recipes know of one family: its keys, its blank recipe, its fixed choices and its config."""

    keys: tuple[str, ...]
    required: tuple[str, ...]
    blank: dict
    make: Callable[[Recipe, SPTokenizer], object]
    only: dict  # key -> the values this family supports
    grouped_query: bool = False  # whether kv_heads may be fewer than heads


_WRAP = {"causal": (("<s>",), ()), "masked": (("<cls>",), ("<sep>",)), "translation": ((), ("</s>",))}
_SCHEDULE = {"steps": 300, "batch": 16, "lr": 3e-3, "seed": 0, "context": 128}


def _gated_width(width: int) -> int:
    """≈ 8/3 · width rounded up to a multiple of 8: a gated MLP's three matrices cost what a 4·width MLP's two do."""
    return -(-8 * width // 3 // 8) * 8


def _ffn(r: Recipe) -> tuple[str, str, int]:
    """(mlp kind, activation, d_ff). GELU in a decoder is GPT-2's tanh form (``gelu_new``), in an encoder BERT's exact one."""
    tanh = r.family in ("decoder", "moe")
    kind, act = {"relu": ("mlp", "relu"), "gelu": ("mlp", "gelu_new" if tanh else "gelu"),
                 "swiglu": ("gated", "silu"), "geglu": ("gated", "gelu_new" if tanh else "gelu")}[r.activation]  # fmt: skip
    return kind, act, r.d_ff or (_gated_width(r.width) if kind == "gated" else 4 * r.width)


def _patterns(r: Recipe) -> dict:
    return {"layer_types": [r.attention] * r.layers, "sliding_window": r.window if r.attention != "full" else None}


def _build(cls: type, kw: dict, options: dict, implicit: dict, r: Recipe):
    """``cls(**kw, **options)``; an option ``cls`` has no field for is dropped when it equals the
    class's fixed behaviour (``implicit``) and is a ValueError otherwise."""
    names = {f.name for f in fields(cls) if f.init}
    for key, value in options.items():
        if key in names:
            kw[key] = value
        elif value != implicit.get(key, object()):
            raise ValueError(f"the installed {cls.__name__} has no {key!r} option, so this {r.family} recipe "
                             f"({key} = {value!r}) cannot be built")  # fmt: skip
    if r.name is not None:
        kw["name"] = r.name
    return cls(**kw)


def _decoder_config(r: Recipe, tok: SPTokenizer):
    kind, act, d_ff = _ffn(r)
    kw = dict(vocab_size=tok.vocab_size, d_model=r.width, n_layer=r.layers, n_head=r.heads, n_kv_head=r.kv_heads,
              d_ff=d_ff, max_seq_len=r.max_len or r.context, norm=r.norm, norm_eps=1e-5, mlp=kind, activation=act,
              qkv_bias=r.bias, o_bias=r.bias, mlp_bias=r.bias, tie_embeddings=True,
              positions="rotary" if r.positions == "rope" else r.positions,
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    options = {"norm_position": r.norm_position, **_patterns(r)}
    if r.experts is None:
        return _build(DecoderConfig, kw, options, {"norm_position": "pre"}, r)
    kw.update(n_experts=r.experts, top_k=r.top_k, d_shared_expert=d_ff if r.shared_expert else None)
    return _build(MoEConfig, kw, options, {"norm_position": "pre"}, r)


def _encoder_config(r: Recipe, tok: SPTokenizer):
    kind, act, d_ff = _ffn(r)
    kw = dict(vocab_size=tok.vocab_size, d_model=r.width, n_layer=r.layers, n_head=r.heads, d_ff=d_ff,
              max_seq_len=r.max_len or r.context, activation=act, pad_token_id=tok.pad_token_id)  # fmt: skip
    options = {"positions": "rotary" if r.positions == "rope" else r.positions, "norm": r.norm,
               "norm_position": r.norm_position, "mlp": kind, **_patterns(r)}  # fmt: skip
    bert = {"positions": "learned", "norm": "layernorm", "norm_position": "post", "mlp": "mlp",
            "layer_types": ["full"] * r.layers, "sliding_window": None}  # fmt: skip
    return _build(EncoderConfig, kw, options, bert, r)


def _encoder_decoder_config(r: Recipe, tok: SPTokenizer):
    kind, act, d_ff = _ffn(r)
    ffn = {"relu": "relu", "gelu": "gelu", "swiglu": "gated-silu", "geglu": "gated-gelu"}[r.activation]
    kw = dict(vocab_size=tok.vocab_size, d_model=r.width, d_kv=r.width // r.heads, d_ff=d_ff, n_layer=r.layers,
              n_decoder_layer=r.layers, n_head=r.heads, ffn=ffn, tie_embeddings=True, scale_decoder_outputs=True,
              max_seq_len=r.max_len or r.context, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
              decoder_start_token_id=tok.pad_token_id)  # fmt: skip
    return _build(EncoderDecoderConfig, kw, {}, {}, r)


def _ssm_config(r: Recipe, tok: SPTokenizer):
    kw = dict(vocab_size=tok.vocab_size, d_model=r.width, n_layer=r.layers, d_state=r.d_state, expand=r.expand,
              norm=r.norm, max_seq_len=r.max_len or r.context, pad_token_id=tok.pad_token_id,
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    return _build(MambaConfig, kw, {}, {}, r)


_ATTN_BLANK = {"layers": 4, "width": 128, "heads": 4, "kv_heads": 4, "positions": "rope", "norm": "rmsnorm",
               "norm_position": "pre", "activation": "swiglu", "attention": "full"}  # fmt: skip
_FAMILIES: dict[str, _Family] = {
    "decoder": _Family(
        keys=(*_COMMON, *_ATTENTION_KEYS, "bias"), required=("heads", "positions", "activation", "attention"),
        blank={**_ATTN_BLANK, "bias": False, "objective": "next-token", **_SCHEDULE},
        make=_decoder_config, only={}, grouped_query=True,
    ),
    "moe": _Family(
        keys=(*_COMMON, *_ATTENTION_KEYS, "bias", "experts", "top_k", "shared_expert", "load_balancing"),
        required=("heads", "positions", "activation", "attention", "experts", "top_k"),
        blank={**_ATTN_BLANK, "kv_heads": 2, "bias": False, "experts": 4, "top_k": 2, "shared_expert": False,
               "load_balancing": 0.02, "objective": "next-token", **_SCHEDULE},
        make=_decoder_config, only={"activation": ("swiglu", "geglu")}, grouped_query=True,
    ),
    "encoder": _Family(
        keys=(*_COMMON, *_ATTENTION_KEYS), required=("heads", "positions", "activation", "attention"),
        blank={**_ATTN_BLANK, "positions": "learned", "norm": "layernorm", "norm_position": "post",
               "activation": "gelu", "objective": "masked", **_SCHEDULE, "lr": 2e-3},
        make=_encoder_config, only={},
    ),
    "encoder-decoder": _Family(
        keys=(*_COMMON, *_ATTENTION_KEYS), required=("heads", "positions", "activation", "attention"),
        blank={**_ATTN_BLANK, "layers": 3, "positions": "relative", "activation": "geglu", "d_ff": 256,
               "objective": "translation", **_SCHEDULE, "batch": 48},
        make=_encoder_decoder_config,
        only={"positions": ("relative",), "norm": ("rmsnorm",), "norm_position": ("pre",), "attention": ("full",)},
    ),
    "ssm": _Family(
        keys=(*_COMMON, "d_state", "expand"), required=("d_state", "expand"),
        blank={"layers": 4, "width": 128, "d_state": 16, "expand": 2, "norm": "rmsnorm", "objective": "next-token",
               **_SCHEDULE, "lr": 5e-3},
        make=_ssm_config, only={},
    ),
}
KEYS = tuple(dict.fromkeys(k for f in _FAMILIES.values() for k in f.keys))


def _spec(family) -> _Family:
    if not isinstance(family, str) or family not in _FAMILIES:
        raise ValueError(f"family must be one of {', '.join(families())}, got {_show(family)}")
    return _FAMILIES[family]


# --------------------------------------------------------------------------- the public helpers


def families() -> tuple[str, ...]:
    """The families a recipe can name (registry names)."""
    return tuple(f for f in registry.names() if f in _FAMILIES)


def blank_recipe(family: str) -> Recipe:
    """A small recipe of ``family`` to start from (trains in a few minutes on a CPU)."""
    return Recipe.from_dict({"family": family})


def builtin_recipe(name: str) -> Recipe:
    """The recipe that reproduces a built-in (``assets/recipes/NAME.json``)."""
    if name not in BUILTIN_RECIPES:
        raise ValueError(f"no built-in recipe {name!r}; built-ins: {', '.join(BUILTIN_RECIPES)}")
    return Recipe.from_json(RECIPE_DIR / f"{name}.json")


@lru_cache(maxsize=8)
def _tokenizer(prefix: tuple[str, ...], suffix: tuple[str, ...]) -> SPTokenizer:
    return SPTokenizer.builtin(prefix=prefix, suffix=suffix)


def tokenizer_for(r: Recipe) -> SPTokenizer:
    """The built-in vocabulary, wrapped as the recipe's objective needs (shared: do not modify)."""
    return _tokenizer(*r.tokenizer_wrap)


def config_for(r: Recipe, tokenizer: SPTokenizer | None = None):
    """The family's typed config for recipe ``r`` (token ids and vocabulary from ``tokenizer``)."""
    return _FAMILIES[r.family].make(r, tokenizer or tokenizer_for(r))


class _SkipInit(TorchFunctionMode):
    """Leaves out weight initialisation (this thread only): on the meta device it computes nothing
    but costs most of a skeleton's build time (torch runs meta ``normal_`` in Python)."""

    INIT = {torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_, torch.nn.init.zeros_,
            torch.nn.init.ones_, torch.nn.init.constant_, torch.nn.init.trunc_normal_, torch.nn.init.xavier_uniform_,
            torch.nn.init.xavier_normal_, torch.nn.init.kaiming_normal_, torch.Tensor.normal_, torch.Tensor.uniform_,
            torch.Tensor.zero_, torch.Tensor.fill_}  # fmt: skip

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.INIT:
            return args[0] if args else kwargs.get("tensor", kwargs.get("self"))
        return func(*args, **kwargs)


def skeleton(r: Recipe) -> torch.nn.Module:
    """The recipe's model on the ``meta`` device: every shape, no memory, no initialisation."""
    cfg = config_for(r)
    with torch.device("meta"), _SkipInit():
        return registry.of(cfg).build(cfg)


def parameter_count(r: Recipe) -> dict:
    """``total`` (shared weights once), ``active`` (per token: k of the experts), ``embedding``
    (token and position tables) and ``by_component`` [(component, count)] (the family's
    ``parameter_rules``), counted on a meta-device skeleton (a few milliseconds)."""
    total, active, embedding, rows = _counts(r.replace(**_UNCOUNTED) if _uncounted(r) else r)
    return {"total": total, "active": active, "embedding": embedding, "by_component": list(rows)}


_UNCOUNTED = {"name": "x", "steps": 1, "batch": 1, "lr": 1e-3, "seed": 0, "warmup": 1}  # keys that shape no weight


def _uncounted(r: Recipe) -> bool:
    return any(getattr(r, k) != v for k, v in _UNCOUNTED.items())


@lru_cache(maxsize=256)
def _counts(r: Recipe) -> tuple[int, int, int, tuple]:
    from archplay.models.analysis import card

    model = skeleton(r)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    embedding = sum(p.numel() for name, p in model.named_parameters() if _is_embedding(name))
    return total, card.active_parameters(model), embedding, tuple(card.parameter_breakdown(model))


def _is_embedding(name: str) -> bool:
    return name.split(".")[0] in ("embed_tokens", "embed_positions", "embed_types", "shared")


def _keys_seen(r: Recipe, T: int) -> int:
    """How many keys a query's scores are computed against: all T under full attention; under a local
    pattern only its window (strided: and every window-th one before it), as a sparse kernel would."""
    if r.attention in (None, "full") or not r.window:
        return T
    local = min(T, r.window)
    return min(T, local + T // r.window) if r.attention == "strided" else local


def flops_per_token(r: Recipe, context: int | None = None) -> dict:
    """Approximate FLOPs per token at ``context`` (default the recipe's training context).

    forward ≈ 2 · active non-embedding parameters (a multiply-add per weight) + the attention
    scores and their weighted sum, 2 · 2 · context · width per attention layer (every self- and
    cross-attention of an encoder-decoder; a local pattern's window instead of the context), + a
    scan's 9 · d_inner · d_state per ssm layer;
    training ≈ 3 × forward (the backward pass costs about twice the forward)."""
    n = parameter_count(r)
    T = context or r.context
    weights = 2 * (n["active"] - n["embedding"])
    if r.family == "ssm":
        attention, scan = 0, 9 * r.layers * r.expand * r.width * r.d_state
    else:
        attention_layers = 3 * r.layers if r.family == "encoder-decoder" else r.layers
        attention, scan = 4 * attention_layers * _keys_seen(r, T) * r.width, 0
    forward = weights + attention + scan
    return {"forward": forward, "train": 3 * forward, "weights": weights, "attention": attention, "scan": scan,
            "context": T}  # fmt: skip


__all__ = ["ACTIVATIONS", "ATTENTION", "BUILTIN_RECIPES", "KEYS", "LIMITS", "MAX_PARAMETERS", "NORMS",
           "NORM_POSITIONS", "POSITIONS", "RECIPE_DIR", "Recipe", "blank_recipe", "builtin_recipe", "config_for",
           "families", "flops_per_token", "parameter_count", "skeleton", "tokenizer_for"]  # fmt: skip
