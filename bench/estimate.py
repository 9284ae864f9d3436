"""The cost calculator against measurement (issue 18): ``estimate``'s predictions for three small
configurations next to what the models really do, ratio beside each.

For a GPT-2-style decoder, a Llama-style one (grouped-query attention, SwiGLU, RoPE) and a
Mixtral-style mixture of experts (8 experts, top-2), built with random weights:

1. **KV cache**: the bytes of the cache ``generate`` ends with (float32) against
   ``estimate(...)["kv_cache_bytes"]`` at the same batch and length. Target: equal.
2. **Forward FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass (attention
   through SDPA's math path, so that its products are counted) against ``flops_per_token`` × tokens.
   Target: within 5%.
3. **Training memory**: the peak live tensor bytes of one real training step (fp32 weights, AdamW;
   forward, ``zero_grad``, backward, clipping, step; the second step, in steady state), counted by
   ``measure.LiveBytes`` (every tensor's storage from the operation that made it until it is freed),
   against ``memory["total"]`` of ``estimate(..., train=True, dtype="fp32", mixed_precision=False)``.
   Target: within 15%. The GPT-style model is measured a second time with every layer under
   ``torch.utils.checkpoint`` against ``checkpointing=True``. With ``--device cuda`` the models run on
   the GPU and the CUDA allocator's own peak (``torch.cuda.max_memory_allocated``) is reported too.

    python -m bench.estimate [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import functools

import torch

from archplay.models import registry
from archplay.models.analysis.estimate import estimate
from archplay.models.analysis.measure import measure_flops, measure_kv_cache, measure_training_step
from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.architectures.moe import MoEConfig

SECTION = "estimate (issue 18)"
_LLAMA = dict(positions="rotary", norm="rmsnorm", mlp="gated", activation="silu", qkv_bias=False, o_bias=False,
              mlp_bias=False, tie_embeddings=False)  # fmt: skip


def configs(quick: bool) -> dict:
    d, layers, vocab = (64, 2, 99) if quick else (128, 4, 512)
    return {
        f"GPT-2 style ({layers}×{d})": DecoderConfig(vocab_size=vocab, d_model=d, n_layer=layers, n_head=4,
                                                      max_seq_len=256),
        f"Llama style, GQA 8/2 ({layers}×{d})": DecoderConfig(**_LLAMA, vocab_size=vocab, d_model=d, n_layer=layers,
                                                              n_head=8, n_kv_head=2, d_ff=11 * d // 4, max_seq_len=256),
        f"Mixtral style, 8 experts top-2 ({layers}×{d})": MoEConfig(**_LLAMA, vocab_size=vocab, d_model=d,
                                                                    n_layer=layers, n_head=8, n_kv_head=2,
                                                                    d_ff=7 * d // 4, n_experts=8, top_k=2,
                                                                    max_seq_len=256),
    }  # fmt: skip


def row(case: str, measure: str, predicted: float, measured: float, unit: str, tolerance: float) -> dict:
    ratio = predicted / measured
    target = "equal" if tolerance == 0 else f"ratio within ±{tolerance:.0%}"
    met = ratio == 1 if tolerance == 0 else abs(ratio - 1) <= tolerance
    value = f"predicted {_show(predicted, unit)} · measured {_show(measured, unit)} · ratio {ratio:.3f}"
    return {"section": SECTION, "case": case, "measure": measure, "value": value, "target": target, "met": met,
            "raw": {"predicted": predicted, "measured": measured, "ratio": ratio}}  # fmt: skip


def _show(x: float, unit: str) -> str:
    if unit == "B":
        return f"{x / 2**20:.3f} MiB" if x >= 2**20 else f"{x / 2**10:.1f} KiB"
    return f"{x / 1e6:.2f} MFLOP"


def _build(cfg, device: str):
    torch.manual_seed(0)
    return registry.of(cfg).build(cfg).to(device)


def _checkpointed(model):
    for layer in model.layers:
        layer.forward = functools.partial(torch.utils.checkpoint.checkpoint, layer.forward, use_reentrant=False)
    return model


def _training_peak(model, batch, device: str) -> tuple[int, int | None]:
    """(peak live tensor bytes, the CUDA allocator's peak or None) of one steady-state training step."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    peak = measure_training_step(model, batch)["peak"]
    return peak, (torch.cuda.max_memory_allocated() if device == "cuda" else None)


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    B, T = (4, 64) if quick else (8, 128)
    rows = []
    for case, cfg in configs(quick).items():
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g).to(device)
        model = _build(cfg, device).eval()

        held = measure_kv_cache(model, ids[:, : T - 3], max_new_tokens=4)["bytes"]  # T - 3 + 4 - 1 = T positions
        predicted = estimate(cfg, dtype="fp32", batch=B, context=T)
        rows.append(row(case, "KV cache after generate (fp32)", predicted["kv_cache_bytes"], held, "B", 0))

        counted = measure_flops(model, ids)["total"]
        flops = predicted["flops_per_token"] * B * T
        rows.append(row(case, "forward FLOPs (FlopCounterMode)", flops, counted, "F", 0.05))

        train = functools.partial(estimate, cfg, dtype="fp32", mixed_precision=False, train=True, batch=B, context=T)
        peak, cuda_peak = _training_peak(_build(cfg, device), (ids, ids.clone()), device)
        total = train()["memory"]["total"]
        rows.append(row(case, "training step peak, fp32 AdamW (live tensors)", total, peak, "B", 0.15))
        if cuda_peak is not None:
            rows.append(row(case, "training step peak, fp32 AdamW (CUDA allocator)", total, cuda_peak, "B", 0.15))
        if "GPT" in case:
            peak, _ = _training_peak(_checkpointed(_build(cfg, device)), (ids, ids.clone()), device)
            rows.append(row(case, "training step peak, activation checkpointing", train(checkpointing=True)["memory"]
                            ["total"], peak, "B", 0.15))  # fmt: skip
    return rows


if __name__ == "__main__":
    import argparse

    from bench.report import print_table

    ap = argparse.ArgumentParser(prog="python -m bench.estimate", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller models and batches")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    a = ap.parse_args()
    print_table(run(a.quick, a.device))
