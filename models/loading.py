"""``load(name | folder)``: the built-in models, or a local Hugging Face checkpoint folder.

A folder needs ``config.json``, weights (``model.safetensors``, sharded safetensors with
their index, or ``pytorch_model.bin`` read with ``torch.load(weights_only=True)``: never a
plain pickle load, so a checkpoint cannot run code) and the tokenizer files.

Each supported ``model_type`` has a converter: it turns the checkpoint's config into ours and
renames (and, for GPT-2, transposes and splits) its tensors into our modules' names. Anything
that does not fit is reported with what is wrong and what is supported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .assets import asset_dir
from .decoder import Decoder, DecoderConfig
from .encoder import Encoder, EncoderConfig
from .encoder_decoder import EncoderDecoder, EncoderDecoderConfig, hf_config as _t5_config, hf_rename as _t5_rename
from .moe import MoEConfig, MoEDecoder
from .ssm import Mamba, MambaConfig, hf_config as _mamba_config, hf_rename as _mamba_rename
from .tokenizer import HFTokenizer


class LoadError(ValueError):
    """A model could not be loaded; the message says why and what would work."""


BUILTIN_NAMES = ("gpt", "bert", "t5", "moe", "mamba")


@dataclass
class Converter:
    make_config: Callable[[dict, str], object]  # (HF config, display name) -> our config
    rename: Callable[[str, Tensor], dict[str, Tensor]]  # one HF tensor -> our tensors ({} = skip)
    build: Callable[[object], nn.Module]


# --------------------------------------------------------------------------- GPT-2


def _gpt2_config(hf: dict, name: str) -> DecoderConfig:
    if hf.get("add_cross_attention"):
        raise LoadError("GPT-2 checkpoints with cross-attention are not supported")
    if not hf.get("scale_attn_weights", True):
        raise LoadError("GPT-2 checkpoints with scale_attn_weights=false are not supported")
    d = hf["n_embd"]
    return DecoderConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layer=hf["n_layer"], n_head=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf.get("n_positions", 1024),
        positions="learned", norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp="mlp", activation=hf.get("activation_function", "gelu_new"),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        attn_scale_by_layer=hf.get("scale_attn_by_inverse_layer_idx", False),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"), name=name,
    )  # fmt: skip


_GPT2_BLOCK = {"ln_1": "attn_norm", "ln_2": "mlp_norm", "attn.c_proj": "attn.o_proj",
               "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}  # fmt: skip


def _gpt2_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    key = key.removeprefix("transformer.")
    if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
        return {}
    top = {"wte.weight": "embed_tokens.weight", "wpe.weight": "embed_positions.weight",
           "ln_f.weight": "norm.weight", "ln_f.bias": "norm.bias", "lm_head.weight": "lm_head.weight"}  # fmt: skip
    if key in top:
        return {top[key]: t}
    m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", key)
    if not m:
        return {key: t}  # reported as unexpected
    i, part, kind = m.groups()
    conv1d = part.startswith(("attn.", "mlp."))  # GPT-2's Conv1D stores weights as (in, out)
    if conv1d and kind == "weight":
        t = t.t()
    if part == "attn.c_attn":  # fused q, k, v along the output axis
        q, k, v = t.chunk(3, dim=0)
        return {f"layers.{i}.attn.{p}.{kind}": x.contiguous() for p, x in zip(("q_proj", "k_proj", "v_proj"), (q, k, v))}
    if part not in _GPT2_BLOCK:
        return {key: t}
    return {f"layers.{i}.{_GPT2_BLOCK[part]}.{kind}": t.contiguous()}


# --------------------------------------------------------------------------- Llama / Qwen2

_ROPE_TYPES = ("default", "linear", "llama3")


def _rope(hf: dict) -> tuple[float, dict | None]:
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise LoadError(f"RoPE scaling {kind!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
    return theta, (None if kind == "default" else {**params, "rope_type": kind})


def _llama_like_config(hf: dict, name: str, *, qwen2: bool = False, cls=DecoderConfig, **extra) -> DecoderConfig:
    d, n_head, n_layer = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    theta, scaling = _rope(hf)
    window, types = hf.get("sliding_window"), None
    if qwen2 and hf.get("layer_types"):
        types = ["sliding" if t == "sliding_attention" else "full" for t in hf["layer_types"]]
    elif qwen2 and hf.get("use_sliding_window") and window:
        first = hf.get("max_window_layers", n_layer)
        types = ["sliding" if i >= first else "full" for i in range(n_layer)]
    elif not qwen2 and window:  # Mistral / Mixtral: every layer uses the window
        types = ["sliding"] * n_layer
    bias = bool(hf.get("attention_bias", False))
    return cls(
        vocab_size=hf["vocab_size"], d_model=d, n_layer=n_layer, n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head, head_dim=hf.get("head_dim") or d // n_head,
        d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        positions="rotary", rope_theta=theta, rope_scaling=scaling,
        rotary_fraction=float(hf.get("partial_rotary_factor", 1.0)),
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="gated",
        activation=hf.get("hidden_act", "silu"),
        qkv_bias=True if qwen2 else bias, o_bias=False if qwen2 else bias,
        mlp_bias=bool(hf.get("mlp_bias", False)), tie_embeddings=hf.get("tie_word_embeddings", False),
        sliding_window=window if types and "sliding" in types else None, layer_types=types,
        bos_token_id=hf.get("bos_token_id"), eos_token_id=_first(hf.get("eos_token_id")), name=name,
        **extra,
    )  # fmt: skip


def _first(x):
    return x[0] if isinstance(x, list) and x else x


def _llama_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    key = key.removeprefix("model.")
    if key.endswith("rotary_emb.inv_freq"):  # a buffer some checkpoints carry; recomputed
        return {}
    key = key.replace(".self_attn.", ".attn.")
    key = key.replace(".input_layernorm.", ".attn_norm.").replace(".post_attention_layernorm.", ".mlp_norm.")
    return {key: t}


def _mixtral_config(hf: dict, name: str) -> MoEConfig:
    return _llama_like_config(
        hf, name, cls=MoEConfig, n_experts=hf["num_local_experts"], top_k=hf["num_experts_per_tok"]
    )


def _mixtral_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    """transformers 5 writes Mixtral's experts one by one (w1 gate, w3 up, w2 down); fused
    3-D tensors (gate_up_proj (E, 2I, D), down_proj (E, D, I)) are split per expert too."""
    key = key.replace(".block_sparse_moe.", ".mlp.")
    m = re.fullmatch(r"(model\.)?layers\.(\d+)\.mlp\.(.+)", key)
    if not m:
        return _llama_rename(key, t)
    i, rest = m.group(2), m.group(3)
    w = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
    if rest == "gate.weight":
        return {f"layers.{i}.mlp.router.weight": t}
    e = re.fullmatch(r"experts\.(\d+)\.(w[123])\.weight", rest)
    if e:
        return {f"layers.{i}.mlp.experts.{e.group(1)}.{w[e.group(2)]}.weight": t}
    if rest == "experts.gate_up_proj":
        out = {}
        for j, fused in enumerate(t):
            gate, up = fused.chunk(2, dim=0)
            out[f"layers.{i}.mlp.experts.{j}.gate_proj.weight"] = gate.contiguous()
            out[f"layers.{i}.mlp.experts.{j}.up_proj.weight"] = up.contiguous()
        return out
    if rest == "experts.down_proj":
        return {f"layers.{i}.mlp.experts.{j}.down_proj.weight": d.contiguous() for j, d in enumerate(t)}
    return _llama_rename(key, t)  # Qwen2-MoE's expert and shared-expert names are already ours


def _qwen2_moe_config(hf: dict, name: str) -> MoEConfig:
    n_layer, step = hf["num_hidden_layers"], hf.get("decoder_sparse_step", 1)
    dense = set(hf.get("mlp_only_layers") or [])
    moe_layers = [i not in dense and (i + 1) % step == 0 for i in range(n_layer)]
    return _llama_like_config(
        hf, name, qwen2=True, cls=MoEConfig, n_experts=hf["num_experts"], top_k=hf["num_experts_per_tok"],
        d_expert=hf["moe_intermediate_size"], normalize_top_k=bool(hf.get("norm_topk_prob", False)),
        d_shared_expert=hf.get("shared_expert_intermediate_size") or None, moe_layers=moe_layers,
    )  # fmt: skip


# --------------------------------------------------------------------------- BERT


def _bert_config(hf: dict, name: str) -> EncoderConfig:
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise LoadError("BERT checkpoints configured as decoders are not supported")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise LoadError("only absolute position embeddings are supported for BERT")
    return EncoderConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=hf.get("layer_norm_eps", 1e-12), activation=hf.get("hidden_act", "gelu"),
        pad_token_id=hf.get("pad_token_id"), name=name,
    )  # fmt: skip


_BERT_SUBS = [
    (r"^embeddings\.word_embeddings\.", "embed_tokens."),
    (r"^embeddings\.position_embeddings\.", "embed_positions."),
    (r"^embeddings\.token_type_embeddings\.", "embed_types."),
    (r"^embeddings\.LayerNorm\.", "embed_norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.attn.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.attn.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.attn.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn.o_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.up_proj."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.down_proj."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.mlp_norm."),
    (r"^cls\.predictions\.transform\.dense\.", "mlm_head.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "mlm_head.norm."),
    (r"^cls\.predictions\.decoder\.weight$", "mlm_head.decoder.weight"),
    (r"^cls\.predictions\.(decoder\.)?bias$", "mlm_head.decoder.bias"),
]


def _bert_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    key = key.removeprefix("bert.")
    key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))  # TF-era names
    if key.startswith(("pooler.", "cls.seq_relationship.")) or key.endswith("position_ids"):
        return {}  # next-sentence and pooling heads: not part of the encoder or its MLM head
    for pattern, repl in _BERT_SUBS:
        new, n = re.subn(pattern, repl, key)
        if n:
            return {new: t}
    return {key: t}


CONVERTERS: dict[str, Converter] = {
    "gpt2": Converter(_gpt2_config, _gpt2_rename, Decoder),
    "llama": Converter(lambda hf, n: _llama_like_config(hf, n, qwen2=False), _llama_rename, Decoder),
    "qwen2": Converter(lambda hf, n: _llama_like_config(hf, n, qwen2=True), _llama_rename, Decoder),
    "mixtral": Converter(_mixtral_config, _mixtral_rename, MoEDecoder),
    "qwen2_moe": Converter(_qwen2_moe_config, _mixtral_rename, MoEDecoder),
    "bert": Converter(_bert_config, _bert_rename, Encoder),
    "t5": Converter(_t5_config, _t5_rename, EncoderDecoder),
    "mamba": Converter(_mamba_config, _mamba_rename, Mamba),
}
SUPPORTED = tuple(CONVERTERS)


# --------------------------------------------------------------------------- reading a folder


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise LoadError(f"{folder} has no config.json; a Hugging Face checkpoint folder needs one")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{path} could not be read as JSON: {e}") from None
    if not isinstance(hf, dict):
        raise LoadError(f"{path} does not hold a JSON object")
    return hf


def _read_weights(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    single, index, pt = folder / "model.safetensors", folder / "model.safetensors.index.json", folder / "pytorch_model.bin"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(load_file(str(folder / shard)))
            return state
        if pt.is_file():
            state = torch.load(str(pt), map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise LoadError(f"{pt} does not hold a state dict")
            return state
    except LoadError:
        raise
    except Exception as e:  # truncated, corrupt or code-carrying files all end up here
        raise LoadError(f"the weights in {folder} could not be read ({type(e).__name__}: {e})") from None
    raise LoadError(
        f"{folder} has no weights: expected model.safetensors, model.safetensors.index.json "
        "with its shards, or pytorch_model.bin"
    )


def _convert_state(conv: Converter, state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, t in state.items():
        out.update(conv.rename(key, t))
    return out


def _fill(model: nn.Module, state: dict[str, Tensor], folder: Path) -> None:
    """Copy tensors in, insisting every weight is present and every shape fits.

    A tied weight (the output head sharing the embedding matrix) may be stored under
    only one of its names, as transformers does.
    """
    own = model.state_dict()
    aliases: dict[int, list[str]] = {}
    for k, v in own.items():
        aliases.setdefault(v.data_ptr(), []).append(k)
    missing = [k for k in own if not any(a in state for a in aliases[own[k].data_ptr()])]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"missing tensors {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_few(unexpected)}")
    if wrong:
        problems.append(f"shapes that do not fit the config: {_few(wrong)}")
    if problems:
        raise LoadError(f"the weights in {folder} do not fit its config.json: " + "; ".join(problems))
    with torch.no_grad():
        for k, t in state.items():
            own[k].copy_(t)


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def load_folder(folder: str | Path, device: str | torch.device = "cpu"):
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise LoadError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise LoadError(f"{folder} is not a folder; give a Hugging Face checkpoint folder")
    hf = _read_config(folder)
    mtype = hf.get("model_type")
    if mtype not in CONVERTERS:
        raise LoadError(
            f"{folder}: model_type {mtype!r} is not supported; supported: {', '.join(SUPPORTED)}"
        )
    conv = CONVERTERS[mtype]
    try:
        cfg = conv.make_config(hf, folder.name)
    except KeyError as e:
        raise LoadError(f"{folder}/config.json lacks {e.args[0]!r}, which {mtype} needs") from None
    except (AssertionError, TypeError, ValueError) as e:
        if isinstance(e, LoadError):
            raise
        raise LoadError(f"{folder}/config.json is not a valid {mtype} config: {e}") from None
    state = _convert_state(conv, _read_weights(folder))
    if conv.build is Encoder:
        cfg.has_mlm_head = any(k.startswith("mlm_head.") for k in state)
    if conv.build is EncoderDecoder:
        # transformers 5 writes tie_word_embeddings: true for every T5, even an untied (v1.1,
        # Flan) one whose head it then stores: a distinct lm_head on disk is what says "untied".
        head, shared = state.get("lm_head.weight"), state.get("shared.weight")
        cfg.tie_embeddings = head is None or (shared is not None and torch.equal(head, shared))
    model = conv.build(cfg)
    _fill(model, state, folder)
    tokenizer = _load_tokenizer(folder, cfg.vocab_size)
    return model.eval().to(device), tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def _load_tokenizer(folder: Path, vocab_size: int) -> HFTokenizer:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise LoadError(f"the tokenizer in {folder} could not be loaded: none of {', '.join(TOKENIZER_FILES)} is there")
    try:
        tokenizer = HFTokenizer(folder)
    except Exception as e:
        raise LoadError(f"the tokenizer in {folder} could not be loaded ({type(e).__name__}: {e})") from None
    if not 0 < tokenizer.vocab_size <= vocab_size:
        raise LoadError(
            f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens, which does not fit "
            f"the model's vocabulary of {vocab_size}"
        )
    return tokenizer


BUILTIN_DIR = asset_dir() / "checkpoints"
FAMILIES = {  # family -> (config class, model class)
    "decoder": (DecoderConfig, Decoder), "encoder": (EncoderConfig, Encoder),
    "encoder-decoder": (EncoderDecoderConfig, EncoderDecoder), "moe": (MoEConfig, MoEDecoder),
    "ssm": (MambaConfig, Mamba),
}  # fmt: skip


def save_builtin(model: nn.Module, tokenizer, folder: str | Path, *, training: dict | None = None) -> Path:
    """Write a built-in checkpoint: ``config.json`` (family, config, tokenizer wrapping and its
    fingerprint), ``model.safetensors`` (tied weights stored once) and ``training.json``."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = {
        "format": "archplay-builtin/1",
        "family": cfg.family,
        "config": {k: v for k, v in cfg.to_dict().items() if k != "family"},
        "tokenizer": {"prefix": list(tokenizer.prefix), "suffix": list(tokenizer.suffix),
                      "sha256": tokenizer.fingerprint()},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for param in model.parameters():  # safetensors writes contiguous tensors (see fast_cpu_layout)
        if not param.data.is_contiguous():
            param.data = param.data.contiguous()
    save_model(model, str(folder / "model.safetensors"))
    if training is not None:
        (folder / "training.json").write_text(json.dumps(training) + "\n", encoding="utf-8")
    return folder


def load_builtin(folder: str | Path, device: str | torch.device = "cpu"):
    """A checkpoint written by ``save_builtin`` -> (model, tokenizer)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from .tokenizer import SPTokenizer

    folder = Path(folder)
    try:
        meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config_cls, build = FAMILIES[meta["family"]]
        cfg = config_cls.from_dict(meta["config"])
        wrap, fingerprint = meta["tokenizer"], meta["tokenizer"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LoadError(f"the built-in checkpoint in {folder} is damaged ({e}); retrain it with "
                        "python -m models.train") from None  # fmt: skip
    tok = SPTokenizer.builtin(prefix=tuple(wrap["prefix"]), suffix=tuple(wrap["suffix"]))
    if tok.fingerprint() != fingerprint:
        raise LoadError(f"{folder} was trained with another tokenizer than assets/tokenizer/; retrain it")
    model = build(cfg)
    try:
        load_model(model, str(folder / "model.safetensors"), strict=True)
    except (OSError, RuntimeError, SafetensorError) as e:
        raise LoadError(f"the weights in {folder} do not fit its config: {e}") from None
    return model.eval().to(device), tok


def load(name: str | Path, device: str | torch.device = "cpu"):
    """A built-in model by name, or a local Hugging Face checkpoint folder -> (model, tokenizer).

    On the CPU the model's widening projections are laid out for fast inference (``fast_cpu_layout``).
    """
    if isinstance(name, str) and name in BUILTIN_NAMES:
        if not (BUILTIN_DIR / name / "config.json").is_file():
            raise LoadError(f"the built-in {name!r} is missing from {BUILTIN_DIR}; "
                            f"train it with: python -m models.train --model {name}")  # fmt: skip
        model, tokenizer = load_builtin(BUILTIN_DIR / name, device)
    elif isinstance(name, str) and not any(c in name for c in "/\\.") and not Path(name).exists():
        raise LoadError(
            f"unknown model {name!r}: built-ins are {', '.join(BUILTIN_NAMES)}; "
            "or give the path of a Hugging Face checkpoint folder"
        )
    else:
        model, tokenizer = load_folder(name, device)
    if torch.device(device).type == "cpu":
        fast_cpu_layout(model)
    return model, tokenizer


def fast_cpu_layout(model: nn.Module) -> nn.Module:
    """Store each widening ``nn.Linear`` weight (out ≥ in, e.g. q/k/v, the MLP's up and gate) column-major.

    Same values, same shape (out, in), only the memory order changes: ``F.linear`` multiplies by
    ``W.T``, which is then contiguous, so the CPU's BLAS runs the (in, out) layout that GPT-2's own
    Conv1D uses. For one token at a time (generation) that is markedly faster on x86 CPUs (measured
    here: 768 → 2304 in 394 µs against 586, 768 → 3072 in 440 against 737); narrowing projections
    are faster as they are and stay. Embeddings and the LM head (often tied to them) are untouched.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] != "lm_head":
            w = module.weight
            if w.shape[0] >= w.shape[1] and w.is_contiguous() and id(w) not in embeddings:  # tied stays tied
                module.weight = nn.Parameter(w.detach().t().contiguous().t(), requires_grad=w.requires_grad)
    return model
