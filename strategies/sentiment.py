"""Sentiment rule: long when the rolling mean news sentiment is above a threshold; flat (or short) otherwise."""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.errors import ConfigError
from engine.strategy import Rule


class SentimentRule(Rule):
    """Exposure from the mean of ``sentiment`` over the last ``window_sessions`` sessions (including the current
    one, whose news all predates its open; sessions without news are skipped): 1 above ``threshold``,
    -1 below ``-threshold`` when ``allow_short``, else 0. No news in the window: flat.

    >>> SentimentRule(window_sessions=5, threshold=0.0, allow_short=False).target(features)
    """

    name = "sentiment"

    def __init__(self, window_sessions: int, threshold: float, allow_short: bool):
        self.window_sessions = window_sessions
        self.threshold = threshold
        self.allow_short = allow_short

    def target(self, features: pd.DataFrame) -> pd.Series:
        if not isinstance(self.window_sessions, int) or self.window_sessions < 1:
            raise ConfigError(f"strategy.window_sessions: must be a positive integer, got {self.window_sessions!r}")
        mean = (
            features["sentiment"]
            .groupby(level="ticker", sort=False)
            .transform(lambda s: s.rolling(self.window_sessions, min_periods=1).mean())
        )
        exposure = np.where(mean > self.threshold, 1.0, 0.0)
        if self.allow_short:
            exposure = np.where(mean < -self.threshold, -1.0, exposure)
        return pd.Series(exposure, index=features.index, name="exposure")
