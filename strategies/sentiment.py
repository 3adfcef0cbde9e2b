"""Sentiment rule: long when the rolling mean news sentiment is above a threshold; flat (or short) otherwise.

News tone has a level of its own (world news reads negative), so the rule can compare the recent mean with
a trailing baseline: the mean over the ``baseline_sessions`` sessions before the rolling window.
"""
from __future__ import annotations

import pandas as pd

from engine.config import PositiveInt
from engine.strategy import Rule, threshold_exposure


class SentimentRule(Rule):
    """Exposure from the mean of ``sentiment`` over the last ``window_sessions`` sessions (including the current
    one, whose news all predates its open; sessions without news are skipped), minus the mean over the
    ``baseline_sessions`` sessions before them when ``baseline_sessions`` is set: 1 above ``threshold``,
    -1 below ``-threshold`` when ``allow_short``, else 0. No news in the window (or no baseline yet): flat.

    >>> SentimentRule(window_sessions=5, threshold=0.0, allow_short=False, baseline_sessions=250).target(features)
    """

    name = "sentiment"

    # The annotations are the parameters' schema (engine.config checks strategy.* against them before a run).
    def __init__(self, window_sessions: PositiveInt, threshold: float, allow_short: bool,
                 baseline_sessions: PositiveInt | None = None):
        self.window_sessions = window_sessions
        self.threshold = threshold
        self.allow_short = allow_short
        self.baseline_sessions = baseline_sessions

    def score(self, features: pd.DataFrame) -> pd.Series:
        """The rolling mean sentiment, less its trailing baseline when configured."""
        by_ticker = features["sentiment"].groupby(level="ticker", sort=False)
        recent = by_ticker.transform(lambda s: s.rolling(self.window_sessions, min_periods=1).mean())
        if self.baseline_sessions is None:
            return recent
        baseline = by_ticker.transform(
            lambda s: s.shift(self.window_sessions).rolling(self.baseline_sessions, min_periods=self.baseline_sessions // 2).mean()
        )
        return recent - baseline

    def target(self, features: pd.DataFrame) -> pd.Series:
        return threshold_exposure(self.score(features), self.threshold, self.allow_short)
