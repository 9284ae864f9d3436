"""The CUDA path of the built-in models, checked against the CPU and timed (run on a GPU machine).

    python -m bench.device_check [--lengths 64 128 ...] [--json out.json]

For each built-in: the largest difference between CUDA and CPU logits on a story, whether greedy
generation writes the same tokens on both, and the untraced forward latency on the GPU against
input length (``archplay.models.analysis.timing``; beyond a model's context, a same-shaped copy). Needs no gradio
or plotly, so it runs on a bare PyTorch image.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from archplay.models import BUILTIN_NAMES, load, registry
from archplay.models.analysis.timing import forward_latency, growth

TEXT = "Mia finds a big red ball. She throws the ball to Tom. Then Tom"


@torch.inference_mode()
def check(name: str, lengths: list[int]) -> dict:
    cpu, tok = load(name, device="cpu")
    gpu, _ = load(name, device="cuda")
    ids = torch.tensor([tok.encode(TEXT)])
    kwargs = {}
    family = registry.of(cpu)
    if family.objective == "translation":
        start = int(cpu.config.decoder_start_token_id)
        kwargs["decoder_input_ids"] = torch.tensor([[start] + tok.encode("Mia")])
    ref = cpu(ids, trace=True, **kwargs)
    out = gpu(ids.cuda(), trace=True, **{k: v.cuda() for k, v in kwargs.items()})
    diff = float((out.logits.float().cpu() - ref.logits).abs().max())
    same_tokens = None
    if family.generates:
        a = cpu.generate(ids, max_new_tokens=32, temperature=0.0)
        b = gpu.generate(ids.cuda(), max_new_tokens=32, temperature=0.0).cpu()
        same_tokens = bool(torch.equal(a, b))
    timings = forward_latency(gpu, lengths, repeats=5)
    return {"name": name, "family": family.name, "max_logit_diff": diff, "greedy_tokens_equal": same_tokens,
            "latency_ms": {t.length: round(t.ms, 3) for t in timings},
            "stretched_from": min((t.length for t in timings if t.stretched), default=None),
            "growth_from_512": growth(timings)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run this on a GPU machine")
    print(f"device: {torch.cuda.get_device_name()} · torch {torch.__version__}")
    rows = [check(name, args.lengths) for name in BUILTIN_NAMES]
    head = f"{'model':<7}{'family':<17}{'max |Δlogit|':>13}{'greedy same':>12}  " + "".join(
        f"{n:>8}" for n in args.lengths) + "   growth"  # fmt: skip
    print(head)
    for r in rows:
        ms = "".join(f"{r['latency_ms'][n]:>8.2f}" for n in args.lengths)
        g = f"{r['growth_from_512']:.2f}" if r["growth_from_512"] is not None else "-"
        print(f"{r['name']:<7}{r['family']:<17}{r['max_logit_diff']:>13.2e}{str(r['greedy_tokens_equal']):>12}  {ms}   {g}")
    print("latency: ms per untraced forward pass at each input length (median of 5)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
