"""Risk limits shared by every strategy. The parts that depend only on what is known before the open are
applied here to the weights; the path-dependent ones (stop-loss, VaR limit) run inside the backtest.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.config import Risk, check_section


def check_risk(risk: dict) -> dict:
    """Validate the ``risk`` config against its schema (``engine.config.Risk``); return it. Each limit is a
    positive number, or null (or absent) to disable it.

    >>> check_risk({"stop_loss": 0.1, "var_limit": None})
    """
    check_section(Risk, {**dict.fromkeys(Risk.model_fields), **risk}, "risk")
    return risk


def apply_risk(weights: pd.Series, features: pd.DataFrame, risk: dict) -> pd.Series:
    """Weights after volatility targeting, the per-instrument cap and the gross-exposure cap (NaN = hold stays).

    Volatility targeting scales each instrument's weight by ``target_volatility / volatility_20`` (its
    trailing annualised volatility, from the pre-open ``features`` of ``engine.features``), capped at
    ``max_leverage``; without a volatility estimate yet the weight is left unscaled.

    >>> apply_risk(weights, features, {"max_position": 0.5, "target_volatility": 0.15, "max_leverage": 1.0})
    """
    check_risk(risk)
    out = weights.astype("float64").copy()
    if risk.get("target_volatility") is not None:
        volatility = features["volatility_20"].to_numpy(dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.minimum(risk["target_volatility"] / volatility, risk.get("max_leverage") or 1.0)
        scale = np.where(np.isfinite(scale), scale, 1.0)
        out = out * scale
    if risk.get("max_position") is not None:
        out = out.clip(-risk["max_position"], risk["max_position"])
    if risk.get("max_gross_exposure") is not None:
        gross = out.abs().groupby(level="session").transform("sum")
        shrink = np.where(gross > risk["max_gross_exposure"], risk["max_gross_exposure"] / gross, 1.0)
        out = out * shrink
    return out.rename("weight")
