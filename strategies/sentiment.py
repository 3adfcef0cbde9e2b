"""Sentiment rule: long when the rolling mean news sentiment is above a threshold; flat (or short) otherwise.

News tone has a level of its own (world news reads negative), so the rule can compare the recent mean with
a trailing baseline: the mean over the ``baseline_sessions`` sessions before the rolling window.
"""
from __future__ import annotations

import pandas as pd

from engine.config import PositiveInt
from engine.strategy import Rule, per_ticker, threshold_exposure


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

    def _recent_and_baseline(self, features: pd.DataFrame) -> tuple[pd.Series, pd.Series | None]:
        sentiment = features["sentiment"]
        recent = per_ticker(sentiment, lambda s: s.rolling(self.window_sessions, min_periods=1).mean())
        if self.baseline_sessions is None:
            return recent, None
        baseline = per_ticker(
            sentiment,
            lambda s: s.shift(self.window_sessions).rolling(self.baseline_sessions, min_periods=self.baseline_sessions // 2).mean()
        )
        return recent, baseline

    def score(self, features: pd.DataFrame) -> pd.Series:
        """The rolling mean sentiment, less its trailing baseline when configured."""
        recent, baseline = self._recent_and_baseline(features)
        return recent if baseline is None else recent - baseline

    def inputs(self, features: pd.DataFrame) -> pd.DataFrame:
        """The session's ``sentiment``, the window's mean (``sentiment_window_mean``), the baseline when set
        (``sentiment_baseline``) and the ``sentiment_score`` compared with the threshold."""
        recent, baseline = self._recent_and_baseline(features)
        read = pd.DataFrame({"sentiment": features["sentiment"], "sentiment_window_mean": recent})
        if baseline is not None:
            read["sentiment_baseline"] = baseline
        read["sentiment_score"] = recent if baseline is None else recent - baseline
        return read

    def news_window(self, features: pd.DataFrame) -> pd.DataFrame:
        """The news of the last ``window_sessions`` sessions of each ticker (fewer at its start), compared with
        the baseline when set."""
        sessions = pd.Series(features.index.get_level_values("session"), index=features.index)
        by_ticker = sessions.groupby(level="ticker", sort=False)
        since = by_ticker.shift(self.window_sessions - 1).fillna(by_ticker.transform("first"))
        _, baseline = self._recent_and_baseline(features)
        return pd.DataFrame({"since": since, "baseline": 0.0 if baseline is None else baseline}, index=features.index)

    def target(self, features: pd.DataFrame) -> pd.Series:
        return threshold_exposure(self.score(features), self.threshold, self.allow_short)
