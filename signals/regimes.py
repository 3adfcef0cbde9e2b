"""Market regimes: k-means clusters of per-(ticker, session) features, learned on the past only.

Features are standardised with the training rows' mean and standard deviation; a missing value counts as the
training mean. Cluster labels are put in a canonical order (by the first feature), so "regime 0" means the
same kind of session from one run, or one window, to the next.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from engine.config import FeaturePatterns, PositiveInt, PositiveIntOrAuto
from engine.errors import ConfigError
from engine.features import resolve_feature_columns
from engine.signal import SignalProvider


def _matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The feature values as floats, with infinities as missing."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"signals.regimes.features: feature {missing[0]!r} is not a column of the frame to transform")
    values = np.empty((len(frame), len(columns)))
    for j, column in enumerate(columns):
        try:
            values[:, j] = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            raise ConfigError(f"signals.regimes.features: feature {column!r} is not numeric") from None
    values[~np.isfinite(values)] = np.nan
    return values


class RegimeModel(SignalProvider):
    """K-means regimes of sessions: ``fit(history)`` learns standardisation and clusters from past rows,
    ``transform(frame)`` labels every row 0..n_regimes-1, ordered by the clusters' mean of the first feature.
    A learned provider that needs the session ``features`` it clusters on (other providers' columns and price
    features), so the engine runs it after the providers of those columns, per walk-forward window.

    >>> RegimeModel(n_regimes=3, features=["topic_*", "volatility_20"], n_init=10, random_state=0)
    ...     .fit(history).transform(window)  # Series "regime"
    """

    name = "regimes"
    columns = ("regime",)
    learned = True

    # The annotations are the parameters' schema (engine.config checks signals.regimes.* against them).
    def __init__(self, n_regimes: PositiveInt, features: FeaturePatterns, n_init: PositiveIntOrAuto,
                 random_state: int):
        self.n_regimes = n_regimes
        self.features = features
        self.n_init = n_init
        self.random_state = random_state

    @property
    def needs(self) -> tuple[str, ...]:
        """The feature patterns it clusters on (``features``)."""
        return tuple(str(pattern) for pattern in self.features)

    def params(self) -> dict[str, Any]:
        """The configuration (everything that changes the labels for given data)."""
        return {"n_regimes": self.n_regimes, "features": list(self.features), "n_init": self.n_init,
                "random_state": self.random_state}

    def _standardise(self, values: np.ndarray) -> np.ndarray:
        standardised = (values - self.mean_) / self.scale_
        return np.where(np.isnan(standardised), 0.0, standardised)  # missing = the training mean

    def fit(self, history: pd.DataFrame) -> "RegimeModel":
        """Learn the features' training mean and std and the clusters from ``history``'s rows (past sessions'
        pre-open features; regimes never see a label or a diagnostic column)."""
        if isinstance(self.n_regimes, bool) or not isinstance(self.n_regimes, (int, np.integer)) or self.n_regimes < 1:
            raise ConfigError(f"signals.regimes.n_regimes: must be a positive integer, got {self.n_regimes!r}")
        if isinstance(self.random_state, bool) or not isinstance(self.random_state, (int, np.integer)):
            raise ConfigError(f"signals.regimes.random_state: must be an integer, got {self.random_state!r}")
        columns = resolve_feature_columns(self.features, history.columns, "signals.regimes.features")
        if len(history) < self.n_regimes:
            raise ConfigError(f"signals.regimes.n_regimes: {self.n_regimes} regimes need at least as many training "
                              f"rows, got {len(history)}")
        values = _matrix(history, columns)
        observed = ~np.isnan(values)
        counts = observed.sum(axis=0)
        mean = np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), 0.0)
        centred = np.where(observed, values - mean, 0.0)
        std = np.sqrt((centred ** 2).sum(axis=0) / np.maximum(counts, 1))  # population std, like StandardScaler
        self.columns_ = columns
        self.mean_ = mean
        self.scale_ = np.where(std > 0, std, 1.0)
        from sklearn.cluster import KMeans  # here, not at the top: a run whose regimes are cached never imports it

        try:
            kmeans = KMeans(n_clusters=int(self.n_regimes), n_init=self.n_init, random_state=int(self.random_state))
            # One thread: these fits are small, OpenMP threads on busy cores made them 200x slower, and a
            # fixed thread count keeps the sums (so the labels) identical on any machine and worker count.
            with threadpool_limits(limits=1):
                kmeans.fit(self._standardise(values))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"signals.regimes: k-means rejected the settings ({error})") from None
        self.kmeans_ = kmeans
        # Canonical labels: clusters sorted by centre (= standardised cluster mean) of the first feature,
        # ties by the next features; label_map_[kmeans label] = regime.
        centres = kmeans.cluster_centers_
        order = np.lexsort(centres.T[::-1])
        self.label_map_ = np.empty(len(order), dtype=np.int64)
        self.label_map_[order] = np.arange(len(order))
        self.centers_ = centres[order]
        return self

    def transform(self, features: pd.DataFrame) -> pd.Series:
        """The regime (float label, never NaN) of every row of ``features``, same index, named "regime"."""
        if not hasattr(self, "kmeans_"):
            raise RuntimeError("RegimeModel: call fit before transform")
        if len(features) == 0:
            return pd.Series([], index=features.index, dtype="float64", name="regime")
        with threadpool_limits(limits=1):
            labels = self.kmeans_.predict(self._standardise(_matrix(features, self.columns_)))
        return pd.Series(self.label_map_[labels].astype("float64"), index=features.index, name="regime")

    def regime_map(self) -> pd.DataFrame:
        """The regime map: each regime's centre in the features' own units, one row per regime."""
        if not hasattr(self, "kmeans_"):
            raise RuntimeError("RegimeModel: call fit before regime_map")
        centres = self.centers_ * self.scale_ + self.mean_
        return pd.DataFrame(centres, columns=self.columns_).rename_axis("regime")
