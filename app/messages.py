"""Status lines for the page: markdown-safe text and the ✓ ℹ ⚠ ✕ prefixes every handler uses."""

from __future__ import annotations

import html
import re

_MD_SPECIAL = re.compile(r"([\\`*|~\[\]])")
_AUTOLINK = re.compile(r"(?i):(?=//)|(?<=\bwww)\.|@")  # what GitHub-flavoured markdown turns into a live link


def md_escape(text: str) -> str:
    """``text`` shown literally inside one markdown line: HTML escaped; emphasis, code, table and
    link marks backslashed (so ``![i](http://…)`` from a token piece or a folder name is neither an
    image nor a link), and a bare ``http://``, ``www.`` or ``@`` broken so nothing is auto-linked."""
    text = _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))
    return _AUTOLINK.sub(lambda m: "\\" + m.group(0), text)


# Plain text symbols (no emoji presentation), so they render with ordinary fonts.
OK, NOTE, WARN, ERROR = "✓", "ℹ", "⚠", "✕"


def ok(text: str) -> str:
    return f"{OK} {text}"


def note(text: str) -> str:
    return f"{NOTE} {text}"


def warn(text: str) -> str:
    return f"{WARN} {text}"


def error(text: str) -> str:
    return f"{ERROR} **Problem:** {text}"


def quote(label: str) -> str:
    """A token label in curly quotes, markdown-safe."""
    return f"‘{md_escape(label)}’"


def short(label: str, limit: int = 16) -> str:
    """``label`` cut to ``limit`` characters with an ellipsis."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def plural(n: int, word: str) -> str:
    """``3 tokens``, ``1 token``."""
    return f"{n} {word}{'s' if n != 1 else ''}"
