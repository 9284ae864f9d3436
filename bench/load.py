"""A classroom on one server: many browser sessions at once, each seeing only its own work.

Starts ``python -m archplay`` on loopback, then ``sessions`` clients (each a ``gradio_client``
session, in its own thread) each send ``requests`` mixed requests: a Run (/analyse), redraws
(/distribution, /position), samples (/sample_many), generation (/generate) and comparisons
(/compare). Every session uses its own text, whose last token and length no other session
shares, and checks that each answer is about that text: a redraw's title names its own last
token at its own position, a generation continues its own text. Records errors, cross-talk,
p50 / p95 latency per kind of request, and the server's resident memory before and after.

    python -m bench.load [--sessions 32] [--requests 25] [--device cpu|cuda]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from archplay.models import story
from bench.report import free_port, percentiles, stop

ROOT = Path(__file__).resolve().parents[1]
PATTERN = ["distribution", "position", "sample_many", "distribution", "generate", "distribution", "compare",
           "distribution"]  # fmt: skip


def session_texts(n: int) -> list[str]:
    """``n`` texts whose (last word, length) pairs are all different: a name ends each, and the
    i-th repeats its opening sentence i // names + 1 times."""
    names = [w for w in story.FEMALE + story.MALE]
    return [" ".join(["Mia has a red ball."] * (i // len(names) + 1)) + f" Then {names[i % len(names)]}"
            for i in range(n)]  # fmt: skip


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(device: str = "cpu", *extra: str, cwd: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """``python -m archplay`` on a free loopback port (plus ``extra`` arguments), run from ``cwd`` (the
    ``archplay`` it imports) -> (process, URL), once it answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "archplay", "--port", str(port), "--device", device, *extra], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the app did not start within 120 s")


def one_session(url: str, text: str, requests: int, out: dict, lock: threading.Lock) -> None:
    from gradio_client import Client

    times, errors, crosstalk = defaultdict(list), [], []

    def call(kind: str, *args, api: str | None = None):
        t0 = time.perf_counter()
        try:
            result = client.predict(*args, api_name=f"/{api or kind}")
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            errors.append(f"{kind}: {type(e).__name__}: {e}")
            return None
        times[kind].append((time.perf_counter() - t0) * 1000)
        return result

    client = Client(url, verbose=False)
    status, tokens, *_ = call("analyse", "gpt", text, 0, 0, 1.0, 0, 1.0) or ("", "")
    found = re.search(r'aria-label="(\d+) tokens"', tokens or "")
    n = int(found.group(1)) if found else 0
    last = text.split()[-1]
    for i in range(requests - 1):
        kind = PATTERN[i % len(PATTERN)]
        if kind == "distribution":
            r = call(kind, 0.7, 0, 0.9)
            title = json.loads(r[0]["plot"])["layout"]["title"]["text"] if r and r[0] else ""
            pos = n - 1 if i < PATTERN.index("position") else 2
            if r and not (f"(position {pos})" in title and (pos != n - 1 or last in title)):
                crosstalk.append(f"{kind}: {title[:80]}")
        elif kind == "position":
            r = call(kind, 2, 0.7, 0, 0.9)
            title = json.loads(r[0]["plot"])["layout"]["title"]["text"] if r and r[0] else ""
            if r and "(position 2)" not in title:
                crosstalk.append(f"{kind}: {title[:80]}")
        elif kind == "sample_many":
            r = call(kind, 0.7, 0, 0.9, 0, i)
            title = json.loads(r[0]["plot"])["layout"]["title"]["text"] if r and r[0] else ""
            if r and "at position 2" not in title:
                crosstalk.append(f"{kind}: {title[:80]}")
        elif kind == "generate":
            r = call(kind, "gpt", text, 8, 0.0, 0, 1.0, 0)
            if r and not r[0].startswith(text):
                crosstalk.append(f"{kind}: {r[0][:80]}")
        elif kind == "compare":
            r = call(kind, ["gpt", "mamba"], text)
            if r and not r[0].startswith("✓"):
                errors.append(f"{kind}: {r[0][:80]}")
    with lock:
        for k, v in times.items():
            out["times"][k] += v
        out["errors"] += errors
        out["crosstalk"] += crosstalk


def run_load(sessions: int = 32, requests: int = 25, device: str = "cpu") -> dict:
    proc, url = start_server(device)
    try:
        from gradio_client import Client

        warm = Client(url, verbose=False)  # one Run of each kind first, so start-up costs are not counted
        warm.predict("gpt", "Mia has a red ball.", 0, 0, 1.0, 0, 1.0, api_name="/analyse")
        warm.predict(["gpt", "mamba"], "Mia has a red ball.", api_name="/compare")
        time.sleep(1)
        before = rss_mb(proc.pid)
        out = {"times": defaultdict(list), "errors": [], "crosstalk": []}
        lock = threading.Lock()
        threads = [threading.Thread(target=one_session, args=(url, t, requests, out, lock))
                   for t in session_texts(sessions)]  # fmt: skip
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        peak = rss_mb(proc.pid)
        time.sleep(3)
        after = rss_mb(proc.pid)
    finally:
        stop(proc)
    lat = {}
    for k, v in out["times"].items():
        p50, p95 = percentiles(v)
        lat[k] = {"n": len(v), "p50": p50, "p95": p95}
    return {"sessions": sessions, "requests": requests, "wall_s": wall, "errors": out["errors"],
            "crosstalk": out["crosstalk"], "latency_ms": lat, "rss_before_mb": before, "rss_peak_mb": peak,
            "rss_after_mb": after}  # fmt: skip


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    r = run_load(8 if quick else 32, 10 if quick else 25, device)
    done = sum(v["n"] for v in r["latency_ms"].values())
    ok = not r["errors"] and not r["crosstalk"]
    rows = [dict(section="load", case=f"{r['sessions']} sessions × {r['requests']} requests",
                 measure="errors, cross-talk, wall time",
                 value=f"{len(r['errors'])} errors, {len(r['crosstalk'])} cross-talk in {done} answers; "
                       f"{r['wall_s']:.0f} s", target="0 errors, 0 cross-talk", met=ok, raw=r)]  # fmt: skip
    grown = r["rss_after_mb"] - r["rss_before_mb"]
    rows.append(dict(section="load", case="server memory", measure="resident: before / peak / 3 s after",
                     value=f"{r['rss_before_mb']:.0f} / {r['rss_peak_mb']:.0f} / {r['rss_after_mb']:.0f} MB",
                     target="after ≤ before + 200 MB", met=grown <= 200, raw={"grown_mb": grown}))  # fmt: skip
    parts = [f"{k} {v['p50']:.0f} / {v['p95']:.0f}" for k, v in sorted(r["latency_ms"].items())]
    rows.append(dict(section="load", case="latency under load", measure="p50 / p95 ms per request kind",
                     value="; ".join(parts), target="", met=None, raw=r["latency_ms"]))  # fmt: skip
    return rows


if __name__ == "__main__":
    import argparse

    from bench.report import print_table

    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    a = ap.parse_args()
    if a.quick:
        print_table(run(True, a.device))
    else:
        res = run_load(a.sessions, a.requests, a.device)
        print(json.dumps({k: v for k, v in res.items() if k != "latency_ms"}, indent=1, default=str))
        print(json.dumps(res["latency_ms"], indent=1))
