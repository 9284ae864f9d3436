"""``estimate``: what a configuration costs: parameters, FLOPs, KV cache and memory per GPU.

    r = estimate("mixtral-8x7b")                       # a preset (``presets.py``)
    r = estimate("gpt")                                # a built-in
    r = estimate("path/to/folder")                     # a checkpoint folder: only config.json is read
    r = estimate(builtin_recipe("gpt"))                # a Lab recipe (or its JSON file, or a config)
    r = estimate("llama-2-7b", train=True, dp=8, zero=3, checkpointing=True)
    r["params"], r["active_params"], r["flops_per_token"], r["kv_cache_bytes_per_token"]
    r["memory"]           # bytes per GPU: weights, gradients, optimizer, activations, kv_cache, total
    r["fits"]             # [{"gpu", "memory_bytes", "fits", "share"}] for common GPUs
    r.train_time_s(tokens=2e12, mfu=0.4, gpu="H100 80GB")

**Parameters are counted, never computed by formula.** The configuration is built with archplay's
own model classes on torch's ``meta`` device (shapes, no memory, no initialisation: a fraction of
a second even for Llama 2 70B or Mixtral, cached per config; the first build in a process also
pays torch's lazy imports, about 3 s), and its parameters are summed: ``params`` counts a shared
matrix once, ``active_params`` is what one token runs (a mixture of experts: top_k of its experts),
``params_by_component`` groups ``card.parameter_breakdown``'s rows.

**FLOPs** (forward, per token at ``context``):

* matrix products: 2 FLOPs per weight of every linear map (and convolution) a token passes
  through, read off the built model (a routed expert counts top_k / n_experts; the LM head
  counts even when it shares the embedding matrix: it is still multiplied);
* attention: 2 · 2 · n_head · head_dim · S per attention sub-layer (q·kᵀ and the weighted sum
  of v; 2 · n_head · (head_dim + v_head_dim) · S where the values are narrower or wider) for S keys: the whole context, as Hoffmann et al. (2022, app. F) count it and
  ``FlopCounterMode`` measures it (a causal mask's unused half included), or a local pattern's
  window (what a sliding-window kernel computes; archplay's own eager kernel computes the whole
  matrix and masks it);
* Mamba's selective scan: 9 · d_inner · d_state per token (Gu & Dao 2023), element-wise work.

An encoder-decoder reads a source of ``context`` tokens and writes a target of ``context`` tokens;
its "per token" is per token of either (the whole pass over 2 · context tokens). Training costs
``training_flops_per_token`` = 3 × forward (backward ≈ 2 × forward); activation checkpointing
runs the forward once more (``recompute_flops_per_token``, not counted in MFU).

**KV cache**: ``kv_cache_bytes_per_token`` = 2 (k and v) · n_kv_head · head_dim · bytes per cached
attention layer: grouped- and multi-query attention store their fewer key/value heads only; DeepSeek's
latent attention stores kv_lora_rank + qk_rope_head_dim numbers (its compressed latent and shared rope key). At a
context, ``kv_cache_bytes`` keeps min(context, window) positions per sliding-window layer (a
rolling cache, as Mistral's reference implementation); archplay's own ``generate`` keeps every
position and applies the window as a mask, which ``kv_cache_bytes_unwindowed`` predicts. Mamba
carries a fixed state instead, ``state_bytes`` per sequence (its conv window and SSM state, the
SSM state in float32 as archplay computes it), whatever the context. An encoder-only model does
not generate (no cache); an encoder-decoder adds ``cross_kv_bytes_per_source_token``: the keys
and values of the encoder output that every decoder layer keeps for cross-attention.

**Memory per GPU** (``memory``): weights at ``dtype`` (fp32 4 bytes, bf16/fp16 2, fp8/int8 1, int4
½ per parameter). Training adds gradients (in the weights' dtype), the optimizer's state (AdamW
and Adam: two moments, fp32 under mixed precision; SGD with momentum: one; 8-bit Adam: 2 bytes
per parameter) and, under mixed precision, an fp32 master copy of the weights (counted in
``optimizer``, as ZeRO partitions it with the optimizer's state: bf16 AdamW is then 2 + 2 + 12 =
16 bytes per parameter; fp32 weights under mixed precision are ``torch.autocast``: fp32 weights,
gradients and moments, 16-bit activations). Activations follow Korthikanti et al. (2022, §4): per
layer and token the tensors saved for the backward pass, which for GPT's layer with dropout and no
fused attention is their s·b·h·(34 + 5·a·s/h) bytes (16-bit; ``dropout=True,
flash_attention=False``). Here every
term follows the layer's real shapes (grouped-query k/v, a gated MLP's four d_ff-wide tensors,
routed experts, cross-attention), there is no dropout unless asked (none of archplay's models has
any), and with ``flash_attention`` (the default; PyTorch's fused SDPA on CPU and GPU) the softmax's
(s × s) probabilities are not kept, only their log-sum-exp: Korthikanti's "selective
recomputation". The output layer adds the logits and their float32 log-probabilities. Under
tensor parallelism the attention and MLP tensors divide by ``tp``, the norms' inputs too with
sequence parallelism (``sequence_parallel``, the default). Full activation checkpointing keeps
each layer's input (s·b·h) and, during backward, one layer's recomputed tensors or the output
layer's, whichever is larger (they are not alive together). Pipeline parallelism
divides weights (and the cache) by ``pp`` but not activations: under 1F1B the first stage holds
``pp`` micro-batches of its L/pp layers. ZeRO stage 1 divides the optimizer state by ``dp``, stage
2 the gradients too, stage 3 (FSDP's full sharding) the weights too. ``batch`` is the micro-batch
of one data-parallel rank. Inference keeps the weights, the KV cache of ``batch`` sequences of
``context`` tokens and the working activations of one layer during the prefill.

``tests/test_estimate18.py`` checks all of this against measurement: parameter counts against
built models and published totals, the KV cache against what ``generate`` holds, FLOPs against
``FlopCounterMode`` (±5%) and training memory against the peak of a real training step (±15%);
``python -m bench.estimate`` prints the comparison table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from archplay.models import registry
from archplay.models.analysis import card, presets
from archplay.models.architectures.layers import count_parameters
from archplay.models.architectures.moe import SparseMoE

# --------------------------------------------------------------------------- tables

DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}  # bytes per value
FLOAT_DTYPES = ("fp32", "bf16", "fp16")  # what training can keep weights in
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
                  "float8": "fp8"}  # fmt: skip
# Optimizer state per parameter: how many values (at the state dtype), or fixed bytes (8-bit Adam).
OPTIMIZERS = {"adamw": 2, "adam": 2, "sgd": 1, "adamw8bit": "2 bytes", "adam8bit": "2 bytes"}
_OPTIMIZER_ALIASES = {"adamw-8bit": "adamw8bit", "adam-8bit": "adam8bit", "8bit-adam": "adam8bit",
                      "sgd-momentum": "sgd"}  # fmt: skip
ZERO_STAGES = (0, 1, 2, 3)
CUDA_RESERVE = 1 << 30  # what the CUDA context and the allocator's slack take before any tensor


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int  # the nominal memory ("80 GB" cards report about 80 GiB)
    peak_flops: float  # dense bf16 tensor-core FLOP/s (no sparsity)


GPUS = (
    GPU("H100 80GB", 80 << 30, 989e12),  # SXM
    GPU("H200 141GB", 141 << 30, 989e12),
    GPU("A100 80GB", 80 << 30, 312e12),
    GPU("A100 40GB", 40 << 30, 312e12),
    GPU("L4 24GB", 24 << 30, 121e12),
    GPU("RTX 4090 24GB", 24 << 30, 165e12),  # fp32 accumulation
    GPU("laptop 16GB", 16 << 30, 80e12),  # e.g. an RTX 4090 Laptop GPU; its peak depends on the power limit
)

# Chinchilla (Hoffmann et al. 2022, approach 3): L(N, D) = E + A / N^α + B / D^β.
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TOKENS_PER_PARAMETER = 20  # compute-optimal: about 20 training tokens per parameter


def chinchilla_loss(params: float, tokens: float) -> float:
    """The loss (nats per token, on their data) the Chinchilla fit predicts for ``params`` trained on ``tokens``."""
    c = CHINCHILLA
    return c["E"] + c["A"] / float(params) ** c["alpha"] + c["B"] / float(tokens) ** c["beta"]


def find_gpu(name: str) -> GPU:
    """A GPU of ``GPUS`` by name, any case, or by a prefix naming only one (``"h100"``)."""
    key = str(name).strip().lower()
    exact = [g for g in GPUS if g.name.lower() == key]
    found = exact or [g for g in GPUS if g.name.lower().startswith(key)]
    if len(found) != 1:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(g.name for g in GPUS)}")
    return found[0]


# --------------------------------------------------------------------------- the shape of a family


@dataclass(frozen=True)
class AttentionSublayer:
    """One attention sub-layer: what its cache, FLOPs and activations depend on."""

    heads: int
    kv_heads: int
    head_dim: int
    pattern: str = "full"  # full | sliding | strided | block (layers.attention_mask)
    window: int | None = None
    cached: bool = True  # keeps keys and values while generating
    cross: bool = False  # keys and values from the encoder output (the source)
    v_head_dim: int | None = None  # the value heads' width when not head_dim (DeepSeek's latent attention)
    cache_width: int | None = None  # numbers cached per token when not 2·kv_heads·head_dim (MLA: the latent + rope key)


@dataclass(frozen=True)
class FeedForward:
    d_ff: int
    gated: bool
    experts: int = 0  # routed experts (0: a dense MLP)
    top_k: int = 0
    shared: int = 0  # an always-on shared expert's width (Qwen2-MoE)


@dataclass(frozen=True)
class Mixer:
    """Mamba's selective SSM (Mamba-2: dt_rank is its Δ's width, the number of heads)."""

    d_inner: int
    d_state: int
    d_conv: int
    dt_rank: int
    conv_channels: int | None = None  # the conv's channels when not d_inner (Mamba-2: x, B and C together)


@dataclass(frozen=True)
class Layer:
    attention: tuple[AttentionSublayer, ...] = ()
    ffn: FeedForward | None = None
    mixer: Mixer | None = None


@dataclass(frozen=True)
class Shape:
    """What ``estimate`` needs of a configuration beyond its parameters, in words common to every family."""

    d_model: int
    vocab: int
    layers: tuple[Layer, ...]
    streams: int = 1  # sequences of ``context`` tokens per input: 2 for an encoder-decoder (source, target)
    generates: bool = True
    max_len: int | None = None  # a learned or sinusoidal position table's length (a hard limit)


def _decoder_shape(cfg) -> Shape:
    """decoder and moe: causal self-attention (per-layer patterns), a dense or routed feed-forward."""
    layers = []
    for i, pattern in enumerate(cfg.layer_types):
        attn = AttentionSublayer(cfg.n_head, cfg.n_kv_head, cfg.head_dim, pattern,
                                 cfg.sliding_window if pattern != "full" else None)  # fmt: skip
        if getattr(cfg, "kv_lora_rank", None) is not None:  # latent attention: the cache holds the compressed latent
            attn = replace(attn, v_head_dim=cfg.v_head_dim, cache_width=cfg.kv_lora_rank + cfg.qk_rope_head_dim)
        routed = getattr(cfg, "moe_layers", None) and cfg.moe_layers[i]
        if routed:
            ffn = FeedForward(cfg.d_expert, True, cfg.n_experts, cfg.top_k, cfg.d_shared_expert or 0)
        else:
            ffn = FeedForward(cfg.d_ff, cfg.mlp == "gated")
        layers.append(Layer((attn,), ffn))
    table = cfg.max_seq_len if cfg.positions in ("learned", "sinusoidal") else None
    return Shape(cfg.d_model, cfg.vocab_size, tuple(layers), max_len=table)


def _encoder_shape(cfg) -> Shape:
    """encoder: bidirectional self-attention (per-layer patterns), nothing cached: it does not generate."""
    ffn = FeedForward(cfg.d_ff, cfg.mlp == "gated")
    layers = []
    for pattern in cfg.layer_types:
        window = cfg.sliding_window if pattern != "full" else None
        attn = AttentionSublayer(cfg.n_head, cfg.n_head, cfg.head_dim, pattern, window, cached=False)
        layers.append(Layer((attn,), ffn))
    table = cfg.max_seq_len if cfg.positions in ("learned", "sinusoidal") else None
    return Shape(cfg.d_model, cfg.vocab_size, tuple(layers), generates=False, max_len=table)


def _encoder_decoder_shape(cfg) -> Shape:
    """encoder-decoder: encoder blocks over the source; decoder blocks over the target, each with a cached
    causal self-attention and a cross-attention whose keys and values (of the source) are kept too."""
    ffn = FeedForward(cfg.d_ff, cfg.gated)
    encoder = Layer((AttentionSublayer(cfg.n_head, cfg.n_head, cfg.d_kv, cached=False),), ffn)
    decoder = Layer((AttentionSublayer(cfg.n_head, cfg.n_head, cfg.d_kv),
                     AttentionSublayer(cfg.n_head, cfg.n_head, cfg.d_kv, cross=True)), ffn)  # fmt: skip
    return Shape(cfg.d_model, cfg.vocab_size, (encoder,) * cfg.n_layer + (decoder,) * cfg.n_decoder_layer, streams=2)


def _ssm_shape(cfg) -> Shape:
    """ssm: a selective SSM mixer per layer, no attention and no feed-forward."""
    v2 = getattr(cfg, "version", 1) == 2
    mixer = Mixer(cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.n_heads if v2 else cfg.dt_rank,
                  cfg.conv_dim if v2 else None)  # fmt: skip
    return Shape(cfg.d_model, cfg.vocab_size, (Layer(mixer=mixer),) * cfg.n_layer)


def _hybrid_shape(cfg) -> Shape:
    """hybrid (Jamba): the decoder's layers, with a Mamba mixer in place of the attention where ``attn_layers``
    is False (a fixed-size state, no keys and values); every layer keeps its feed-forward, dense or routed."""
    decoder = _decoder_shape(cfg)
    mixer = Mixer(cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank)
    layers = tuple(layer if attends else Layer(ffn=layer.ffn, mixer=mixer)
                   for layer, attends in zip(decoder.layers, cfg.attn_layers))  # fmt: skip
    return replace(decoder, layers=layers)


# One entry per registry family, as recipes have theirs (``training.recipe._FAMILIES``).
SHAPES = {"decoder": _decoder_shape, "moe": _decoder_shape, "encoder": _encoder_shape,
          "encoder-decoder": _encoder_decoder_shape, "ssm": _ssm_shape, "hybrid": _hybrid_shape}  # fmt: skip


def shape(cfg) -> Shape:
    family = registry.of(cfg).name
    if family not in SHAPES:
        raise ValueError(f"estimate does not know the {family!r} family yet; it knows {', '.join(SHAPES)}")
    return SHAPES[family](cfg)


# --------------------------------------------------------------------------- what the model is given as


def _folder_config(folder: Path):
    """A checkpoint folder's config, from its config.json alone (no weights, no tokenizer), through the
    same conversion ``load`` uses: the registry's converter for its ``model_type``, or archplay's own
    format. A converter's ``finish`` (which reads the weights) is not run: a BERT folder is taken to have
    its masked-LM head, a T5 folder keeps the tying its config states."""
    from archplay.models.checkpoints.convert import LoadError
    from archplay.models.checkpoints.loading import BUILTIN_FORMAT, _read_config

    hf = _read_config(folder)
    if hf.get("format") == BUILTIN_FORMAT:
        try:
            return registry.get(hf["family"]).config.from_dict(hf["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise LoadError(f"{folder}/config.json is a damaged archplay config: {e}") from None
    return _hf_config(hf, folder.name, where=f"{folder}/config.json")


def _hf_config(hf: dict, name: str, where: str = "the config"):
    """A Hugging Face config (a dict) -> ours, through its family's converter (``load``'s own step)."""
    from archplay.models.checkpoints.convert import LoadError

    mtype = hf.get("model_type")
    found = registry.checkpoint(mtype) if isinstance(mtype, str) else None
    if found is None:
        raise LoadError(f"{where}: model_type {mtype!r} is not supported; "
                        f"supported: {', '.join(registry.model_types())}")
    _, conv = found
    try:
        return conv.make_config(hf, name)
    except KeyError as e:
        raise LoadError(f"{where} lacks {e.args[0]!r}, which {mtype} needs") from None
    except LoadError:
        raise
    except (TypeError, ValueError) as e:
        raise LoadError(f"{where} is not a valid {mtype} config: {e}") from None


def _builtin_config(name: str):
    """A built-in's config: its checkpoint's config.json, or (before it is trained) the recipe that makes it."""
    from archplay.models.checkpoints.loading import BUILTIN_DIR
    from archplay.models.training.recipe import builtin_recipe, config_for

    folder = BUILTIN_DIR / name
    if (folder / "config.json").is_file():
        return _folder_config(folder)
    return config_for(builtin_recipe(name))


def resolve(model) -> tuple[object, str, str]:
    """(config, display name, source) for anything ``estimate`` accepts; ValueError otherwise."""
    from archplay.models.checkpoints.loading import BUILTIN_NAMES
    from archplay.models.training.recipe import Recipe, config_for

    if isinstance(model, Recipe):
        return config_for(model), model.title, "recipe"
    if isinstance(model, nn.Module) and hasattr(model, "config"):
        return model.config, str(getattr(model.config, "name", type(model).__name__)), "model"
    if hasattr(model, "family") and hasattr(model, "to_dict"):  # a typed config
        return model, str(getattr(model, "name", type(model).__name__)), "config"
    if isinstance(model, dict) and "model_type" in model:  # a Hugging Face config.json, as a dict
        name = str(model.get("_name_or_path") or model["model_type"])
        return _hf_config(model, name), name, "config"
    if isinstance(model, dict):
        recipe = Recipe.from_dict(model)
        return config_for(recipe), recipe.title, "recipe"
    if isinstance(model, str) and model in BUILTIN_NAMES:
        return _builtin_config(model), model, "built-in"
    if isinstance(model, str) and (p := presets.find(model)) is not None:
        return p.make(), p.title, "preset"
    if isinstance(model, (str, Path)):
        path = Path(model).expanduser()
        if path.is_dir():
            return _folder_config(path), path.name, "folder"
        if path.is_file() and path.name == "config.json":  # a checkpoint's config, named directly
            return _folder_config(path.parent), path.parent.name, "folder"
        if path.is_file() and path.suffix == ".json":
            recipe = Recipe.from_json(path)
            return config_for(recipe), recipe.title, "recipe"
        raise ValueError(
            f"unknown model {str(model)!r}: give a preset ({', '.join(presets.names())}), a built-in "
            f"({', '.join(BUILTIN_NAMES)}), a checkpoint folder with a config.json, or a recipe (.json)"
        )
    raise ValueError(f"estimate takes a preset or built-in name, a folder, a recipe or a config, "
                     f"not a {type(model).__name__}")  # fmt: skip


# --------------------------------------------------------------------------- counting on the meta device


def skeleton(cfg) -> nn.Module:
    """``cfg``'s model built on the ``meta`` device: every shape, no memory, no initialisation."""
    from archplay.models.training.recipe import _SkipInit  # the recipes' skeletons skip it the same way

    with torch.device("meta"), _SkipInit():
        return registry.of(cfg).build(cfg)


def _matmul_flops(model: nn.Module) -> float:
    """Forward FLOPs of the matrix products per position, read off the built model: 2 per weight of
    every ``nn.Linear`` and convolution; a routed expert's share top_k / n_experts; a router's own
    product (a bare parameter, not an ``nn.Linear``) too."""
    share: dict[int, float] = {}
    routers = 0
    for m in model.modules():
        if isinstance(m, SparseMoE):
            routers += 2 * m.router.weight.numel()
            for sub in m.experts.modules():
                share[id(sub)] = m.router.top_k / len(m.experts)
    total = 0.0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            flops = 2 * m.in_features * m.out_features
        elif isinstance(m, nn.Conv1d):  # per output position: (in / groups) · kernel multiply-adds per output channel
            flops = 2 * (m.in_channels // m.groups) * m.kernel_size[0] * m.out_channels
        else:
            continue
        total += flops * share.get(id(m), 1.0)
    return total + routers


@lru_cache(maxsize=128)
def _counts(family: str, config_json: str) -> tuple:
    cfg = registry.get(family).config.from_dict(json.loads(config_json))
    model = skeleton(cfg)
    return (count_parameters(model), card.active_parameters(model), tuple(card.parameter_breakdown(model)),
            _matmul_flops(model))  # fmt: skip


def counts(cfg) -> dict:
    """{"params", "active_params", "rows", "matmul_flops"} of ``cfg``'s model, built on the meta device (cached)."""
    from archplay.models.checkpoints.loading import check_limits

    check_limits(cfg)  # the same bounds a loaded checkpoint's config must keep: a skeleton's build time grows with them
    key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    params, active, rows, matmul = _counts(registry.of(cfg).name, key)
    return {"params": params, "active_params": active, "rows": list(rows), "matmul_flops": matmul}


COMPONENTS = ("embeddings", "attention", "mixer", "feed_forward", "experts", "norms", "head", "other")


def component(label: str) -> str:
    """The coarse component of one of ``card.parameter_breakdown``'s rows."""
    low = label.lower()
    if low.startswith("mixer"):
        return "mixer"
    if "embedding" in low:
        return "embeddings"
    if "attention" in low or "position bias" in low:  # T5's relative bias is a term of the attention scores
        return "attention"
    if "expert" in low or "router" in low:
        return "experts"
    if "feed-forward" in low:
        return "feed_forward"
    if "norm" in low:
        return "norms"
    if "head" in low:
        return "head"
    return "other"


# --------------------------------------------------------------------------- per-token costs


def keys_seen(attn: AttentionSublayer, context: int) -> int:
    """How many keys one query is scored against (and how many positions a cache must keep): the whole
    context, or a local pattern's window (strided: the window and every window-th position before it)."""
    if attn.pattern == "full" or attn.window is None:
        return context
    if attn.pattern == "strided":
        return min(context, attn.window + context // attn.window)
    return min(context, attn.window)


def _attention_flops(s: Shape, context: int) -> float:
    """q·kᵀ and probabilities·v: 2 · 2 · heads · head_dim per (query, key) pair, summed per position."""
    return sum(2 * a.heads * (a.head_dim + (a.v_head_dim or a.head_dim)) * keys_seen(a, context)
               for layer in s.layers for a in layer.attention)  # fmt: skip


def _scan_flops(s: Shape) -> float:
    return sum(9 * layer.mixer.d_inner * layer.mixer.d_state for layer in s.layers if layer.mixer)


def _kv_bytes(s: Shape, kv_bytes: float, *, tp: int = 1, context: int | None = None, cross: bool = False) -> float:
    """Keys and values of one sequence: per token (``context`` None) or kept at ``context`` (windows applied);
    the decoder's own (``cross`` False) or its cross-attention memory of the source (``cross`` True)."""
    total = 0.0
    for layer in s.layers:
        for a in layer.attention:
            if not a.cached or a.cross != cross:
                continue
            positions = 1 if context is None else (context if cross else keys_seen(a, context))
            if a.cache_width is not None:  # MLA: one latent per token, which every tensor-parallel rank keeps whole
                total += a.cache_width * kv_bytes * positions
            else:
                total += 2 * math.ceil(a.kv_heads / tp) * a.head_dim * kv_bytes * positions
    return total


def _state_bytes(s: Shape, act_bytes: float) -> float:
    """Mamba's recurrent state of one sequence: per layer the conv's last d_conv inputs (at the activation
    dtype) and the SSM state h (d_inner × d_state, float32: archplay's scan computes it from A in float32)."""
    return sum((m.conv_channels or m.d_inner) * m.d_conv * act_bytes + m.d_inner * m.d_state * 4
               for m in (layer.mixer for layer in s.layers) if m)  # fmt: skip


# --------------------------------------------------------------------------- activations


def _sublayer_activations(a: AttentionSublayer, h: int, p: float, S: int, *, flash: bool, dropout: bool) -> tuple:
    """(bytes split by tensor parallelism, bytes only sequence parallelism splits) one position keeps
    for the backward pass in an attention sub-layer: Korthikanti et al.'s terms, at the real shapes."""
    # The norm's input and its output (the projections' input); the residual's dropout mask (1 byte).
    seq = 2 * h * p + (h if dropout else 0)
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    split = (q + 2 * kv + q) * p  # q, k, v; the heads' output (the output projection's input)
    if flash:
        split += a.heads * 4  # the fused kernel keeps the softmax's log-sum-exp (float32), not its probabilities
    else:
        split += a.heads * S * (p + ((1 + p) if dropout else 0))  # the probabilities (+ the dropout's mask and output)
    return split, seq


def _ffn_activations(f: FeedForward, h: int, p: float, *, dropout: bool) -> tuple:
    seq = 2 * h * p + (h if dropout else 0)
    # Gated: the gate's and up's outputs, act(gate), their product; otherwise the activation's input and output.
    hidden = (4 if f.gated else 2) * p
    if not f.experts:
        return f.d_ff * hidden, seq
    # Each of the top_k routed copies of a token: its gathered input, the expert's hidden tensors, its output
    # and the output weighted by the router; the router's logits and float32 probabilities over all experts.
    split = f.top_k * (3 * h * p + f.d_ff * hidden) + f.shared * hidden
    return split, seq + f.experts * (p + 4) + (h * p if f.shared else 0)


def _mixer_activations(m: Mixer, h: int, p: float) -> tuple:
    """What the fused selective-scan kernel (mamba_ssm) keeps: in_proj's output (x and z), the conv's
    output, x_proj's (Δ, B, C), Δ, the scan's output and the gated product. archplay's own chunked scan,
    plain PyTorch, also keeps its per-step states: O(d_inner · d_state) more per token."""
    return (6 * m.d_inner + m.dt_rank + 2 * m.d_state) * p, 2 * h * p


def _layer_activations(layer: Layer, h: int, p: float, S: int, *, tp: int, sp: bool, flash: bool,
                       dropout: bool) -> float:  # fmt: skip
    """Bytes one position of one layer keeps for backward, per GPU."""
    parts = [_sublayer_activations(a, h, p, S, flash=flash, dropout=dropout) for a in layer.attention]
    if layer.ffn is not None:
        parts.append(_ffn_activations(layer.ffn, h, p, dropout=dropout))
    if layer.mixer is not None:
        parts.append(_mixer_activations(layer.mixer, h, p))
    return sum(split / tp + seq / (tp if sp else 1) for split, seq in parts)


def _output_activations(s: Shape, p: float, tp: int, sp: bool) -> float:
    """Per target position: the final norm's input and output, the logits, a float32 copy for the loss
    (unless they are float32 already) and the float32 log-probabilities the cross-entropy keeps."""
    return 2 * s.d_model * p / (tp if sp else 1) + s.vocab * (p + (4 if p < 4 else 0) + 4) / tp


def _inference_activations(s: Shape, p: float, S: int, *, flash: bool) -> float:
    """Per position, the largest working set of one sub-layer during a prefill (no gradients): the
    residual stream, its normed copy and the sub-layer's intermediate tensors; or the logits."""
    h, most = s.d_model, s.d_model + s.vocab
    for layer in s.layers:
        for a in layer.attention:
            most = max(most, 2 * h + (2 * a.heads + 2 * a.kv_heads) * a.head_dim + (0 if flash else a.heads * S))
        if (f := layer.ffn) is not None:
            hidden = (3 if f.gated else 2) * f.d_ff
            most = max(most, 2 * h + (f.top_k * (2 * h + hidden) + 3 * f.shared if f.experts else hidden))
        if (m := layer.mixer) is not None:
            most = max(most, 2 * h + 6 * m.d_inner + m.dt_rank + 2 * m.d_state)
    return most * p


# --------------------------------------------------------------------------- the estimate


class Estimate(dict):
    """``estimate``'s result: a plain dict (JSON-ready), plus ``train_time_s``."""

    def train_time_s(self, tokens: float, mfu: float = 0.4, gpu: str = "H100 80GB", gpus: int | None = None) -> float:
        """Seconds to train on ``tokens`` at model FLOPs utilisation ``mfu`` on ``gpus`` GPUs of type ``gpu``
        (default: all of this estimate's, dp · tp · pp):
        tokens · training FLOPs per token / (gpus · peak FLOP/s · mfu)."""
        if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
            raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
        if not (isinstance(tokens, (int, float)) and tokens > 0):
            raise ValueError(f"tokens must be a positive number, got {tokens!r}")
        settings = self["settings"]
        n = gpus if gpus is not None else settings["dp"] * settings["tp"] * settings["pp"]
        _positive("gpus", n)
        return float(tokens) * self["training_flops_per_token"] / (n * find_gpu(gpu).peak_flops * mfu)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


def _dtype(name: str, what: str) -> str:
    key = _DTYPE_ALIASES.get(str(name).lower(), str(name).lower()) if isinstance(name, str) else None
    if key not in DTYPES:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(DTYPES)}")
    return key


def estimate(
    model,
    *,
    dtype: str = "bf16",
    batch: int = 1,
    context: int = 2048,
    train: bool = False,
    optimizer: str = "adamw",
    mixed_precision: bool = True,
    zero: int = 0,
    dp: int = 1,
    tp: int = 1,
    pp: int = 1,
    checkpointing: bool = False,
    sequence_parallel: bool = True,
    flash_attention: bool = True,
    dropout: bool = False,
    kv_dtype: str | None = None,
) -> Estimate:
    """Parameters, FLOPs, KV cache and memory per GPU of ``model`` (see the module's docstring).

    ``model``: a preset name (``presets.names()``), a built-in name, a checkpoint folder (only its
    config.json is read), a recipe (``Recipe``, its dict or its .json file), a config or a built model.
    ``dtype``: the weights (fp32, bf16, fp16, fp8, int8, int4; training: fp32, bf16 or fp16).
    ``batch`` sequences of ``context`` tokens (training: the micro-batch of one data-parallel rank).
    ``zero``: ZeRO stage 0-3 over ``dp`` ranks (3 = FSDP); ``tp``, ``pp``: tensor and pipeline parallel.
    ``kv_dtype``: the KV cache's (default: the activations', bf16 for quantized weights).
    """
    cfg, name, source = resolve(model)
    dtype = _dtype(dtype, "dtype")
    for key, value in (("batch", batch), ("context", context), ("dp", dp), ("tp", tp), ("pp", pp)):
        _positive(key, value)
    if zero not in ZERO_STAGES or isinstance(zero, bool):
        raise ValueError(f"zero must be a ZeRO stage 0, 1, 2 or 3 (3 = FSDP's full sharding), got {zero!r}")
    opt_key = _OPTIMIZER_ALIASES.get(str(optimizer).lower(), str(optimizer).lower())
    if opt_key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    for key, value in (("train", train), ("mixed_precision", mixed_precision), ("checkpointing", checkpointing),
                       ("sequence_parallel", sequence_parallel), ("flash_attention", flash_attention),
                       ("dropout", dropout)):  # fmt: skip
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False, got {value!r}")
    if train and dtype not in FLOAT_DTYPES:
        raise ValueError(f"training keeps weights in {', '.join(FLOAT_DTYPES)}, not {dtype} "
                         "(quantized weights are for inference)")  # fmt: skip

    s = shape(cfg)
    n = counts(cfg)
    heads = {a.heads for layer in s.layers for a in layer.attention}
    if bad := sorted(h for h in heads if h % tp):
        raise ValueError(f"tp ({tp}) must divide the number of attention heads ({bad[0]}): each GPU takes whole heads")
    if pp > len(s.layers):
        raise ValueError(f"pp ({pp}) cannot exceed the number of layers ({len(s.layers)}): each stage needs one")

    # Bytes per value of what is stored: weights, activations (compute), gradients, the cache.
    w = DTYPES[dtype]
    act = (2 if mixed_precision else DTYPES[dtype]) if train else (DTYPES[dtype] if dtype in FLOAT_DTYPES else 2)
    kvb = DTYPES[_dtype(kv_dtype, "kv_dtype")] if kv_dtype is not None else act
    notes: list[str] = []

    # ------------------------------------------------------------- FLOPs
    attention = _attention_flops(s, context)
    scan = _scan_flops(s)
    forward = (n["matmul_flops"] + attention + scan) / s.streams
    flops = {"matmul": n["matmul_flops"] / s.streams, "attention": attention / s.streams, "scan": scan / s.streams}

    # ------------------------------------------------------------- KV cache
    per_token = _kv_bytes(s, kvb)
    kv_at = batch * (_kv_bytes(s, kvb, context=context) + _kv_bytes(s, kvb, context=context, cross=True))
    kv_full = batch * context * (per_token + _kv_bytes(s, kvb, cross=True))
    state = _state_bytes(s, kvb) if any(layer.mixer for layer in s.layers) else None
    if state is not None:  # Mamba's fixed state, beside the keys and values of any attention layers (a hybrid's)
        kv_at, kv_full = kv_at + batch * state, kv_full + batch * state
    if kv_full != kv_at:
        notes.append(f"local attention window: a rolling cache keeps {kv_at:,.0f} bytes at this context; "
                     f"archplay's generate keeps every position ({kv_full:,.0f} bytes) and masks the rest")  # fmt: skip
    if not s.generates:
        notes.append("an encoder does not generate: no KV cache")
    if s.max_len is not None and context > s.max_len:
        notes.append(f"context {context:,} is longer than this model's position table ({s.max_len:,} positions)")

    # ------------------------------------------------------------- memory per GPU
    P = n["params"]
    weights = P * w / (tp * pp)
    gradients = optimizer_bytes = activations = 0.0
    kv_cache = 0.0
    per_layer: list[float] = []
    if train:
        states = OPTIMIZERS[opt_key]
        state_bytes = 4 if mixed_precision else w
        per_param = 2.0 if states == "2 bytes" else states * state_bytes
        master = 4 if mixed_precision and dtype != "fp32" else 0  # fp32 master weights beside 16-bit ones
        gradients = P * w / (tp * pp)  # a gradient has its parameter's dtype
        optimizer_bytes = P * (per_param + master) / (tp * pp)
        if zero >= 1:
            optimizer_bytes /= dp
        if zero >= 2:
            gradients /= dp
        if zero >= 3:
            weights /= dp
        positions = batch * context  # per stream: every layer sees one stream's positions
        per_layer = [positions * _layer_activations(layer, s.d_model, act, context, tp=tp, sp=sequence_parallel,
                                                    flash=flash_attention, dropout=dropout)
                     for layer in s.layers]  # fmt: skip
        output = positions * _output_activations(s, act, tp, sequence_parallel)
        if checkpointing:
            # Each layer's input is kept; backward first runs the output layer's, then recomputes one
            # layer at a time: the larger of the two working sets comes on top of the inputs.
            inputs = positions * s.d_model * act / (tp if sequence_parallel else 1)
            activations = len(s.layers) * inputs + max(*per_layer, output)
        else:
            activations = sum(per_layer) + output
    else:
        if zero >= 3:
            weights /= dp
        # Each GPU keeps its own key/value heads (a head too few to share among tp GPUs is copied), its stages' layers.
        kv_gpu = _kv_bytes(s, kvb, tp=tp, context=context) + _kv_bytes(s, kvb, tp=tp, context=context, cross=True)
        kv_cache = batch * (kv_gpu + (state or 0)) / pp
        activations = batch * context * _inference_activations(s, act, context, flash=flash_attention) / tp
    if dtype in ("fp8", "int8", "int4"):
        notes.append(f"{dtype} weights: every parameter at {w:g} bytes (norms and embeddings are often kept "
                     "in 16 bits, a little more); activations and the cache in bf16")  # fmt: skip
    memory = {"weights": weights, "gradients": gradients, "optimizer": optimizer_bytes, "activations": activations,
              "kv_cache": kv_cache}  # fmt: skip
    memory = {k: int(math.ceil(v)) for k, v in memory.items()}
    memory["total"] = sum(memory.values())

    # ------------------------------------------------------------- the rest
    by_component = dict.fromkeys(COMPONENTS, 0)
    for label, count in n["rows"]:
        by_component[component(label)] += count
    fits = [{"gpu": g.name, "memory_bytes": g.memory_bytes, "fits": memory["total"] <= g.memory_bytes - CUDA_RESERVE,
             "share": memory["total"] / g.memory_bytes} for g in GPUS]  # fmt: skip
    tokens = TOKENS_PER_PARAMETER * P
    if "routing" in registry.of(cfg).views:  # a mixture of experts (moe, hybrid)
        notes.append("Chinchilla's fit is for dense models; for a mixture of experts it is taken at the total count")
    result = Estimate(
        name=name, source=source, family=registry.of(cfg).name,
        params=P, active_params=n["active_params"],
        params_by_component=by_component, parameter_rows=[list(r) for r in n["rows"]],
        flops_per_token=forward, flops_breakdown=flops,
        training_flops_per_token=3 * forward, recompute_flops_per_token=forward if checkpointing and train else 0.0,
        kv_cache_bytes_per_token=per_token, kv_cache_bytes=kv_at, kv_cache_bytes_unwindowed=kv_full,
        memory=memory, activations_per_layer=per_layer,
        fits=fits,
        chinchilla={"tokens": tokens, "loss": chinchilla_loss(P, tokens), "flops": 6 * P * tokens},
        settings=dict(dtype=dtype, batch=batch, context=context, train=train, optimizer=opt_key,
                      mixed_precision=mixed_precision, zero=zero, dp=dp, tp=tp, pp=pp, checkpointing=checkpointing,
                      sequence_parallel=sequence_parallel, flash_attention=flash_attention, dropout=dropout,
                      kv_dtype=kv_dtype),
        notes=notes,
    )  # fmt: skip
    if s.streams == 2:
        result["cross_kv_bytes_per_source_token"] = _kv_bytes(s, kvb, cross=True)
    if state is not None:
        result["state_bytes"] = state
    return result


__all__ = ["CHINCHILLA", "COMPONENTS", "DTYPES", "Estimate", "GPU", "GPUS", "OPTIMIZERS", "Shape", "chinchilla_loss",
           "component", "counts", "estimate", "find_gpu", "keys_seen", "resolve", "shape", "skeleton"]  # fmt: skip
