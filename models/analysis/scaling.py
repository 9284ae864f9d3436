"""Scaling experiments: fit a power law to final losses against size or compute.

The story world knows its irreducible loss exactly (the entropy floor), so the fit needs no third
free parameter for it: ``L(x) = floor + a · x^(−α)`` is a straight line in log-log space of the
excess loss ``L − floor`` against ``x``, fitted by least squares there (as Kaplan et al. 2020 fit
``L(N)``; Hoffmann et al. 2022 fit the irreducible term too, which here is given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def fit_power_law(xs: Sequence[float], losses: Sequence[float], floor: float = 0.0) -> dict:
    """{"a", "alpha", "floor", "r2"} of ``L = floor + a · x^(−α)`` through the points.

    Needs at least two points with distinct positive ``x`` and a loss above ``floor``; a ValueError
    says which condition failed. ``r2`` is the fit's R² in log space (1 for points exactly on a law).
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64) - float(floor)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need one loss per x, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or np.unique(x[ok]).size < 2:
        raise ValueError("a power law needs at least two runs of different sizes whose loss is above the floor")
    lx, ly = np.log(x[ok]), np.log(y[ok])
    slope, intercept = np.polyfit(lx, ly, 1)
    pred = intercept + slope * lx
    ss_res, ss_tot = float(((ly - pred) ** 2).sum()), float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"a": math.exp(intercept), "alpha": -float(slope), "floor": float(floor), "r2": r2}


def predict(fit: dict, x: float) -> float:
    """The fitted law's loss at ``x``."""
    return fit["floor"] + fit["a"] * float(x) ** (-fit["alpha"])


__all__ = ["fit_power_law", "predict"]
