"""What every benchmark shares: the table of rows (section, case, measure, value, target, met),
percentiles, and a free loopback port."""

from __future__ import annotations

import socket
import statistics


def percentiles(ms: list[float]) -> tuple[float, float]:
    """(p50, p95) of a list of milliseconds (nearest-rank p95)."""
    s = sorted(ms)
    return statistics.median(s), s[min(len(s) - 1, max(0, round(0.95 * len(s)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
