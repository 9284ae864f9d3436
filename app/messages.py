"""Status lines for the page: markdown-safe text and the ✓ ℹ ⚠ ✕ prefixes every handler uses."""

from __future__ import annotations

import html
import re

_MD_SPECIAL = re.compile(r"([\\`*|~])")


def md_escape(text: str) -> str:
    """``text`` shown literally inside one markdown line: HTML escaped, emphasis and code marks
    backslashed. (Mid-line brackets, parentheses and intraword underscores are literal already.)"""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


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
