"""App start-up: seconds to the first HTTP 200, and the server's memory with every built-in loaded.

    python -m bench.startup [--quick] [--runs N] [--device cpu|cuda] [--json out.json]

Each run starts ``python -m archplay --port <free> --host 127.0.0.1 --device cpu`` (all five built-ins;
``--device cuda`` starts it on the GPU and adds the GPU memory ``nvidia-smi`` reports for it),
polls ``/`` with urllib until it answers 200, then reads the resident memory (VmRSS from
/proc/<pid>/status) of the server and any processes it started, and stops it (terminate, then
kill). The server's own output is timestamped as it arrives, so a slow start can be split into
"models loaded" and "Gradio serving". For context, the time of ``python -c "import torch, gradio"``
(the floor under any start-up) and of a bare ``python -c pass``.

Targets (a 2-core machine): ≤ 12 s to the first 200; ≤ 1.5 GB resident.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.report import descendants, free_port, print_table, stop

ROOT = Path(__file__).resolve().parents[1]

RUNS, QUICK_RUNS = 2, 1
READY_TARGET_S = 12.0
MEMORY_TARGET_BYTES = 1.5e9
READY_TIMEOUT_S = 180.0
POLL_S = 0.1
SETTLE_S = 1.0  # after the first 200, before reading memory: the first page load's allocations land


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _status_kib(pid: int, key: str) -> int:
    """A KiB field of /proc/<pid>/status (0 if the process is gone or the field absent)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def gpu_memory_bytes(pids: list[int]) -> int | None:
    """GPU memory the processes ``pids`` hold, as ``nvidia-smi`` reports it (None where it cannot say)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    used = {}
    for line in out.strip().splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().isdigit():
            used[int(pid)] = int(mib) * 2**20
    return sum(used.get(p, 0) for p in pids) if used else None


def start_once(device: str = "cpu") -> dict:
    """One cold start of the app: seconds to the first 200 on /, then memory; the server is stopped after."""
    port = free_port()
    cmd = [sys.executable, "-m", "archplay", "--port", str(port), "--host", "127.0.0.1", "--device", device]
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, bufsize=1)  # fmt: skip

    def read() -> None:  # timestamp the server's output as it arrives (also keeps the pipe from filling)
        for line in proc.stdout:
            lines.append((round(time.perf_counter() - t0, 2), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}/"
    ready_s, error = None, None
    try:
        while True:
            if _get(url) == 200:
                ready_s = time.perf_counter() - t0
                break
            if proc.poll() is not None:
                error = f"the server exited with {proc.returncode} before answering"
                break
            if time.perf_counter() - t0 > READY_TIMEOUT_S:
                error = f"no HTTP 200 within {READY_TIMEOUT_S:.0f} s"
                break
            time.sleep(POLL_S)
        rss_kib = hwm_kib = 0
        gpu_bytes = None
        kids: list[int] = []
        if ready_s is not None:
            time.sleep(SETTLE_S)
            kids = descendants(proc.pid)
            rss_kib = sum(_status_kib(p, "VmRSS") for p in [proc.pid, *kids])
            hwm_kib = _status_kib(proc.pid, "VmHWM")
            if device == "cuda":
                gpu_bytes = gpu_memory_bytes([proc.pid, *kids])
    finally:
        stop(proc)
        reader.join(timeout=5)

    def first(text: str) -> float | None:
        return next((t for t, line in lines if text in line), None)

    return {
        "ready_s": None if ready_s is None else round(ready_s, 2), "error": error, "port": port,
        "rss_bytes": rss_kib * 1024, "server_peak_bytes": hwm_kib * 1024, "children": len(kids),
        "gpu_bytes": gpu_bytes,
        "models_loaded_s": first("archplay: offering"),  # the first model announced: all are loaded by then
        "serving_line_s": first("archplay: serving on"),
        "log_tail": [line for _, line in lines[-8:]],
    }  # fmt: skip


def time_command(code: str) -> float:
    """Wall seconds of ``python -c code`` in a fresh interpreter."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), check=True, capture_output=True)
    return time.perf_counter() - t0


def _fmt_s(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.1f} s (runs: {', '.join(f'{x:.1f}' for x in xs)})"


def _fmt_bytes(xs: list[int]) -> str:
    return f"median {statistics.median(xs) / 1e6:.0f} MB (runs: {', '.join(f'{x / 1e6:.0f}' for x in xs)})"


def run(quick: bool = False, runs: int | None = None, device: str = "cpu") -> list[dict]:
    runs = runs or (QUICK_RUNS if quick else RUNS)
    load = [round(os.getloadavg()[0], 2)]
    starts = [start_once(device) for _ in range(runs)]
    load.append(round(os.getloadavg()[0], 2))
    imports = [time_command("import torch, gradio") for _ in range(runs)]
    bare = [time_command("pass") for _ in range(runs)]

    ok = [s for s in starts if s["ready_s"] is not None]
    errors = [s["error"] + " — " + " | ".join(s["log_tail"][-3:]) for s in starts if s["ready_s"] is None]
    note = ("; failed: " + "; ".join(errors)) if errors else ""
    case = f"python -m archplay --device {device} (5 built-ins)"
    ready = [s["ready_s"] for s in ok]
    rss = [s["rss_bytes"] for s in ok]
    phases = [
        f"models loaded by {s['models_loaded_s']:.1f} s" for s in ok[:1] if s["models_loaded_s"] is not None
    ]  # fmt: skip
    gpu = [s["gpu_bytes"] for s in ok if s.get("gpu_bytes") is not None]
    on_gpu = f"; on the GPU {_fmt_bytes(gpu)} (nvidia-smi)" if gpu else ""
    rows = [
        {
            "section": "startup", "case": case, "measure": "seconds from launch to the first HTTP 200 on /",
            "value": (_fmt_s(ready) + (f" ({phases[0]})" if phases else "") if ready else "no start") + note,
            "target": f"≤ {READY_TARGET_S:.0f} s (2-core machine)",
            "met": (max(ready) <= READY_TARGET_S and not errors) if ready else False,
            "raw": {"ready_s": ready, "runs": starts, "loadavg_1min_before_after": load},
        },
        {
            "section": "startup", "case": case,
            "measure": "server resident memory after the first 200 (VmRSS, incl. child processes)",
            "value": (_fmt_bytes(rss) + on_gpu if rss else "no start") + note,
            "target": f"≤ {MEMORY_TARGET_BYTES / 1e9:.1f} GB",
            "met": (max(rss) <= MEMORY_TARGET_BYTES and not errors) if rss else False,
            "raw": {"rss_bytes": rss, "server_peak_bytes": [s["server_peak_bytes"] for s in ok],
                    "children": [s["children"] for s in ok], "gpu_bytes": gpu},
        },
        {
            "section": "startup", "case": 'python -c "import torch, gradio"',
            "measure": "seconds (the floor under start-up; a bare python -c pass for scale)",
            "value": _fmt_s(imports) + f"; bare interpreter {statistics.median(bare):.2f} s",
            "target": "", "met": None,
            "raw": {"import_s": [round(x, 3) for x in imports], "bare_python_s": [round(x, 3) for x in bare]},
        },
    ]  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one start-up run")
    p.add_argument("--runs", type=int, default=None, help=f"start-up runs (default {RUNS}; quick {QUICK_RUNS})")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the app's --device (default: cpu)")
    args = p.parse_args(argv)
    rows = run(quick=args.quick, runs=args.runs, device=args.device)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
