"""Hybrid: attention, Mamba and mixture-of-experts layers in one stack (Jamba, Lieber et al. 2024).

    ids ─► embedding ─► N × [x + Mixer(Norm(x)); x + FFN(Norm(x))] ─► RMSNorm ─► LM head

    Mixer, per layer:  attention (``attn_layers[i]``)  |  Mamba-1's selective scan (the others)
    FFN, per layer:    sparse MoE (``moe_layers[i]``)   |  a dense gated MLP (the others)

Jamba places attention once every ``attn_layer_period`` layers from ``attn_layer_offset`` (1 in 8 in the
released models) and experts every ``expert_layer_period`` layers from ``expert_layer_offset`` (every other
layer); the converter (``checkpoints/jamba.py``) turns those into the two flag lists, so any pattern runs.

The parts are the other families', not copies:

* the attention layers are the decoder's block (``DecoderBlock``, or ``MoEBlock`` with experts): grouped-query
  causal self-attention **without positions** (``positions`` "none", NoPE): the Mamba layers before them
  already carry order (their causal conv and recurrence), so Jamba needs no RoPE;
* the Mamba layers are the ssm family's ``MambaMixer`` with Jamba's addition: an RMSNorm on each of Δ_low, B
  and C right after ``x_proj`` (``JambaMixer``; the paper adds them for stability at scale);
* the experts are the moe family's ``SparseMoE``: a softmax router, top-k, weights *not* renormalised.

Design of the trace (how one Trace carries three kinds of layer). ``hidden_states`` has every layer, in the
model's own numbering (the embeddings, then layer 0's output, ...). The per-part fields list only the layers
that have that part, in order, as the moe family already does for ``router_logits``, and as transformers
returns Jamba's ``attentions`` and ``router_logits``:

    attentions                     per attention layer (B, H, T, T)  -> the layers where ``attn_layers`` is True
    router_logits, expert_indices  per MoE layer (B, T, E), (B, T, k) -> the layers where ``moe_layers`` is True
    ssm_attention, ssm_delta       per Mamba layer (B, T, T), (B, T, D_inner) -> where ``attn_layers`` is False

so every list holds tensors only (no holes: shapes stack, ``Trace.detach`` applies, and a view written for
"one entry per layer" runs unchanged over the layers that have its part) and the config's flag lists map each
entry back to its layer (``config.attention_blocks``, ``mamba_blocks``, and ``moe_layers`` as the routing view
already reads it). The views name the model's own layer beside the part's: Explore's attention map
"Layer 3 (attention layer 1 of 2)", the router "block 2 (MoE layer 1 of 2)", the scan step by step "Mamba
layer (model layers 0, 2)"; ``config.layer_kind(i)`` says what a layer is, and a question about a part a layer
lacks gets a sentence ("layer 1 is an attention layer, not a Mamba layer"). ``ablate`` follows the trace:
heads by attention layer (``attention_modules``, as ``trace.attentions``), experts and mixers by the model's
layer (as ``moe_layers`` and ``mamba_blocks`` name them).

Generation carries, per layer, a KV cache (attention layers) or the conv window and SSM state (Mamba
layers): ``HybridDecoder.new_cache``. A traced pass takes a whole sequence (the hidden attention of a scan
covers the tokens it is shown), as the ssm family's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archplay.models.architectures.decoder import DecoderBlock, LayerTrace
from archplay.models.architectures.layers import KVCache, ModelOutput, RMSNorm, Trace, make_mlp, make_norm, residual
from archplay.models.architectures.moe import MoEBlock, MoEConfig, MoEDecoder, SparseMoE
from archplay.models.architectures.ssm import LayerState, MambaConfig, MambaMixer, SSMInputs, _init_weights, causal_conv


@dataclass
class HybridConfig(MoEConfig):
    """A ``MoEConfig`` (attention, experts, norms) plus which layers attend and the Mamba mixers' sizes."""

    attn_layers: list[bool] | None = None  # per layer: True = attention, False = a Mamba mixer; None = all attention
    d_state: int = 16  # N, the Mamba mixers' state size per channel
    d_conv: int = 4  # kernel width of their causal depthwise conv
    expand: int = 2  # D_inner = expand × d_model
    dt_rank: int | str = "auto"  # R; "auto" = ceil(d_model / 16)
    ssm_conv_bias: bool = True  # Jamba's mamba_conv_bias
    ssm_bias: bool = False  # on in_proj and out_proj (Jamba's mamba_proj_bias)
    ssm_norms: bool = True  # Jamba: RMSNorms on Δ_low, B and C after x_proj
    family: str = field(default="hybrid", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attn_layers is None:
            self.attn_layers = [True] * self.n_layer
        self.attn_layers = [bool(a) for a in self.attn_layers]
        self.moe_layers = [bool(m) for m in self.moe_layers]
        self.require(len(self.attn_layers) == self.n_layer, "attn_layers needs one flag per layer")
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        self.require_sizes("d_state", "d_conv", "expand", "dt_rank")
        self.require(self.positions in ("none", "rotary"),
                     f"a hybrid's attention has no position table: positions must be 'none' or 'rotary', "
                     f"got {self.positions!r}")  # fmt: skip
        self.require(self.kv_lora_rank is None and self.router_score == "softmax" and not self.d_shared_expert,
                     "a hybrid's attention and router are the usual ones (no latent attention, sigmoid router or "
                     "shared expert)")  # fmt: skip
        self.require(set(self.layer_types) == {"full"}, "a hybrid's attention layers see every earlier token")
        self.mamba_config()  # its own checks (dt_rank, activation)

    def mamba_config(self) -> MambaConfig:
        """The ssm family's config of one Mamba mixer of this stack."""
        return MambaConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layer=1, d_state=self.d_state,
                           d_conv=self.d_conv, expand=self.expand, dt_rank=self.dt_rank, norm_eps=self.norm_eps,
                           conv_bias=self.ssm_conv_bias, bias=self.ssm_bias, activation=self.activation)  # fmt: skip

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def attention_blocks(self) -> list[int]:
        """The layer index of each entry of ``Trace.attentions``."""
        return [i for i, a in enumerate(self.attn_layers) if a]

    @property
    def mamba_blocks(self) -> list[int]:
        """The layer index of each entry of ``Trace.ssm_attention`` and ``ssm_delta``."""
        return [i for i, a in enumerate(self.attn_layers) if not a]

    def layer_kind(self, i: int) -> str:
        """"attention" or "Mamba", and "+ MoE" or "+ MLP": what layer ``i`` is, in words."""
        return ("attention" if self.attn_layers[i] else "Mamba") + (" + MoE" if self.moe_layers[i] else " + MLP")

    @classmethod
    def jamba_tiny(cls, **kw) -> "HybridConfig":
        """4 layers: Mamba, attention, Mamba, attention; experts on layers 0 and 2 (Jamba's periods of 2)."""
        base = dict(
            vocab_size=99, d_model=32, n_layer=4, n_head=4, n_kv_head=2, d_ff=48, max_seq_len=256,
            positions="none", norm="rmsnorm", norm_eps=1e-6, mlp="gated", activation="silu", qkv_bias=False,
            o_bias=False, mlp_bias=False, tie_embeddings=False, n_experts=4, top_k=2, normalize_top_k=False,
            attn_layers=[False, True, False, True], moe_layers=[True, False, True, False], d_state=8,
        )  # fmt: skip
        return cls(**{**base, **kw})


class JambaMixer(MambaMixer):
    """Mamba-1's mixer (``ssm.MambaMixer``: in_proj, causal conv, x_proj, dt_proj, the selective scan, the
    SiLU gate, out_proj) with Jamba's RMSNorms on Δ_low, B and C between x_proj and the scan."""

    def __init__(self, cfg: MambaConfig, norms: bool = True):
        super().__init__(cfg)
        if norms:
            self.dt_layernorm = RMSNorm(self.dt_rank, cfg.norm_eps)
            self.b_layernorm = RMSNorm(self.d_state, cfg.norm_eps)
            self.c_layernorm = RMSNorm(self.d_state, cfg.norm_eps)
        self.norms = norms

    def ssm_inputs(self, x_hat: Tensor, conv_state: Tensor | None = None) -> SSMInputs:
        """As ``MambaMixer.ssm_inputs``, the three norms applied to x_proj's outputs."""
        x, z = self.in_proj(x_hat).chunk(2, dim=-1)  # (b, T, Di) each
        x, conv_state = causal_conv(self.conv1d, x.transpose(1, 2), conv_state)  # (b, Di, T)
        u = self.act(x).transpose(1, 2)  # (b, T, Di)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (b, T, R|N|N)
        if self.norms:  # Jamba: each normalised over its own width (R, N, N)
            dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        delta = F.softplus(self.dt_proj(dt))  # (b, T, Di)
        return SSMInputs(u=u, z=z, delta=delta, B=B, C=C, conv_state=conv_state)


@dataclass
class HybridLayerTrace(LayerTrace):
    """A layer's report: the decoder's fields (attention layers, MoE layers) plus a Mamba layer's scan."""

    ssm_attention: Tensor | None = None  # (B, T, T) mean |α| over channels, Mamba layers only
    ssm_delta: Tensor | None = None  # (B, T, D_inner), Mamba layers only


class MambaLayer(nn.Module):
    """x + Mixer(Norm(x)), then x + FFN(Norm(x)): a Mamba mixer where the decoder's block has attention."""

    def __init__(self, cfg: HybridConfig, layer_idx: int):
        super().__init__()
        self.mixer_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = JambaMixer(cfg.mamba_config(), norms=cfg.ssm_norms)
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        routed = cfg.moe_layers[layer_idx]
        self.mlp = SparseMoE(cfg) if routed else make_mlp(cfg.mlp, cfg.d_model, cfg.d_ff, cfg.activation, cfg.mlp_bias)

    def forward(self, x: Tensor, state: LayerState | None = None, *, trace: bool = False
                ) -> tuple[Tensor, LayerState, HybridLayerTrace]:  # fmt: skip
        out, state, s = self.mixer(self.mixer_norm(x), state)
        x = x + out  # (B, T, D)
        lt = HybridLayerTrace()
        if trace:
            scan = self.mixer.layer_trace(s)
            lt.ssm_attention, lt.ssm_delta = scan.attention, scan.delta
        if isinstance(self.mlp, SparseMoE):
            x, lt.router_logits, lt.expert_indices = residual(x, self.mlp_norm, self.mlp, post=False)
        else:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state, lt


class HybridDecoder(MoEDecoder):
    """The moe family's decoder (embeddings, final norm, LM head, masks) with a Mamba mixer in the layers that
    do not attend. ``cache``: per layer a ``KVCache`` (attention) or the Mamba state (None before the first
    call), from ``new_cache``; updated in place."""

    config: HybridConfig

    def make_block(self, cfg: HybridConfig, layer_idx: int) -> nn.Module:
        if not cfg.attn_layers[layer_idx]:
            return MambaLayer(cfg, layer_idx)
        return MoEBlock(cfg, layer_idx) if cfg.moe_layers[layer_idx] else DecoderBlock(cfg, layer_idx)

    def __init__(self, cfg: HybridConfig):
        super().__init__(cfg)
        self.apply(_init_weights)  # the ssm family's: normal(0.02), and Mamba's own A, D and Δ in the mixers

    def forward(self, ids: Tensor, *, trace: bool = False, cache: list | None = None,
                last_only: bool = False) -> ModelOutput:  # fmt: skip
        """ids (B, T). ``cache`` (``new_cache()``, then the same list) continues a sequence. ``trace`` takes a whole
        sequence. ``last_only``: the logits of the last position only, (B, 1, V)."""
        cfg = self.config
        kv = [c for c in cache if isinstance(c, KVCache)] if cache is not None else []
        offset = kv[0].length if kv else 0
        if trace and cache is not None and (offset or any(isinstance(c, LayerState) for c in cache)):
            raise ValueError("trace=True takes a whole sequence, not a continuation with a carried state")
        T = ids.shape[1]
        pos = torch.arange(offset, offset + T, device=ids.device)  # (T,) absolute positions
        k_pos = torch.arange(offset + T, device=ids.device)  # (S,)
        x = self.embed_tokens(ids)  # (B, T, D)
        x, rope, bias = self._positions(x, pos, k_pos)  # NoPE: x as it is, no rotation, no bias
        masks = self._masks(pos, k_pos)
        hidden, reports = [x], []
        for i, layer in enumerate(self.layers):
            here = cache[i] if cache is not None else None
            if cfg.attn_layers[i]:
                x, lt = layer(x, masks=masks, bias=bias, rope=rope, cache=here, need_weights=trace)
            else:
                x, state, lt = layer(x, here, trace=trace)
                if cache is not None:
                    cache[i] = state
            hidden.append(x)
            reports.append(lt)
        h = self.norm(x)
        logits = self.lm_head(h[:, -1:] if last_only else h)  # (B, T, V), or (B, 1, V)
        tr = _gather(hidden, reports, cfg) if trace else None
        return ModelOutput(logits=logits, trace=tr, cache=cache, last_hidden_state=h)

    def new_cache(self) -> list:
        """What ``generate`` carries (the decoder's ``generate`` and ``generate_stream`` ask for it): a KV cache
        per attention layer, and a slot per Mamba layer that the first call fills with its state."""
        return [KVCache() if a else None for a in self.config.attn_layers]


def _gather(hidden: list[Tensor], reports: list[LayerTrace], cfg: HybridConfig) -> Trace:
    """Per-layer reports -> one Trace: each part's list holds the layers that have that part, in order."""
    attn = [lt.attention for lt, a in zip(reports, cfg.attn_layers) if a]
    scans = [lt for lt, a in zip(reports, cfg.attn_layers) if not a]
    routed = [lt for lt, m in zip(reports, cfg.moe_layers) if m]
    return Trace(
        hidden_states=hidden,
        attentions=attn or None,
        router_logits=[lt.router_logits for lt in routed] or None,
        expert_indices=[lt.expert_indices for lt in routed] or None,
        ssm_attention=[lt.ssm_attention for lt in scans] or None,
        ssm_delta=[lt.ssm_delta for lt in scans] or None,
    )


__all__ = ["HybridConfig", "HybridDecoder", "HybridLayerTrace", "JambaMixer", "MambaLayer"]
