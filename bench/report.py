"""What every benchmark shares: the table of rows (section, case, measure, value, target, met),
percentiles, a free loopback port, and stopping a server process with whatever it started."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess


def percentiles(ms: list[float]) -> tuple[float, float]:
    """(p50, p95) of a list of milliseconds (nearest-rank p95)."""
    s = sorted(ms)
    return statistics.median(s), s[min(len(s) - 1, max(0, round(0.95 * len(s)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every living process under ``pid`` (children, grandchildren, …), from /proc/*/stat."""
    parent = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, …
        parent[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        frontier += kids
    return found


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server (and anything it started), then kill what is left."""
    if proc.poll() is not None:
        return
    kids = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for pid in kids:  # processes the server started, by their ids
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def mark(met) -> str:
    return "yes" if met is True else ("**no**" if met is False else "")


def markdown(rows: list[dict]) -> str:
    lines = ["| section | case | measure | value | target | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["section"], r["case"], r["measure"], r["value"], r.get("target") or "", mark(r.get("met"))]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def print_table(rows: list[dict]) -> None:
    print(markdown(rows), flush=True)
