"""Greedy generation speed, batch 1: our ``model.generate`` against transformers' on the same weights.

    python -m bench.generation [--quick] [--threads N] [--device cpu|cuda]
    python -m bench.generation --work [--device cpu|cuda]      (what one token launches; no timing)

Each case builds a transformers model from a config with a fixed seed (transformers' own
initialisation), saves it to a temporary folder with a small word tokenizer, and loads that
folder with ``models.load``: the two implementations hold identical weights. Both then
continue the same seeded random 16-token prompt greedily for 128 new tokens (end-of-sequence
switched off on both sides, so both write exactly 128), in the same process and thread count,
under ``torch.inference_mode``: one warm-up each, then the best of 3 runs, alternating
ours / transformers so that background load hits both alike. transformers runs its default
attention (SDPA), its fastest path on the CPU. With ``--device cuda`` both sides run on the GPU
(fp32, as loaded) and each timed call ends with a ``torch.cuda.synchronize``.

Reported per case: tokens/s for each (new tokens over the whole ``generate`` call, prompt pass
included), the ratio ours / transformers, and whether the generated tokens are identical.
A mismatch is reported, never hidden: it fails the case.

Run it on an otherwise idle machine. With torch's default thread pool (one thread per core),
another busy process makes every parallel op wait for a descheduled worker: a tiny model's
token then takes tens of milliseconds instead of under one, on both sides, and the ratio is
noise. ``raw["load_avg_1min"]`` records the load around each case; ``--threads 1`` is the
robust choice on a shared box.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

SECTION = "generation"
MEASURE = "greedy tokens/s, ours vs transformers (128 new, batch 1)"
PROMPT_LEN = 16
NEW_TOKENS = 128
REPEATS = 3
SEED = 0

WORDS = (
    "the a cat dog sat on mat red ball mia tom has big small ran to park she he it and "
    "saw blue green box tree house happy sad went home was is with her his they then"
).split()


@dataclass
class Case:
    name: str
    build: Callable[[], torch.nn.Module]  # a transformers model, seeded, eval mode
    target: float  # ratio ours / transformers to reach


# --------------------------------------------------------------------------- the models


def _no_special() -> dict:
    return dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _gpt2(**kw):
    import transformers as T

    def build():
        return T.AutoModelForCausalLM.from_config(T.GPT2Config(**kw, **_no_special()))

    return build


def _llama():
    import transformers as T

    cfg = T.LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=2, vocab_size=2000, max_position_embeddings=512,
                        tie_word_embeddings=False, **_no_special())  # fmt: skip
    return T.AutoModelForCausalLM.from_config(cfg)


def _mixtral():
    import transformers as T

    cfg = T.MixtralConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=2000,
                          max_position_embeddings=512, tie_word_embeddings=False, **_no_special())  # fmt: skip
    return T.AutoModelForCausalLM.from_config(cfg)


def _mamba():
    import transformers as T

    cfg = T.MambaConfig(hidden_size=128, num_hidden_layers=6, state_size=16, expand=2, conv_kernel=4,
                        vocab_size=2000, **_no_special())  # fmt: skip
    return T.AutoModelForCausalLM.from_config(cfg)


CASES = [
    Case("tiny GPT-2 (128 wide, 4 layers)", _gpt2(n_embd=128, n_layer=4, n_head=4, vocab_size=1280, n_positions=512),
         1.5),
    Case("GPT-2 124M-sized (random)", _gpt2(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
         1.0),
    Case("Llama GQA (256 wide, 4 layers, 8q/2kv)", _llama, 1.5),
    Case("Mixtral MoE (128 wide, 4 layers, 4 experts top-2)", _mixtral, 1.5),
    Case("Mamba (128 wide, 6 layers, N=16)", _mamba, 1.5),
]  # fmt: skip


def _word_tokenizer():
    """A word-level tokenizer (fits any vocabulary here): ``models.load`` wants one in the folder."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _pair(case: Case, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """transformers' model for ``case`` (seeded), ours loaded from its saved folder, and the seeded
    prompt: (hf, ours, ids (1, PROMPT_LEN)), all on ``device``."""
    from transformers.utils import logging as hf_logging

    from archplay import models

    torch.manual_seed(SEED)
    hf = case.build().eval()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" would clutter the table
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "ckpt"
            hf.save_pretrained(folder)
            _word_tokenizer().save_pretrained(folder)
            ours, _ = models.load(folder, device=device)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    ours.eval()
    hf.to(device)
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, hf.config.vocab_size, (1, PROMPT_LEN), generator=gen).to(device)
    return hf, ours, ids


def _generators(hf, ours, ids) -> tuple[Callable[[int], torch.Tensor], Callable[[int], torch.Tensor]]:
    """(ours, transformers'): greedy ``generate`` of exactly n new tokens (end-of-sequence off on both)."""

    def run_ours(n: int) -> torch.Tensor:
        return ours.generate(ids, max_new_tokens=n, temperature=0.0, eos_token_id=None)

    def run_hf(n: int) -> torch.Tensor:
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip

    return run_ours, run_hf


def measure(case: Case, new_tokens: int, repeats: int, device: str = "cpu") -> dict:
    """Build, save, load, check and time one case -> its row for the table."""
    load_before = os.getloadavg()[0]
    device = torch.device(device)
    hf, ours, ids = _pair(case, device)
    gen_ours, gen_hf = _generators(hf, ours, ids)

    def run_ours():
        return gen_ours(new_tokens)

    def run_hf():
        return gen_hf(new_tokens)

    _, out_ours = _timed(run_ours, device)  # warm-up, and the tokens compared
    _, out_hf = _timed(run_hf, device)
    out_ours, out_hf = out_ours.cpu(), out_hf.cpu()
    t_ours, t_hf = [], []
    for _ in range(repeats):  # alternated, so background load falls on both
        t_ours.append(_timed(run_ours, device)[0])
        t_hf.append(_timed(run_hf, device)[0])

    n_ours = out_ours.shape[1] - PROMPT_LEN
    n_hf = out_hf.shape[1] - PROMPT_LEN
    same = out_ours.shape == out_hf.shape and torch.equal(out_ours, out_hf)
    first_diff = None
    if not same:
        a, b = out_ours[0, PROMPT_LEN:].tolist(), out_hf[0, PROMPT_LEN:].tolist()
        first_diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    tps_ours = n_ours / min(t_ours)
    tps_hf = n_hf / min(t_hf)
    ratio = tps_ours / tps_hf
    met = bool(same and ratio >= case.target)
    tokens = "same tokens" if same else f"TOKENS DIFFER from new token {first_diff}"
    return {
        "section": SECTION,
        "case": case.name,
        "measure": MEASURE,
        "value": f"{tps_ours:.0f} vs {tps_hf:.0f} tok/s ({ratio:.2f}×), {tokens}",
        "target": f"≥ {case.target:.1f}×",
        "met": met,
        "raw": {
            "ours_tok_s": tps_ours,
            "hf_tok_s": tps_hf,
            "ratio": ratio,
            "same_tokens": same,
            "first_differing_new_token": first_diff,
            "new_tokens": new_tokens,
            "new_tokens_ours": n_ours,
            "new_tokens_hf": n_hf,
            "ours_s": t_ours,
            "hf_s": t_hf,
            "ours_median_s": statistics.median(t_ours),
            "hf_median_s": statistics.median(t_hf),
            "params": sum(p.numel() for p in hf.parameters()),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
            "target_ratio": case.target,
        },
    }


def per_token_work(generate: Callable[[int], torch.Tensor], device: torch.device) -> dict:
    """What one more generated token costs in work launched, from the torch profiler: on the CPU the
    top-level aten operators, on CUDA the GPU kernels (and copies) and the host's stream syncs.
    ``generate(n)`` writes n new tokens; the count over 24 tokens less that over 8, divided by 16,
    leaves the prompt pass out."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def count(n: int) -> tuple[int, int]:
        with torch.inference_mode(), profile(activities=acts) as prof:
            generate(n)
            _sync(device)
        events = prof.events()
        if device.type == "cuda":
            work = sum(1 for e in events if e.device_type == DeviceType.CUDA)
        else:
            work = sum(1 for e in events if e.cpu_parent is None and e.name.startswith("aten::"))
        syncs = sum(1 for e in events if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize"))
        return work, syncs

    generate(8)  # warm
    (w8, s8), (w24, s24) = count(8), count(24)
    unit = "GPU kernels" if device.type == "cuda" else "aten ops"
    return {"unit": unit, "work": (w24 - w8) / 16, "syncs": (s24 - s8) / 16}


def work_counts(device: str = "cpu") -> list[dict]:
    """``per_token_work`` for ours and transformers', per case (``python -m bench.generation --work``)."""
    device = torch.device(device)
    out = []
    for case in CASES:
        run_ours, run_hf = _generators(*_pair(case, device))
        mine, theirs = per_token_work(run_ours, device), per_token_work(run_hf, device)
        out.append({"case": case.name, "unit": mine["unit"], "ours": mine, "transformers": theirs})
    return out


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    """One row per case. ``quick``: 16 new tokens and 1 timed run (for tests and development)."""
    new_tokens, repeats = (16, 1) if quick else (NEW_TOKENS, REPEATS)
    return [measure(case, new_tokens, repeats, device) for case in CASES]


def _table(rows: list[dict]) -> str:
    w = max(len(r["case"]) for r in rows)
    lines = [f"{'case':<{w}}  {'ours':>8}  {'hf':>8}  {'ratio':>6}  {'target':>7}  {'tokens':<6}  met"]
    for r in rows:
        x = r["raw"]
        lines.append(
            f"{r['case']:<{w}}  {x['ours_tok_s']:>8.0f}  {x['hf_tok_s']:>8.0f}  {x['ratio']:>5.2f}×  "
            f"{r['target']:>7}  {'same' if x['same_tokens'] else 'DIFFER':<6}  {'yes' if r['met'] else 'NO'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="16 new tokens, 1 timed run")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both run (default: cpu)")
    p.add_argument("--work", action="store_true",
                   help="instead of timing: the work one more token launches (aten ops; on CUDA kernels and syncs)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.work:
        rows = work_counts(args.device)
        print(f"per generated token, ours vs transformers ({rows[0]['unit']}; host syncs on CUDA)")
        for r in rows:
            a, b = r["ours"], r["transformers"]
            print(f"{r['case']:<52} {a['work']:>7.1f} vs {b['work']:>7.1f}   syncs {a['syncs']:.1f} vs {b['syncs']:.1f}")
        return
    rows = run(quick=args.quick, device=args.device)
    how = "QUICK: 16 new tokens, 1 timed run" if args.quick else MEASURE
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} · {where} · {how}")
    print(_table(rows))
    print("tok/s: new tokens over the whole generate call (prompt pass included), best of the timed runs")
    print("load average (1 min) before each case:", ", ".join(f"{r['raw']['load_avg_1min'][0]:.1f}" for r in rows))


if __name__ == "__main__":
    main()
