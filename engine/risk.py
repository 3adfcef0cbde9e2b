"""Risk limits shared by every strategy. The parts that depend only on what is known before the open are
applied here to the weights; the path-dependent ones (stop-loss, VaR limit) run inside the backtest.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.errors import ConfigError

RISK_KEYS = ("max_position", "max_gross_exposure", "target_volatility", "max_leverage", "stop_loss", "var_limit",
             "var_window_sessions")


def check_risk(risk: dict) -> dict:
    """Validate the ``risk`` config; return it. Each limit is a positive number, or null to disable it."""
    unknown = sorted(set(risk) - set(RISK_KEYS))
    if unknown:
        raise ConfigError(f"risk.{unknown[0]}: unknown key (known: {', '.join(RISK_KEYS)})")
    for key in RISK_KEYS:
        value = risk.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"risk.{key}: must be a positive number or null, got {value!r}")
    if risk.get("stop_loss") is not None and risk["stop_loss"] >= 1:
        raise ConfigError(f"risk.stop_loss: a fraction below 1, got {risk['stop_loss']!r}")
    if risk.get("var_window_sessions") is not None and int(risk["var_window_sessions"]) < 10:
        raise ConfigError(f"risk.var_window_sessions: at least 10 sessions, got {risk['var_window_sessions']!r}")
    return risk


def apply_risk(weights: pd.Series, features: pd.DataFrame, risk: dict) -> pd.Series:
    """Weights after volatility targeting, the per-instrument cap and the gross-exposure cap (NaN = hold stays).

    Volatility targeting scales each instrument's weight by ``target_volatility / volatility_20`` (its
    trailing annualised volatility, known before the open), capped at ``max_leverage``; without a volatility
    estimate yet the weight is left unscaled.

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
