"""Cluster (regime) rule: each market regime's position is learned from its past forward returns.

In each training window, the mean next-session return of every regime and its t-statistic decide the
position taken in that regime: long when t > ``min_t_stat``, short when t < -``min_t_stat`` and shorts are
allowed, flat otherwise (and for regimes seen fewer than ``min_count`` times).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.config import NonNegativeInt
from engine.errors import ConfigError
from engine.strategy import Rule, labelled_rows


class ClusterRule(Rule):
    """Regime-to-position map learned from history (needs a ``regime`` column, from ``signals.regimes``).

    >>> ClusterRule(min_t_stat=1.0, min_count=20, allow_short=False).fit(history, label).target(window)
    """

    name = "cluster"
    learned = True

    # The annotations are the parameters' schema (engine.config checks strategy.* against them before a run).
    def __init__(self, min_t_stat: float, min_count: NonNegativeInt, allow_short: bool):
        self.min_t_stat = min_t_stat
        self.min_count = min_count
        self.allow_short = allow_short

    def fit(self, features: pd.DataFrame, label: pd.Series) -> "ClusterRule":
        if "regime" not in features:
            raise ConfigError("strategy=cluster needs regimes: set signals.regimes.enabled=true")
        known = labelled_rows(features, label)
        grouped = pd.DataFrame({"regime": features["regime"].to_numpy()[known],
                                "label": label.to_numpy(dtype="float64")[known]}).groupby("regime")["label"]
        table = pd.DataFrame({"mean_return": grouped.mean(), "std": grouped.std(ddof=1), "count": grouped.size()})
        table["t_stat"] = table["mean_return"] / (table["std"] / np.sqrt(table["count"]))
        table["t_stat"] = table["t_stat"].replace([np.inf, -np.inf], np.nan)
        position = np.where(table["t_stat"] > self.min_t_stat, 1.0, 0.0)
        if self.allow_short:
            position = np.where(table["t_stat"] < -self.min_t_stat, -1.0, position)
        table["position"] = np.where(table["count"] >= self.min_count, position, 0.0)
        self.regime_map_ = table.drop(columns="std").reset_index()
        return self

    def target(self, features: pd.DataFrame) -> pd.Series:
        positions = dict(zip(self.regime_map_["regime"], self.regime_map_["position"]))
        exposure = features["regime"].map(positions).fillna(0.0)
        return pd.Series(exposure.to_numpy(dtype="float64"), index=features.index, name="exposure")

    def prediction(self, features: pd.DataFrame) -> pd.Series:
        """The forecast the rule implies: each row's regime's mean forward return in training (0 if unseen)."""
        means = dict(zip(self.regime_map_["regime"], self.regime_map_["mean_return"]))
        forecast = features["regime"].map(means).fillna(0.0)
        return pd.Series(forecast.to_numpy(dtype="float64"), index=features.index, name="prediction")

    def inputs(self, features: pd.DataFrame) -> pd.DataFrame:
        """The ``regime`` (its training mean return and t-statistic are in the run's regime_map.csv)."""
        return features[["regime"]]

    def learned_summary(self) -> pd.DataFrame:
        return self.regime_map_[["regime", "mean_return", "t_stat", "count", "position"]]
