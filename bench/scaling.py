"""Forward latency and peak memory against input length: the decoder (gpt) next to the SSM (mamba).

    python -m bench.scaling [--quick] [--device cpu|cuda] [--json out.json]
    python -m bench.scaling --one MODEL LENGTH {on,off} [--repeats N]     (one case; prints JSON)

Every (model, length, trace) case runs in a fresh subprocess, batch 1, under ``torch.inference_mode``:

1. load the built-in (``models.load``); for the decoder beyond its context of 256 tokens, a
   ``archplay.models.analysis.timing.stretched_copy`` (same shapes, longer position table, random weights: the
   arithmetic, and so the cost, is the architecture's);
2. a tiny warm-up pass (8 tokens, same trace setting);
3. reset the peak-RSS counter (``/proc/self/clear_refs``), read VmRSS, run one pass at the full
   length, read the peak: **peak memory** is the rise of ``ru_maxrss`` over the RSS just before the
   pass. torch's CPU allocator returns big blocks to the OS, so tracemalloc cannot see them and a
   second case in the same process would reuse the first one's heap: hence a process per case;
4. that pass doubles as the latency warm-up; **latency** is the fastest of the repeats after it
   (the floor: on a shared machine the slower repeats measure the neighbours, not the model).

Trace on is costly: the decoder keeps (L, H, T, T) float32 attention maps (4 × 4 × 4096² × 4 B =
1 GiB at 4096 tokens, about 1.6 GB peak with the softmax's temporaries: measured, seconds per pass),
and Mamba's traced path runs the reference (sequential) scan, T Python steps per layer, plus the
(T, T) hidden attention per layer built from per-channel terms (O(T² · D_inner · N) work: about
1.8 s per layer at 1024 tokens, so some 25 s a pass at 2048 and 100 s at 4096). Mamba's trace on
is therefore measured up to ``TRACE_MAX`` tokens only (the app traces at most 512 tokens,
``archplay.app.tokens.PAGE_MAX_TOKENS``); the rows say so.

Threads: each case runs torch on one thread by default (``--threads``). On a shared 2-core machine
two threads collide with anyone else's work (OpenMP workers wait on a descheduled sibling: a
150 ms pass became 700 ms under load), and scaling is the architecture's, not the thread pool's.

On CUDA (``--device cuda``) every case runs in this process, each timed pass ends with a
``torch.cuda.synchronize``, and peak memory is the caching allocator's: the most allocated during
the pass above what was allocated before it (``torch.cuda.reset_peak_memory_stats``).

Target: the SSM's untraced forward is linear in length, each doubling from 512 tokens up costing at
most 2.2× the time. The decoder's doubling ratios are reported for contrast (no target).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.report import print_table

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("gpt", "mamba")
LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)
QUICK_LENGTHS = (64, 128, 256, 512)
TRACE_MAX = {"gpt": 4096, "mamba": 1024}  # trace on is measured up to these lengths (see the module doc)
THREADS = 1  # torch intra-op threads per case (0: torch's default); see the module doc
REPEATS, QUICK_REPEATS = 5, 1
CASE_SECONDS = 8.0  # stop repeating a case once its repeats have taken this long (at least one repeat)
WARMUP_TOKENS = 8
LINEAR_TARGET = 2.2  # the SSM's worst doubling ratio from 512 tokens up, trace off
CASE_TIMEOUT = 300  # seconds for one subprocess before it is abandoned


# --------------------------------------------------------------------------- one case (the subprocess)


def _status_kib(key: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: the peak since the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset the peak-RSS counter to the current RSS (Linux ≥ 4.0), so the next peak is this pass's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_one(name: str, length: int, trace: bool, repeats: int, threads: int = THREADS,
                device: str = "cpu") -> dict:  # fmt: skip
    """Peak memory rise and latency of one (model, length, trace) case; on the CPU meant for a fresh
    process (see the module doc). On CUDA the memory is the allocator's: the peak allocated during
    the pass above what was allocated before it (``torch.cuda.max_memory_allocated``)."""
    import gc
    import resource

    import torch

    from archplay.models import load, registry
    from archplay.models.analysis.timing import stretched_copy

    cuda = device == "cuda"
    if threads > 0 and not cuda:
        torch.set_num_threads(threads)
    maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731 (KiB on Linux)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, _ = load(name, device=device)
    context = int(getattr(model.config, "max_seq_len", 0) or 0)
    stretched = "scan" not in registry.of(model).views and length > context  # a scan has no position table: no limit
    if stretched:
        model = stretched_copy(model, length)
        gc.collect()
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)

    with torch.inference_mode():
        model(ids[:, :WARMUP_TOKENS], trace=trace)  # lazy initialisation: thread pools, kernels
        sync()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            reset, allocated_before = True, torch.cuda.memory_allocated()
            rss_before = maxrss_before = allocated_before // 1024
        else:
            reset = _reset_peak()
            rss_before, maxrss_before = _status_kib("VmRSS"), maxrss()
        t0 = time.perf_counter()
        out = model(ids, trace=trace)
        sync()
        first_ms = (time.perf_counter() - t0) * 1000
        if cuda:
            maxrss_after = hwm_after = torch.cuda.max_memory_allocated() // 1024
        else:
            maxrss_after, hwm_after = maxrss(), _status_kib("VmHWM")
        del out
        times = []
        spent = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model(ids, trace=trace)
            sync()
            dt = time.perf_counter() - t0
            del out
            times.append(dt * 1000)
            spent += dt
            if spent > CASE_SECONDS:
                break

    # ru_maxrss is max(the process's own peak, a peak inherited at exec from the parent): when the
    # reset left it above the current RSS, the inherited value hides this pass; VmHWM has only the own peak.
    own = reset and maxrss_before <= rss_before + 1024
    peak = maxrss_after if own else hwm_after
    source = "cuda max_memory_allocated" if cuda else ("ru_maxrss" if own else "VmHWM")
    return {
        "model": name, "length": length, "trace": trace, "stretched": stretched,
        "ms": min(times), "times_ms": [round(t, 3) for t in times], "first_ms": round(first_ms, 3),
        "rss_before_kib": rss_before, "peak_kib": peak, "rise_kib": max(0, peak - rss_before),
        "peak_source": source, "threads": torch.get_num_threads(), "device": device,
    }  # fmt: skip


def measure_here(name: str, length: int, trace: bool, repeats: int, device: str) -> dict:
    """``measure_one`` in this process (CUDA: the allocator's peak counter is per process and resettable)."""
    t0 = time.perf_counter()
    try:
        res = measure_one(name, length, trace, repeats, device=device)
    except Exception as e:  # noqa: BLE001 - out of memory, say: a finding, reported in the row
        import torch

        if device == "cuda":
            torch.cuda.empty_cache()
        return {"model": name, "length": length, "trace": trace, "error": f"{type(e).__name__}: {str(e)[:120]}"}
    res["case_s"] = round(time.perf_counter() - t0, 2)
    return res


def run_case(name: str, length: int, trace: bool, repeats: int, threads: int = THREADS) -> dict:
    """``measure_one`` in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "bench.scaling", "--one", name, str(length), "on" if trace else "off",
           "--repeats", str(repeats), "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"model": name, "length": length, "trace": trace, "error": f"timed out after {CASE_TIMEOUT} s"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"model": name, "length": length, "trace": trace, "error": f"exit {p.returncode}: {tail[0]}"}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["case_s"] = round(time.perf_counter() - t0, 2)
    return res


# --------------------------------------------------------------------------- the table


def doubling_ratios(ms: dict[int, float], start: int = 512) -> dict[str, float]:
    """time(2n) / time(n) for every measured n ≥ start whose double was measured too."""
    return {f"{n}→{2 * n}": ms[2 * n] / ms[n] for n in sorted(ms) if n >= start and 2 * n in ms}


def fitted_exponent(ms: dict[int, float], start: int = 512) -> float | None:
    """b of ms ≈ a · length^b, fitted in log-log over the points from ``start`` up (1: linear, 2: quadratic)."""
    pts = [(math.log(n), math.log(t)) for n, t in ms.items() if n >= start and t > 0]
    if len(pts) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms" if ms < 1000 else f"{ms / 1000:.3g} s"


def _fmt_mb(kib: int) -> str:
    mb = kib * 1024 / 1e6
    return f"+{mb:.0f} MB" if mb >= 10 else f"+{mb:.1f} MB"


def _rows_for(name: str, trace: bool, cases: list[dict], lengths: tuple[int, ...], capped: bool,
              threads: int = THREADS, load: tuple[float, float] | None = None,
              device: str = "cpu") -> list[dict]:  # fmt: skip
    family = {"gpt": "decoder", "mamba": "ssm"}[name]
    case = f"{name} ({family}), trace {'on' if trace else 'off'}"
    ok = [c for c in cases if "error" not in c]
    errors = {c["length"]: c["error"] for c in cases if "error" in c}
    ms = {c["length"]: c["ms"] for c in ok}
    rise = {c["length"]: c["rise_kib"] for c in ok}
    stretched = sorted(c["length"] for c in ok if c["stretched"])
    notes = []
    if stretched:
        notes.append(f"from {stretched[0]} a stretched copy (context 256)")
    if capped:
        notes.append(f"trace on measured up to {max(lengths)} only (its cost grows with T²; the app traces ≤ 512)")
    if errors:
        notes.append("failed: " + ", ".join(f"{n} ({e})" for n, e in errors.items()))
    note = ("; " + "; ".join(notes)) if notes else ""

    ratios = doubling_ratios(ms)
    worst = max(ratios.values()) if ratios else None
    exponent = fitted_exponent(ms)
    value = " · ".join(f"{n}: {_fmt_ms(ms[n])}" for n in sorted(ms))
    if ratios:
        value += "; doubling " + ", ".join(f"{k} {r:.2f}×" for k, r in ratios.items())
        value += f" (worst {worst:.2f}×); fitted exponent {exponent:.2f}"
    target, met = "", None
    if name == "mamba" and not trace:  # the claim under test: Mamba's untraced forward pass is linear
        target = f"each doubling from 512 tokens ≤ {LINEAR_TARGET}× (linear)"
        if worst is not None:
            met = worst <= LINEAR_TARGET if not errors else (False if worst > LINEAR_TARGET else None)
    n_threads = f"{threads} thread{'s' if threads != 1 else ''}" if threads > 0 else "torch's default threads"
    if device == "cuda":
        n_threads = "on the GPU, synchronised"
    most = max((len(c["times_ms"]) for c in ok), default=0)
    latency = {
        "section": "scaling", "case": case,
        "measure": f"forward latency, batch 1, {n_threads} (fastest of up to {most} passes after a warm-up)",
        "value": value + note, "target": target, "met": met,
        "raw": {"ms": ms, "doubling": ratios, "worst_doubling": worst, "fitted_exponent": exponent,
                "stretched_lengths": stretched,
                "times_ms": {c["length"]: c["times_ms"] for c in ok}, "errors": errors,
                "threads": threads, "loadavg_1min_before_after": load,
                "case_seconds": {c["length"]: c.get("case_s") for c in ok}},
    }  # fmt: skip
    memory = {
        "section": "scaling", "case": case,
        "measure": "peak GPU memory allocated during one forward, above what was allocated before" if device == "cuda"
        else "peak memory rise during one forward (ru_maxrss − RSS before)",
        "value": " · ".join(f"{n}: {_fmt_mb(rise[n])}" for n in sorted(rise)) + note, "target": "", "met": None,
        "raw": {"rise_kib": rise, "rss_before_kib": {c["length"]: c["rss_before_kib"] for c in ok},
                "peak_source": sorted({c["peak_source"] for c in ok})},
    }  # fmt: skip
    return [latency, memory]


def run(quick: bool = False, threads: int = THREADS, device: str = "cpu") -> list[dict]:
    """Rows for every model × trace setting. On the CPU a subprocess per case; on CUDA all in this process."""
    lengths = QUICK_LENGTHS if quick else LENGTHS
    repeats = QUICK_REPEATS if quick else REPEATS
    rows = []
    for name in MODELS:
        for trace in (False, True):
            ls = tuple(n for n in lengths if not trace or n <= TRACE_MAX[name])
            load_before = os.getloadavg()[0]
            if device == "cuda":
                cases = [measure_here(name, n, trace, repeats, device) for n in ls]
            else:
                cases = [run_case(name, n, trace, repeats, threads) for n in ls]
            load = (round(load_before, 2), round(os.getloadavg()[0], 2))
            rows += _rows_for(name, trace, cases, ls, capped=len(ls) < len(lengths), threads=threads, load=load,
                              device=device)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"lengths up to {QUICK_LENGTHS[-1]}, one repeat")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "LENGTH", "TRACE"), help="measure one case (internal)")
    p.add_argument("--repeats", type=int, default=REPEATS)
    p.add_argument("--threads", type=int, default=THREADS,
                   help=f"torch threads per case (default {THREADS}; 0: torch's default)")  # fmt: skip
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run (default: cpu)")
    args = p.parse_args(argv)
    if args.one:
        name, length, trace = args.one
        print(json.dumps(measure_one(name, int(length), trace == "on", args.repeats, args.threads)))
        return
    t0 = time.perf_counter()
    rows = run(quick=args.quick, threads=args.threads, device=args.device)
    print_table(rows)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
