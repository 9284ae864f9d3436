"""``python -m bench``: every benchmark, one table, and the same rows as JSON.

    python -m bench [--quick] [--device cpu|cuda] [--only interactive page generation scaling startup load sessions starvation train estimate bigload]
                    [--json bench/results.json]

Each module measures its own side-by-side comparisons in one run (see its docstring) and
returns rows: section, case, measure, value, target, met. The table goes to stdout as
Markdown (the README's benchmark table is a copy of it); the JSON adds the raw numbers and
the machine it ran on. ``--device cuda`` runs the models (ours and transformers') on the GPU;
its table is reported separately from the CPU one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from bench.report import markdown

MODULES = ("interactive", "page", "generation", "scaling", "startup", "load", "sessions", "starvation", "train", "estimate",
           "bigload")


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    ap.add_argument("--only", nargs="+", choices=MODULES, default=list(MODULES))
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"))
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run (default: cpu)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("python -m bench: --device cuda was asked for, but torch sees no CUDA device")
    info = machine()
    print(f"machine: {info['cpu']} · {info['cores']} cores · torch {info['torch']} ({info['threads']} threads) · "
          f"Python {info['python']}" + (f" · {info['cuda']}" if info["cuda"] else ""), flush=True)  # fmt: skip
    rows, seconds = [], {}
    for name in args.only:
        t0 = time.perf_counter()
        print(f"running bench.{name}…", file=sys.stderr, flush=True)
        rows += importlib.import_module(f"bench.{name}").run(quick=args.quick, device=args.device)
        seconds[name] = round(time.perf_counter() - t0, 1)
    print(markdown(rows), flush=True)
    missed = [r for r in rows if r.get("met") is False]
    print(f"\n{len(rows)} rows, {len(missed)} targets missed; took " +
          ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))  # fmt: skip
    args.json.write_text(json.dumps({"machine": info, "device": args.device, "quick": args.quick, "seconds": seconds,
                                     "rows": rows},
                                    indent=1, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
