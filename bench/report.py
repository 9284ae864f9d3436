"""One table for every benchmark row: section, case, measure, value, target, met."""

from __future__ import annotations


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
