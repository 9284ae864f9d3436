"""Published configurations of real models, as archplay configs (shapes only: nothing is downloaded).

    from archplay.models.analysis.presets import PRESETS, preset
    cfg = preset("mixtral-8x7b")      # a MoEConfig; estimate("mixtral-8x7b") builds it on the meta device
    names()                           # the preset names, in the order below

Each preset is written from the model's published ``config.json`` (the values a Hugging Face
checkpoint carries), so building it with archplay's own classes gives the published parameter
count exactly: GPT-2 124,439,808; Llama-2-7B 6,738,415,616; Mistral-7B 7,241,732,096;
Mixtral 8x7B 46,702,792,704 (12,879,925,248 active per token). ``tests/test_estimate18.py``
checks every total. Where a family feature matters to a cost, the note says how it is modelled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.architectures.encoder import EncoderConfig
from archplay.models.architectures.encoder_decoder import EncoderDecoderConfig
from archplay.models.architectures.moe import MoEConfig
from archplay.models.architectures.ssm import MambaConfig


@dataclass(frozen=True)
class Preset:
    name: str
    title: str  # the model's usual name
    make: Callable[[], object]  # -> a fresh config
    params: int  # the published total, checked by the tests
    note: str = ""


# Llama's choices: rotary positions, RMSNorm, SwiGLU, no biases, an untied head.
_LLAMA = dict(positions="rotary", norm="rmsnorm", mlp="gated", activation="silu", qkv_bias=False, o_bias=False,
              mlp_bias=False, tie_embeddings=False)  # fmt: skip


def _gpt2(name: str, d: int, layers: int, heads: int) -> DecoderConfig:
    return DecoderConfig(vocab_size=50257, d_model=d, n_layer=layers, n_head=heads, max_seq_len=1024,
                         positions="learned", norm="layernorm", norm_eps=1e-5, mlp="mlp", activation="gelu_new",
                         tie_embeddings=True, bos_token_id=50256, eos_token_id=50256, name=name)  # fmt: skip


def _llama(name: str, **kw) -> DecoderConfig:
    return DecoderConfig(**{**_LLAMA, "name": name, **kw})


def _mamba(name: str, d: int, layers: int) -> MambaConfig:
    return MambaConfig(vocab_size=50280, d_model=d, n_layer=layers, d_state=16, d_conv=4, expand=2, norm_eps=1e-5,
                       tie_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0, name=name)  # fmt: skip


_ALL = (
    Preset("gpt2", "GPT-2 (124M)", lambda: _gpt2("gpt2", 768, 12, 12), 124_439_808),
    Preset("gpt2-xl", "GPT-2 XL (1.5B)", lambda: _gpt2("gpt2-xl", 1600, 48, 25), 1_557_611_200),
    Preset(
        "bert-base", "BERT-base (uncased)",
        lambda: EncoderConfig(vocab_size=30522, d_model=768, n_layer=12, n_head=12, d_ff=3072, max_seq_len=512,
                              type_vocab_size=2, norm_eps=1e-12, activation="gelu", pad_token_id=0, name="bert-base"),
        109_514_298, "with its masked-LM head (BertForMaskedLM), without the next-sentence pooler",
    ),  # fmt: skip
    Preset(
        "t5-base", "T5-base",
        lambda: EncoderDecoderConfig(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, n_layer=12, n_head=12,
                                     ffn="relu", tie_embeddings=True, eos_token_id=1, name="t5-base"),
        222_903_552,
    ),  # fmt: skip
    Preset(
        "llama-2-7b", "Llama 2 7B",
        lambda: _llama("llama-2-7b", vocab_size=32000, d_model=4096, n_layer=32, n_head=32, n_kv_head=32, d_ff=11008,
                       max_seq_len=4096, norm_eps=1e-5, bos_token_id=1, eos_token_id=2),
        6_738_415_616,
    ),  # fmt: skip
    Preset(
        "llama-2-70b", "Llama 2 70B",
        lambda: _llama("llama-2-70b", vocab_size=32000, d_model=8192, n_layer=80, n_head=64, n_kv_head=8, d_ff=28672,
                       max_seq_len=4096, norm_eps=1e-5, bos_token_id=1, eos_token_id=2),
        68_976_648_192, "grouped-query attention: 8 key/value heads for 64 query heads",
    ),  # fmt: skip
    Preset(
        "llama-3-8b", "Llama 3 8B",
        lambda: _llama("llama-3-8b", vocab_size=128256, d_model=4096, n_layer=32, n_head=32, n_kv_head=8, d_ff=14336,
                       max_seq_len=8192, rope_theta=500000.0, norm_eps=1e-5, bos_token_id=128000,
                       eos_token_id=128001),
        8_030_261_248,
    ),  # fmt: skip
    Preset(
        "mistral-7b", "Mistral 7B (v0.1)",
        lambda: _llama("mistral-7b", vocab_size=32000, d_model=4096, n_layer=32, n_head=32, n_kv_head=8, d_ff=14336,
                       max_seq_len=32768, norm_eps=1e-5, sliding_window=4096, layer_types=["sliding"] * 32,
                       bos_token_id=1, eos_token_id=2),
        7_241_732_096, "a sliding window of 4,096 on every layer (v0.1; later versions dropped it)",
    ),  # fmt: skip
    Preset(
        "mixtral-8x7b", "Mixtral 8x7B (v0.1)",
        lambda: MoEConfig(**_LLAMA, name="mixtral-8x7b", vocab_size=32000, d_model=4096, n_layer=32, n_head=32,
                          n_kv_head=8, d_ff=14336, max_seq_len=32768, rope_theta=1e6, norm_eps=1e-5, n_experts=8,
                          top_k=2, bos_token_id=1, eos_token_id=2),
        46_702_792_704, "8 experts per layer, 2 run per token: 12.9 B of the 46.7 B parameters are active",
    ),  # fmt: skip
    Preset(
        "qwen2.5-7b", "Qwen2.5 7B",
        lambda: _llama("qwen2.5-7b", vocab_size=152064, d_model=3584, n_layer=28, n_head=28, n_kv_head=4,
                       d_ff=18944, max_seq_len=131072, rope_theta=1e6, norm_eps=1e-6, qkv_bias=True,
                       bos_token_id=151643, eos_token_id=151643),
        7_615_616_512, "biases on q, k and v; no sliding window (use_sliding_window is false)",
    ),  # fmt: skip
    Preset("mamba-130m", "Mamba 130M", lambda: _mamba("mamba-130m", 768, 24), 129_135_360),
    Preset("mamba-2.8b", "Mamba 2.8B", lambda: _mamba("mamba-2.8b", 2560, 64), 2_768_345_600),
)
PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}
# Other spellings. The built-ins' names ("gpt", "bert", "t5", "moe", "mamba") are never aliases.
ALIASES = {
    "gpt2-124m": "gpt2", "gpt-2": "gpt2", "gpt2-1.5b": "gpt2-xl", "bert-base-uncased": "bert-base",
    "llama2-7b": "llama-2-7b", "llama2-70b": "llama-2-70b", "llama3-8b": "llama-3-8b",
    "mistral": "mistral-7b", "mixtral": "mixtral-8x7b", "qwen2.5": "qwen2.5-7b",
}  # fmt: skip


def names() -> tuple[str, ...]:
    return tuple(PRESETS)


def find(name: str) -> Preset | None:
    """The preset called ``name`` (any case, or one of ``ALIASES``), or None."""
    key = name.strip().lower()
    return PRESETS.get(ALIASES.get(key, key))


def preset(name: str):
    """A fresh config of the preset ``name``; ValueError naming the presets for an unknown one."""
    found = find(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return found.make()


__all__ = ["ALIASES", "PRESETS", "Preset", "find", "names", "preset"]
