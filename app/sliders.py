"""Slider values against a Run's ranges (layers, heads, positions, steps, MoE layers).

A redraw asked for a value out of range (possible through the API) gets a ValueError naming the
slider, which the page shows as an error; a new Run instead clamps the sliders into its range, so
they keep their place where they can.
"""

from __future__ import annotations


def check(value, count: int, name: str) -> int:
    """``value`` as an index into ``count`` things, or ValueError: "layer must be between 0 and 3, got 7"."""
    value = int(value)
    if not 0 <= value < count:
        raise ValueError(f"{name} must be between 0 and {count - 1}, got {value}")
    return value


def clamp(value, count: int) -> int:
    """``value`` moved into 0..count-1 (0 when there is nothing to choose)."""
    return min(max(int(value), 0), max(count - 1, 0))
