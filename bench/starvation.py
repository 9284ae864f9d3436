"""One hostile client against a classroom: can it lock the others out?

Starts ``python -m archplay`` on loopback. Visitors (``gradio_client`` sessions, one thread each)
do what a class does: a Run (/analyse) now and then, and slider redraws (/distribution) in
between. Meanwhile an attacker joins the most expensive event (/latency, every built-in, up to
2,048 tokens) over and over through the raw queue API, under a fresh session name each time,
and never reads a result. Measured side by side in one run: the visitors' refusals ("busy")
and p50 / p95 latency per kind, with no attacker and then under attack, and how many of the
attacker's joins the server took. The attack stops by itself after ``seconds``.

    python -m bench.starvation [--visitors 8] [--seconds 30]
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict

from bench.load import start_server
from bench.report import percentiles, stop

TEXT = "Mia finds a big red ball. She throws the ball to Tom. Then Tom"


def _join(url: str, fn_index: int, data: list, session: str) -> int:
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                       "trigger_id": None}).encode()  # fmt: skip
    req = urllib.request.Request(url + "gradio_api/queue/join", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _attack(url: str, fn_index: int, until: float, counts: dict) -> None:
    while time.monotonic() < until:
        status = _join(url, fn_index, [["gpt", "bert", "t5", "moe", "mamba"]], uuid.uuid4().hex)
        counts["accepted" if status == 200 else "refused"] += 1
        time.sleep(0.05)


def _visitor(url: str, until: float, out: dict, lock: threading.Lock) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    times, refused = defaultdict(list), defaultdict(int)
    i = 0
    while time.monotonic() < until:
        kind = "analyse" if i % 5 == 0 else "distribution"
        args = ("gpt", TEXT) if kind == "analyse" else (0.5 + (i % 10) / 10, 0, 1.0)
        t0 = time.perf_counter()
        try:
            client.predict(*args, api_name=f"/{kind}")
            times[kind].append((time.perf_counter() - t0) * 1000)
        except Exception as e:  # noqa: BLE001 - a refusal or failure is the finding
            refused[kind] += 1
            out["messages"].add(f"{type(e).__name__}: {str(e)[:120]}")
        i += 1
    with lock:
        for k, v in times.items():
            out["times"][k] += v
        for k, n in refused.items():
            out["refused"][k] += n


def _phase(url: str, ids: dict, visitors: int, seconds: float, attack: bool) -> dict:
    until = time.monotonic() + seconds
    out = {"times": defaultdict(list), "refused": defaultdict(int), "messages": set()}
    counts: dict = defaultdict(int)
    lock = threading.Lock()
    threads = [threading.Thread(target=_visitor, args=(url, until, out, lock)) for _ in range(visitors)]
    if attack:
        threads.append(threading.Thread(target=_attack, args=(url, ids["latency"], until, counts)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = {k: dict(zip(("p50", "p95"), percentiles(v)), n=len(v)) for k, v in out["times"].items()}
    return {"latency_ms": lat, "refused": dict(out["refused"]), "messages": sorted(out["messages"])[:5],
            "attacker": dict(counts)}  # fmt: skip


def run_starvation(visitors: int = 8, seconds: float = 30.0, device: str = "cpu") -> dict:
    proc, url = start_server(device)
    try:
        with urllib.request.urlopen(url + "config", timeout=10) as r:
            ids = {d.get("api_name"): d["id"] for d in json.load(r)["dependencies"] if d.get("api_name")}
        calm = _phase(url, ids, visitors, seconds, attack=False)
        attacked = _phase(url, ids, visitors, seconds, attack=True)
    finally:
        stop(proc)
    return {"visitors": visitors, "seconds": seconds, "calm": calm, "attacked": attacked}


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    return rows(run_starvation(4 if quick else 8, 10.0 if quick else 30.0, device))


def rows(r: dict) -> list[dict]:
    case = f"{r['visitors']} visitors, {r['seconds']:.0f} s each phase"
    out = []
    for phase in ("calm", "attacked"):
        p = r[phase]
        refused = sum(p["refused"].values())
        answered = sum(v["n"] for v in p["latency_ms"].values())
        lat = "; ".join(f"{k} {v['p50']:.0f} / {v['p95']:.0f} ms" for k, v in sorted(p["latency_ms"].items()))
        attacker = (f"; the attacker's joins: {p['attacker'].get('accepted', 0)} taken, "
                    f"{p['attacker'].get('refused', 0)} refused") if phase == "attacked" else ""  # fmt: skip
        out.append(dict(section="starvation", case=f"{case}, {'under attack' if phase == 'attacked' else 'no attack'}",
                         measure="visitors' requests refused; p50 / p95 per kind",
                         value=f"{refused} refused of {refused + answered}; {lat}{attacker}",
                         target="0 refused", met=refused == 0, raw=p))  # fmt: skip
    return out


if __name__ == "__main__":
    import argparse

    from bench.report import print_table

    ap = argparse.ArgumentParser(prog="python -m bench.starvation", description=__doc__.split("\n")[0])
    ap.add_argument("--visitors", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    r = run_starvation(args.visitors, args.seconds, args.device)
    print_table(rows(r))
    print(json.dumps(r, indent=2, default=str))
